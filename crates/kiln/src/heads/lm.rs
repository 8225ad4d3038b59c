//! The causal LM head (`GPT2LMHeadModel.lm_head`): a bias-free projection onto the vocabulary,
//! tied to the word embeddings unless the checkpoint says otherwise.

use crate::engine::linear::linear_forward;
use crate::engine::{LinearOut, Tensor};
use crate::error::Result;

/// The LM head's weights.
#[derive(Clone, Debug, Default)]
pub struct LmHead {
    /// `lm_head.weight` `[vocab, hidden]` when not tied.
    pub weight: Option<Tensor>,
}

impl LmHead {
    /// hidden: [n, hidden] -> logits [n, vocab]
    pub fn forward(&self, hidden: &[f32], n: usize, word_embeddings: &Tensor) -> Result<Vec<f32>> {
        let w = self.weight.as_ref().unwrap_or(word_embeddings);
        let mut logits = vec![0.0; n * w.rows()];
        linear_forward(w, None, hidden, n, &mut logits, LinearOut::Write)?;
        Ok(logits)
    }
}
