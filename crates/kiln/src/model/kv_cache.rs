//! Key/value cache for incremental decoding: each layer's keys and values of the tokens seen so
//! far, so a new token costs one row of work per layer instead of re-running the prefix.

/// The cache of one sequence.
#[derive(Clone, Debug)]
pub struct KvCache {
    /// Per layer: keys `[len, hidden]` and values `[len, hidden]`, row-major.
    pub layers: Vec<(Vec<f32>, Vec<f32>)>,
    /// Tokens cached.
    pub len: usize,
    hidden: usize,
}

impl KvCache {
    /// An empty cache for a model with `num_layers` blocks of width `hidden`.
    pub fn new(num_layers: usize, hidden: usize) -> Self {
        KvCache {
            layers: vec![(Vec::new(), Vec::new()); num_layers],
            len: 0,
            hidden,
        }
    }

    /// Width of the cached rows.
    pub fn hidden(&self) -> usize {
        self.hidden
    }

    /// Drops everything after the first `len` tokens.
    pub fn truncate(&mut self, len: usize) {
        let h = self.hidden;
        for (k, v) in &mut self.layers {
            k.truncate(len * h);
            v.truncate(len * h);
        }
        self.len = self.len.min(len);
    }
}
