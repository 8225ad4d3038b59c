//! One transformer block: attention sublayer and feed-forward sublayer, each with a residual
//! connection and a layer norm placed before (GPT-2) or after (BERT) it.

use super::batch::Batch;
use super::config::{ModelConfig, NormPlacement};
use super::kv_cache::KvCache;
use crate::engine::attention::{attention, packed_self_attention, AttnSeq};
use crate::engine::{LayerNorm, Linear, LinearOut, MaskKind};
use crate::error::{Error, Result};
use crate::peft::bottleneck::Bottleneck;

/// The weights of one block, in Kiln's layout (`[out, in]` linears, fused QKV).
#[derive(Clone, Debug)]
pub struct Block {
    /// Query, key and value projections stacked: `[3 · hidden, hidden]`.
    pub qkv: Linear,
    /// Attention output projection `[hidden, hidden]`.
    pub attn_out: Linear,
    /// Norm of the attention sublayer.
    pub ln_attn: LayerNorm,
    /// Feed-forward up projection `[intermediate, hidden]`.
    pub ffn_in: Linear,
    /// Feed-forward down projection `[hidden, intermediate]`.
    pub ffn_out: Linear,
    /// Norm of the feed-forward sublayer.
    pub ln_ffn: LayerNorm,
    /// Bottleneck adapter on the attention output (Houlsby placement), if any.
    pub adapter_attn: Option<Bottleneck>,
    /// Bottleneck adapter on the feed-forward output, if any.
    pub adapter_ffn: Option<Bottleneck>,
}

/// Scratch buffers reused by every block of a forward pass.
#[derive(Default)]
pub struct Workspace {
    qkv: Vec<f32>,
    ctx: Vec<f32>,
    normed: Vec<f32>,
    ffn: Vec<f32>,
    /// A sublayer's output before its residual sum (only with adapters).
    sub: Vec<f32>,
}

impl Workspace {
    fn size(&mut self, tokens: usize, hidden: usize, block: &Block) {
        let w = block.attention_width();
        self.qkv.resize(tokens * 3 * w, 0.0);
        self.ctx.resize(tokens * w, 0.0);
        self.normed.resize(tokens * hidden, 0.0);
        self.ffn.resize(tokens * block.ffn_in.out_features(), 0.0);
    }
}

impl Block {
    /// Width of the attention: heads × head width (the hidden size unless heads were pruned),
    /// read from the weights so a pruned block needs no other record.
    pub fn attention_width(&self) -> usize {
        self.attn_out.in_features()
    }

    /// Attention heads of this block.
    pub fn heads(&self, cfg: &ModelConfig) -> usize {
        self.attention_width() / cfg.head_dim()
    }

    /// x: [tokens, hidden] -> x: [tokens, hidden], updated in place.
    ///
    /// With `cache`, each sequence's new keys and values are appended to layer `layer` of its
    /// cache and queries attend over everything cached.
    pub fn forward(
        &self,
        cfg: &ModelConfig,
        x: &mut [f32],
        batch: &Batch,
        mask: MaskKind,
        cache: Option<(&mut [KvCache], usize)>,
        ws: &mut Workspace,
    ) -> Result<()> {
        let t = batch.tokens();
        let h = self.attention_width();
        ws.size(t, cfg.hidden_size, self);
        let pre = cfg.norm == NormPlacement::Pre;

        // Attention sublayer.
        let attn_in: &[f32] = if pre {
            self.ln_attn.forward(x, &mut ws.normed);
            &ws.normed
        } else {
            x
        };
        self.qkv
            .forward_into(attn_in, t, &mut ws.qkv, LinearOut::Write)?;
        let offsets = batch.offsets();
        let qkv = &ws.qkv;
        match cache {
            Some((caches, layer)) => {
                if caches.len() != batch.seq_lens.len() {
                    return Err(Error::shape("Block::forward", "one KV cache per sequence"));
                }
                for (s, c) in caches.iter_mut().enumerate() {
                    let (k, v) = &mut c.layers[layer];
                    for r in offsets[s]..offsets[s] + batch.seq_lens[s] {
                        k.extend_from_slice(&qkv[r * 3 * h + h..r * 3 * h + 2 * h]);
                        v.extend_from_slice(&qkv[r * 3 * h + 2 * h..r * 3 * h + 3 * h]);
                    }
                }
                let seqs: Vec<AttnSeq> = caches
                    .iter()
                    .enumerate()
                    .map(|(s, c)| {
                        let (k, v) = &c.layers[layer];
                        AttnSeq {
                            q: &qkv[offsets[s] * 3 * h..],
                            q_rs: 3 * h,
                            lq: batch.seq_lens[s],
                            k,
                            k_rs: h,
                            v,
                            v_rs: h,
                            lk: k.len() / h,
                            q_pos0: c.len,
                            key_mask: None,
                            out_row0: offsets[s],
                            prefix: batch.prefix_lens.as_ref().and_then(|p| p.get(s).copied()),
                        }
                    })
                    .collect();
                attention(&seqs, self.heads(cfg), cfg.head_dim(), mask, &mut ws.ctx)?;
            }
            None => {
                let seqs = packed_self_attention(
                    qkv,
                    h,
                    &batch.seq_lens,
                    batch.key_mask.as_deref(),
                    batch.prefix_lens.as_deref(),
                );
                attention(&seqs, self.heads(cfg), cfg.head_dim(), mask, &mut ws.ctx)?;
            }
        }
        sublayer_out(
            &self.attn_out,
            self.adapter_attn.as_ref(),
            &ws.ctx,
            t,
            x,
            &mut ws.sub,
        )?;
        if !pre {
            self.ln_attn.forward_inplace(x);
        }

        // Feed-forward sublayer.
        let ffn_in: &[f32] = if pre {
            self.ln_ffn.forward(x, &mut ws.normed);
            &ws.normed
        } else {
            x
        };
        self.ffn_in
            .forward_into(ffn_in, t, &mut ws.ffn, LinearOut::WriteAct(cfg.activation))?;
        sublayer_out(
            &self.ffn_out,
            self.adapter_ffn.as_ref(),
            &ws.ffn,
            t,
            x,
            &mut ws.sub,
        )?;
        if !pre {
            self.ln_ffn.forward_inplace(x);
        }
        Ok(())
    }
}

/// `x += adapter(proj(input))`. The projection is written out and then added (rather than
/// accumulated into `x` by the GEMM) so that the sum is rounded the same with and without an
/// adapter — a fresh adapter leaves the outputs bit-identical — and as in the training forward.
/// The extra pass over `x` is small beside the GEMM.
fn sublayer_out(
    proj: &crate::engine::Linear,
    adapter: Option<&Bottleneck>,
    input: &[f32],
    t: usize,
    x: &mut [f32],
    sub: &mut Vec<f32>,
) -> Result<()> {
    sub.resize(x.len(), 0.0);
    proj.forward_into(input, t, sub, LinearOut::Write)?;
    if let Some(a) = adapter {
        a.forward_inplace(sub, t)?;
    }
    crate::engine::activation::add_inplace(x, sub);
    Ok(())
}
