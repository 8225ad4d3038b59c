//! The transformer core shared by every architecture.

use super::arch::Arch;
use super::batch::Batch;
use super::block::{Block, Workspace};
use super::config::ModelConfig;
use super::embeddings::Embeddings;
use super::kv_cache::KvCache;
use super::lstm::Lstm;
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
    /// The LSTM stacks that run in place of the blocks (`kiln_lstm`; `blocks` is then empty).
    pub lstm: Option<Lstm>,
}

impl Transformer {
    /// The mask the architecture was trained with: bidirectional for an encoder, causal for a
    /// decoder.
    pub fn default_mask(&self) -> MaskKind {
        match (&self.config.lstm, self.config.arch) {
            (Some(l), _) if !l.bidirectional => MaskKind::Causal,
            (_, Arch::Gpt2) => MaskKind::Causal,
            _ => MaskKind::Bidirectional,
        }
    }

    /// The mask a language model generates with: the default, except that a bidirectional
    /// LSTM generates with its forward stack alone (its forward LM).
    pub fn decoding_mask(&self) -> MaskKind {
        match &self.lstm {
            Some(_) => MaskKind::Causal,
            None => self.default_mask(),
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
        caches: Option<&mut [KvCache]>,
    ) -> Result<Tensor> {
        if let Some(lstm) = &self.lstm {
            return self.forward_lstm(lstm, batch, mask, caches);
        }
        self.forward_blocks(batch, mask, caches, None)
    }

    /// Every layer's states, `layers + 1` tensors of `[tokens, width]`: the embeddings (an
    /// LSTM's repeated per direction) and each layer's output, the last after the final norm
    /// (as transformers' `hidden_states`). What contextual vectors choose or average from.
    pub fn hidden_states(&self, batch: &Batch, mask: MaskKind) -> Result<Vec<Tensor>> {
        let t = batch.tokens();
        let states = match &self.lstm {
            Some(lstm) => lstm.layer_outputs(&self.lstm_input(batch)?, batch, mask, None)?,
            None => {
                let mut states = Vec::new();
                let last = self.forward_blocks(batch, mask, None, Some(&mut states))?;
                states.push(last.into_data());
                states
            }
        };
        states
            .into_iter()
            .map(|s| {
                let w = s.len() / t.max(1);
                Tensor::new(vec![t, w], s)
            })
            .collect()
    }

    /// The attention blocks' forward; `states` collects the input of every layer.
    fn forward_blocks(
        &self,
        batch: &Batch,
        mask: MaskKind,
        mut caches: Option<&mut [KvCache]>,
        mut states: Option<&mut Vec<Vec<f32>>>,
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
            if let Some(s) = states.as_deref_mut() {
                s.push(x.clone());
            }
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

    /// An LSTM's input: the word embeddings alone (no positions or segments), `[T, P]`.
    fn lstm_input(&self, batch: &Batch) -> Result<Vec<f32>> {
        let mut x = vec![0.0f32; batch.tokens() * self.embeddings.width()];
        self.embeddings.forward(&batch.ids, &[], &[], &mut x)?;
        Ok(x)
    }

    /// The LSTM backbone's forward: its embeddings, then its stacks (states carried in
    /// `caches` when given: the forward stack's `h, c` per layer).
    fn forward_lstm(
        &self,
        lstm: &Lstm,
        batch: &Batch,
        mask: MaskKind,
        caches: Option<&mut [KvCache]>,
    ) -> Result<Tensor> {
        let t = batch.tokens();
        let x = self.lstm_input(batch)?;
        let width = lstm.shape.output_width(mask);
        let out = match caches {
            None => lstm.forward(&x, batch, mask, None)?,
            Some(c) => {
                let per = lstm.state_width();
                if c.len() != batch.seq_lens.len() || c.iter().any(|c| c.state.len() != per) {
                    return Err(Error::shape(
                        "Transformer::forward",
                        "one LSTM state per sequence, made for this model",
                    ));
                }
                let mut states: Vec<f32> = c.iter().flat_map(|c| c.state.iter().copied()).collect();
                let out = lstm.forward(&x, batch, mask, Some(&mut states))?;
                for ((cache, st), &len) in c.iter_mut().zip(states.chunks(per)).zip(&batch.seq_lens)
                {
                    cache.state.copy_from_slice(st);
                    cache.len += len;
                }
                out
            }
        };
        Tensor::new(vec![t, width], out)
    }

    /// A fresh KV cache for this model (an LSTM's: its zero state).
    pub fn new_cache(&self) -> KvCache {
        match &self.lstm {
            Some(l) => KvCache::recurrent(l.state_width()),
            None => KvCache::new(self.layers().map(Block::attention_width).collect()),
        }
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
        if let Some(l) = &self.lstm {
            n += l.shape.parameter_count() as usize;
        }
        n + self.final_norm.as_ref().map_or(0, ln)
    }
}
