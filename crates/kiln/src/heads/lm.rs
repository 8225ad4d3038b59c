//! The causal LM head (`GPT2LMHeadModel.lm_head`): a bias-free projection onto the vocabulary,
//! tied to the word embeddings unless the checkpoint says otherwise.

use crate::engine::linear::linear_forward;
use crate::engine::{Linear, LinearOut, Tensor};
use crate::error::Result;

/// The LM head's weights.
#[derive(Clone, Debug, Default)]
pub struct LmHead {
    /// `lm_head.weight` `[vocab, hidden]` when not tied.
    pub weight: Option<Tensor>,
}

impl LmHead {
    /// hidden: [n, hidden] -> logits [n, vocab]
    /// The word embeddings project when tied (through the int8 kernel for a quantized table).
    pub fn forward(&self, hidden: &[f32], n: usize, word_embeddings: &Linear) -> Result<Vec<f32>> {
        let mut logits = vec![0.0; n * word_embeddings.out_features()];
        match &self.weight {
            Some(w) => linear_forward(w, None, hidden, n, &mut logits, LinearOut::Write)?,
            None => word_embeddings.forward_into(hidden, n, &mut logits, LinearOut::Write)?,
        }
        Ok(logits)
    }
}
