//! The dense layer a sequence classifier reads the first token through: BERT's pooler
//! `tanh(W · h_[CLS] + b)` (`BertPooler`), RoBERTa's `classifier.dense` (also tanh),
//! DistilBERT's `pre_classifier` (ReLU), ELECTRA's `classifier.dense` (GELU).

use crate::engine::Linear;
use crate::error::Result;
pub use crate::model::arch::PoolerActivation;

/// The pooler dense layer and its activation.
#[derive(Clone, Debug)]
pub struct Pooler {
    /// `pooler.dense` (or the architecture's module), `[hidden, hidden]`.
    pub dense: Linear,
    /// tanh, ReLU or GELU.
    pub activation: PoolerActivation,
}

impl Pooler {
    /// cls: [n, hidden] -> [n, hidden]
    pub fn forward(&self, cls: &[f32], n: usize) -> Result<Vec<f32>> {
        let mut out = self.dense.forward(cls, n)?;
        self.activate(&mut out);
        Ok(out)
    }

    /// Applies the activation in place.
    pub fn activate(&self, x: &mut [f32]) {
        match self.activation {
            PoolerActivation::Tanh => x.iter_mut().for_each(|v| *v = v.tanh()),
            PoolerActivation::Relu => x.iter_mut().for_each(|v| *v = v.max(0.0)),
            PoolerActivation::Gelu => {
                crate::engine::activation::act_slice(x, crate::engine::Activation::GeluErf)
            }
        }
    }

    /// Multiplies `grad` (of the outputs) by the activation's derivative at the inputs `pre`.
    pub fn activation_backward(&self, pre: &[f32], grad: &mut [f32]) {
        match self.activation {
            PoolerActivation::Tanh => grad.iter_mut().zip(pre).for_each(|(g, &x)| {
                let y = x.tanh();
                *g *= 1.0 - y * y
            }),
            PoolerActivation::Relu => grad.iter_mut().zip(pre).for_each(|(g, &x)| {
                if x <= 0.0 {
                    *g = 0.0
                }
            }),
            PoolerActivation::Gelu => crate::engine::grad::activation_backward(
                crate::engine::Activation::GeluErf,
                pre,
                grad,
            ),
        }
    }
}
