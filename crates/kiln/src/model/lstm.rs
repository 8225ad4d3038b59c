//! The LSTM backbone (ELMo-style): layers of LSTMs, each direction with its own stack, every
//! layer's hidden states projected back to the embedding width, residual connections between
//! layers. It sits in the [`Transformer`](super::Transformer) core in place of the attention
//! blocks, under the same embeddings and heads: the attention mask is the switch here too
//! (bidirectional runs both stacks, causal only the forward one).
//!
//! Layout and names: `docs/lstm.md`.

use super::batch::Batch;
use crate::engine::lstm::{lstm_forward, LstmCell, Steps};
use crate::engine::{Linear, LinearOut, MaskKind};
use crate::error::{Error, Result};

/// An LSTM backbone's sizes and switches (`config.json` of `model_type: "kiln_lstm"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LstmShape {
    /// Layers.
    pub layers: usize,
    /// LSTM hidden (cell) width H.
    pub hidden: usize,
    /// Embedding width P: each layer's input and projected output.
    pub proj: usize,
    /// A backward stack beside the forward one.
    pub bidirectional: bool,
    /// Layers after the first add their input to their output.
    pub residual: bool,
}

impl LstmShape {
    /// Directions run under `mask`: both for a bidirectional model read bidirectionally, else
    /// only the forward stack (a causal read never sees the future).
    pub fn directions(&self, mask: MaskKind) -> usize {
        if self.bidirectional && mask == MaskKind::Bidirectional {
            2
        } else {
            1
        }
    }

    /// Width of the states the model outputs under `mask`.
    pub fn output_width(&self, mask: MaskKind) -> usize {
        self.directions(mask) * self.proj
    }

    /// Parameters of the stacks (without the embeddings).
    pub fn parameter_count(&self) -> u128 {
        let (h, p) = (self.hidden as u128, self.proj as u128);
        let per_direction = 4 * h * (p + h) + 8 * h + p * h + p;
        per_direction * self.layers as u128 * if self.bidirectional { 2 } else { 1 }
    }
}

/// One direction of one layer: the LSTM and the projection of its hidden states.
#[derive(Clone, Debug)]
pub struct LstmDirection {
    /// `nn.LSTM` weights.
    pub cell: LstmCell,
    /// `nn.Linear(H, P)`.
    pub proj: Linear,
}

/// One layer: its forward direction and, in a bidirectional model, its backward one.
#[derive(Clone, Debug)]
pub struct LstmLayer {
    /// Left to right.
    pub forward: LstmDirection,
    /// Right to left.
    pub backward: Option<LstmDirection>,
}

impl LstmLayer {
    /// Direction `d` (0 forward, 1 backward).
    pub fn direction(&self, d: usize) -> Result<&LstmDirection> {
        match d {
            0 => Ok(&self.forward),
            _ => self.backward.as_ref().ok_or_else(|| {
                Error::shape("LstmLayer", "a one-directional layer has no backward LSTM")
            }),
        }
    }
}

/// The stacks.
#[derive(Clone, Debug)]
pub struct Lstm {
    /// Sizes.
    pub shape: LstmShape,
    /// First to last.
    pub layers: Vec<LstmLayer>,
}

impl Lstm {
    /// Values of one sequence's carried state: every layer's forward `h` and `c`.
    pub fn state_width(&self) -> usize {
        self.shape.layers * 2 * self.shape.hidden
    }

    /// Runs direction `d`'s stack over the embeddings `x0: [T, P]`; returns each layer's output
    /// (`[T, P]` each, first to last). `states` (one `[layers · 2H]` per sequence: every
    /// layer's `h, c`) carries the recurrence across calls (generation); `None` starts at zero.
    pub fn run_direction(
        &self,
        d: usize,
        x0: &[f32],
        steps: &Steps,
        mut states: Option<&mut [f32]>,
    ) -> Result<Vec<Vec<f32>>> {
        let s = &self.shape;
        let (t, h, p) = (steps.tokens, s.hidden, s.proj);
        let mut outs: Vec<Vec<f32>> = Vec::with_capacity(s.layers);
        let mut hid = vec![0.0f32; t * h];
        // Per layer, the `[sequences, 2H]` state the kernel reads and writes.
        let b = steps.sequences();
        let mut layer_state = vec![0.0f32; if states.is_some() { b * 2 * h } else { 0 }];
        for (l, layer) in self.layers.iter().enumerate() {
            let dir = layer.direction(d)?;
            let input = if l == 0 { x0 } else { &outs[l - 1] };
            if let Some(st) = states.as_deref() {
                for i in 0..b {
                    let from = &st[(i * s.layers + l) * 2 * h..(i * s.layers + l + 1) * 2 * h];
                    layer_state[i * 2 * h..(i + 1) * 2 * h].copy_from_slice(from);
                }
            }
            lstm_forward(
                &dir.cell,
                input,
                steps,
                d == 1,
                &mut hid,
                states.is_some().then_some(&mut layer_state[..]),
                None,
            )?;
            if let Some(st) = states.as_deref_mut() {
                for i in 0..b {
                    st[(i * s.layers + l) * 2 * h..(i * s.layers + l + 1) * 2 * h]
                        .copy_from_slice(&layer_state[i * 2 * h..(i + 1) * 2 * h]);
                }
            }
            let mut y = if s.residual && l > 0 {
                input.to_vec()
            } else {
                vec![0.0f32; t * p]
            };
            dir.proj
                .forward_into(&hid, t, &mut y, LinearOut::Accumulate)?;
            outs.push(y);
        }
        Ok(outs)
    }

    /// The top layer's states under `mask`, `[T, directions · P]` (forward then backward
    /// half). `states`: see [`Lstm::run_direction`] (forward direction only).
    pub fn forward(
        &self,
        x0: &[f32],
        batch: &Batch,
        mask: MaskKind,
        states: Option<&mut [f32]>,
    ) -> Result<Vec<f32>> {
        let mut per_dir = self.run_directions(x0, batch, mask, states)?;
        let p = self.shape.proj;
        Ok(match &mut per_dir[..] {
            [f] => f.pop().unwrap_or_default(),
            [f, b] => interleave(
                f.last().map_or(&[][..], |v| v),
                b.last().map_or(&[][..], |v| v),
                p,
            ),
            _ => Vec::new(),
        })
    }

    /// Every layer's states under `mask`, `[T, directions · P]` each, layer 0 being the
    /// embeddings themselves (repeated per direction, as ELMo's layer 0 is): `layers + 1`
    /// tensors, what contextual embeddings choose or average from.
    pub fn layer_outputs(
        &self,
        x0: &[f32],
        batch: &Batch,
        mask: MaskKind,
        states: Option<&mut [f32]>,
    ) -> Result<Vec<Vec<f32>>> {
        let per_dir = self.run_directions(x0, batch, mask, states)?;
        let p = self.shape.proj;
        Ok(match &per_dir[..] {
            [f] => std::iter::once(x0.to_vec())
                .chain(f.iter().cloned())
                .collect(),
            [f, b] => std::iter::once(interleave(x0, x0, p))
                .chain(f.iter().zip(b).map(|(f, b)| interleave(f, b, p)))
                .collect(),
            _ => Vec::new(),
        })
    }

    /// Each direction's layer outputs under `mask` (the two directions at once, each on half
    /// of the threads).
    fn run_directions(
        &self,
        x0: &[f32],
        batch: &Batch,
        mask: MaskKind,
        states: Option<&mut [f32]>,
    ) -> Result<Vec<Vec<Vec<f32>>>> {
        let steps = Steps::new(&batch.seq_lens);
        if self.shape.directions(mask) == 1 {
            return Ok(vec![self.run_direction(0, x0, &steps, states)?]);
        }
        if states.is_some() {
            return Err(Error::Input(
                "a bidirectional LSTM reads whole sequences; carried state (generation) runs its forward stack only".into(),
            ));
        }
        let (f, b) = crate::engine::par::join_halves(
            || self.run_direction(0, x0, &steps, None),
            || self.run_direction(1, x0, &steps, None),
        );
        Ok(vec![f?, b?])
    }
}

/// The two directions' `[T, P]` states side by side, `[T, 2P]`: forward, then backward.
pub fn interleave(f: &[f32], b: &[f32], p: usize) -> Vec<f32> {
    f.chunks(p)
        .zip(b.chunks(p))
        .flat_map(|(x, y)| x.iter().chain(y).copied())
        .collect()
}
