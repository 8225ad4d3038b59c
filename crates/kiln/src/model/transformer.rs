//! The transformer core shared by every architecture.

use super::arch::Arch;
use super::batch::Batch;
use super::block::{Block, Workspace};
use super::config::ModelConfig;
use super::embeddings::Embeddings;
use super::kv_cache::KvCache;
use crate::engine::{LayerNorm, MaskKind, Tensor};
use crate::error::{Error, Result};

/// Embeddings, blocks and an optional final norm.
#[derive(Clone, Debug)]
pub struct Transformer {
    /// Sizes and switches.
    pub config: ModelConfig,
    /// Input embeddings.
    pub embeddings: Embeddings,
    /// The blocks, first to last.
    pub blocks: Vec<Block>,
    /// Norm after the last block (pre-LN models).
    pub final_norm: Option<LayerNorm>,
}

impl Transformer {
    /// The mask the architecture was trained with: bidirectional for an encoder, causal for a
    /// decoder.
    pub fn default_mask(&self) -> MaskKind {
        match self.config.arch {
            Arch::Gpt2 => MaskKind::Causal,
            _ => MaskKind::Bidirectional,
        }
    }

    /// Runs the model over a packed batch.
    ///
    /// batch: [tokens] -> [tokens, hidden] (the last hidden state; after the final norm when the
    /// model has one). With `caches` (one per sequence), keys and values are appended to them.
    pub fn forward(
        &self,
        batch: &Batch,
        mask: MaskKind,
        mut caches: Option<&mut [KvCache]>,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let h = cfg.hidden_size;
        let t = batch.tokens();
        if let Some(&p) = batch.positions.iter().max() {
            if p as usize >= cfg.max_positions {
                return Err(Error::Input(format!(
                    "sequence of {} tokens is longer than the model's {} positions (max_position_embeddings); truncate the input",
                    p + 1,
                    cfg.max_positions
                )));
            }
        }
        if let Some(c) = caches.as_deref() {
            if c.len() != batch.seq_lens.len() {
                return Err(Error::shape(
                    "Transformer::forward",
                    "one KV cache per sequence",
                ));
            }
            if let Some(s) = c.iter().position(|c| {
                !c.widths()
                    .iter()
                    .copied()
                    .eq(self.layers().map(Block::attention_width))
            }) {
                return Err(Error::shape(
                    "Transformer::forward",
                    format!("cache {s} was made for another model"),
                ));
            }
        }
        let mut x = vec![0.0f32; t * h];
        let type_rows = cfg.type_ids(&batch.type_ids);
        let types: &[u32] = if self.embeddings.token_type.is_some() {
            &type_rows
        } else {
            &[]
        };
        let positions = cfg.position_ids(&batch.positions);
        self.embeddings
            .forward(&batch.ids, &positions, types, &mut x)?;
        let mut ws = Workspace::default();
        for (l, block) in self.layers().enumerate() {
            let c = caches.as_deref_mut().map(|c| (c, l));
            block.forward(cfg, &mut x, batch, mask, c, &mut ws)?;
        }
        if let Some(c) = caches {
            for (cache, &len) in c.iter_mut().zip(&batch.seq_lens) {
                cache.len += len;
            }
        }
        if let Some(n) = &self.final_norm {
            n.forward_inplace(&mut x);
        }
        Tensor::new(vec![t, h], x)
    }

    /// A fresh KV cache for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers().map(Block::attention_width).collect())
    }

    /// The block layer `l` runs (its own, or the one it shares: ALBERT).
    pub fn layer(&self, l: usize) -> &Block {
        &self.blocks[self.config.block_of(l)]
    }

    /// The blocks in the order the layers run them (a shared block once per layer using it).
    pub fn layers(&self) -> impl Iterator<Item = &Block> + '_ {
        (0..self.config.num_layers).map(|l| self.layer(l))
    }

    /// Number of parameters (tied matrices counted once).
    pub fn num_parameters(&self) -> usize {
        let e = &self.embeddings;
        let ln = |n: &LayerNorm| n.weight.numel() + n.bias.numel();
        let lin = |l: &crate::engine::Linear| {
            l.in_features() * l.out_features() + l.bias.as_ref().map_or(0, |b| b.numel())
        };
        let mut n = e.word.in_features() * e.word.out_features()
            + e.position.numel()
            + e.token_type.as_ref().map_or(0, |t| t.numel());
        n += e.norm.as_ref().map_or(0, ln);
        for b in &self.blocks {
            n += lin(&b.qkv)
                + lin(&b.attn_out)
                + lin(&b.ffn_in)
                + lin(&b.ffn_out)
                + ln(&b.ln_attn)
                + ln(&b.ln_ffn);
        }
        n + self.final_norm.as_ref().map_or(0, ln)
    }
}
