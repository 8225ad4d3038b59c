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
    /// `[max_positions, hidden]`; no rows for a model without positions (an LSTM).
    pub position: Tensor,
    /// `[type_vocab, hidden]`, if the model has segments.
    pub token_type: Option<Tensor>,
    /// Norm of the summed embeddings (BERT).
    pub norm: Option<LayerNorm>,
    /// Projection from the tables' width to the hidden width (ELECTRA), `[hidden, embedding]`.
    pub project: Option<Linear>,
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
        let Some(p) = &self.project else {
            return self.tables(ids, positions, types, out);
        };
        let mut e = vec![0.0; ids.len() * self.width()];
        self.tables(ids, positions, types, &mut e)?;
        p.forward_into(&e, ids.len(), out, crate::engine::LinearOut::Write)
    }

    /// The position table, if the model has one.
    pub fn positions(&self) -> Option<&Tensor> {
        Some(&self.position).filter(|p| p.numel() > 0)
    }

    /// The width of the tables (`embedding_size`).
    pub fn width(&self) -> usize {
        self.word.in_features()
    }

    /// The normalized sum of the tables' rows, `[tokens, embedding_size]`.
    fn tables(&self, ids: &[u32], positions: &[u32], types: &[u32], out: &mut [f32]) -> Result<()> {
        gather_sum(
            &self.word,
            self.positions(),
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
