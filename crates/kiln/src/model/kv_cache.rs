//! Key/value cache for incremental decoding: each layer's keys and values of the tokens seen so
//! far, so a new token costs one row of work per layer instead of re-running the prefix.

/// The cache of one sequence.
#[derive(Clone, Debug)]
pub struct KvCache {
    /// Per layer: keys `[len, width]` and values `[len, width]`, row-major.
    pub layers: Vec<(Vec<f32>, Vec<f32>)>,
    /// Tokens cached.
    pub len: usize,
    /// Per layer: the width of its rows (its heads × head width; narrower in pruned layers).
    widths: Vec<usize>,
    /// A recurrent model's state after the tokens seen (an LSTM's `h, c` per layer): what it
    /// carries instead of keys and values. Empty for a transformer.
    pub state: Vec<f32>,
}

impl KvCache {
    /// An empty cache for a model whose blocks have attention widths `widths`.
    pub fn new(widths: Vec<usize>) -> Self {
        KvCache {
            layers: vec![(Vec::new(), Vec::new()); widths.len()],
            len: 0,
            widths,
            state: Vec::new(),
        }
    }

    /// The zero state of a recurrent model whose state has `width` values.
    pub fn recurrent(width: usize) -> Self {
        KvCache {
            layers: Vec::new(),
            len: 0,
            widths: Vec::new(),
            state: vec![0.0; width],
        }
    }

    /// Width of the cached rows of each layer.
    pub fn widths(&self) -> &[usize] {
        &self.widths
    }

    /// Drops everything after the first `len` tokens.
    pub fn truncate(&mut self, len: usize) {
        for ((k, v), &w) in self.layers.iter_mut().zip(&self.widths) {
            k.truncate(len * w);
            v.truncate(len * w);
        }
        self.len = self.len.min(len);
    }
}
