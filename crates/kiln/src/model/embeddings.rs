//! The input embeddings: word + learned absolute position (+ segment), optionally normalized.

use crate::engine::embedding::gather_sum;
use crate::engine::{LayerNorm, Linear, Tensor};
use crate::error::Result;

/// Embedding tables of one model.
#[derive(Clone, Debug)]
pub struct Embeddings {
    /// `[vocab, hidden]` as a bias-free linear layer (f32, or int8 with a scale per row): a
    /// gathered row is a token's vector, and the layer itself is the output projection when
    /// embeddings are tied.
    pub word: Linear,
    /// `[max_positions, hidden]`.
    pub position: Tensor,
    /// `[type_vocab, hidden]`, if the model has segments.
    pub token_type: Option<Tensor>,
    /// Norm of the summed embeddings (BERT).
    pub norm: Option<LayerNorm>,
}

impl Embeddings {
    /// ids, positions, types: [tokens] -> out: [tokens, hidden]
    pub fn forward(
        &self,
        ids: &[u32],
        positions: &[u32],
        types: &[u32],
        out: &mut [f32],
    ) -> Result<()> {
        gather_sum(
            &self.word,
            Some(&self.position),
            self.token_type.as_ref(),
            ids,
            positions,
            types,
            out,
        )?;
        if let Some(n) = &self.norm {
            n.forward_inplace(out);
        }
        Ok(())
    }
}
