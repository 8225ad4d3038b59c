//! BERT's pooler: `tanh(W · h_[CLS] + b)` (`BertPooler`).

use crate::engine::Linear;
use crate::error::Result;

/// The pooler dense layer.
#[derive(Clone, Debug)]
pub struct Pooler {
    /// `pooler.dense`, `[hidden, hidden]`.
    pub dense: Linear,
}

impl Pooler {
    /// cls: [n, hidden] -> [n, hidden]
    pub fn forward(&self, cls: &[f32], n: usize) -> Result<Vec<f32>> {
        let mut out = self.dense.forward(cls, n)?;
        out.iter_mut().for_each(|v| *v = v.tanh());
        Ok(out)
    }
}
