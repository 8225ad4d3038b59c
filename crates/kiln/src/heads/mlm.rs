//! BERT's masked-LM head (`BertOnlyMLMHead`): transform (dense, activation, norm), then a
//! projection onto the vocabulary that is usually tied to the word embeddings.
//! Callers pass only the rows they need (the masked positions), so the vocabulary projection,
//! the largest matrix multiply of a step, is never computed for the others.

use crate::engine::activation::bias_act_inplace;
use crate::engine::linear::linear_forward;
use crate::engine::{Activation, LayerNorm, Linear, LinearOut, Tensor};
use crate::error::Result;

/// The MLM head's weights.
#[derive(Clone, Debug)]
pub struct MlmHead {
    /// `cls.predictions.transform.dense`.
    pub transform: Linear,
    /// The transform's activation (the config's `hidden_act`).
    pub activation: Activation,
    /// `cls.predictions.transform.LayerNorm`.
    pub norm: LayerNorm,
    /// `cls.predictions.decoder.weight` when not tied to the word embeddings.
    pub decoder: Option<Tensor>,
    /// `cls.predictions.bias`, `[vocab]`.
    pub bias: Tensor,
}

impl MlmHead {
    /// hidden: [n, hidden] -> logits [n, vocab]; `word_embeddings` is used when tied.
    pub fn forward(&self, hidden: &[f32], n: usize, word_embeddings: &Linear) -> Result<Vec<f32>> {
        let mut t = vec![0.0; n * self.transform.out_features()];
        self.transform
            .forward_into(hidden, n, &mut t, LinearOut::WriteAct(self.activation))?;
        self.norm.forward_inplace(&mut t);
        let mut logits = vec![0.0; n * self.bias.numel()];
        match &self.decoder {
            Some(d) => linear_forward(d, Some(&self.bias), &t, n, &mut logits, LinearOut::Write)?,
            None => {
                word_embeddings.forward_into(&t, n, &mut logits, LinearOut::Write)?;
                bias_act_inplace(&mut logits, Some(self.bias.data()), None);
            }
        }
        Ok(logits)
    }
}
