//! Where parameter-efficient modules attach: the model's linear layers under their Hugging Face
//! module names (as PEFT's `target_modules` names them), and the two adapter positions of each
//! block.

use crate::checkpoint::Pretrained;
use crate::engine::Linear;
use crate::model::arch::QkvNames;

/// A linear layer of the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// The fused query/key/value projection of a block.
    Qkv,
    /// The attention output projection of a block.
    AttnOut,
    /// The feed-forward up projection of a block.
    FfnIn,
    /// The feed-forward down projection of a block.
    FfnOut,
    /// BERT's pooler dense layer.
    Pooler,
}

/// A module LoRA can adapt: a band of output rows of one of Kiln's linear layers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    /// Full module name, as in the transformers model (`bert.encoder.layer.0.attention.self.query`).
    pub module: String,
    /// Block index (0 for the pooler).
    pub layer: usize,
    /// Which linear layer.
    pub slot: Slot,
    /// First output row of the band.
    pub offset: usize,
    /// Rows in the band.
    pub len: usize,
}

/// The prefix of the base model's module names: `bert.` / `transformer.` inside a model with a
/// head (what transformers' task classes and PEFT name), nothing for a bare base model.
pub fn module_prefix(p: &Pretrained) -> &'static str {
    let names = p.config().arch.names();
    if p.has_head() {
        names.base_prefix
    } else {
        ""
    }
}

/// Every linear module of the base model, in block order.
pub fn lora_sites(p: &Pretrained) -> Vec<Site> {
    let cfg = p.config();
    let n = cfg.arch.names();
    let prefix = module_prefix(p);
    let h = cfg.hidden_size;
    let mut out = Vec::new();
    for l in 0..p.model.blocks.len() {
        // A pruned block's query/key/value and feed-forward layers are narrower. (From the
        // config, not the weights: gradient buffers hold empty tensors for frozen weights.)
        let (w, inter) = (cfg.attention_width_at(l), cfg.intermediate_at(l));
        let at = format!("{prefix}{}", n.block(l, cfg));
        let site = |name: &str, slot, offset, len| Site {
            module: format!("{at}{name}"),
            layer: l,
            slot,
            offset,
            len,
        };
        match n.qkv {
            QkvNames::Separate(parts) => {
                for (k, part) in parts.iter().enumerate() {
                    out.push(site(part, Slot::Qkv, k * w, w));
                }
            }
            QkvNames::Fused(name) => out.push(site(name, Slot::Qkv, 0, 3 * w)),
        }
        out.push(site(n.attn_out, Slot::AttnOut, 0, h));
        out.push(site(n.ffn_in, Slot::FfnIn, 0, inter));
        out.push(site(n.ffn_out, Slot::FfnOut, 0, h));
    }
    if let (Some(_), Some(name)) = (&p.pooler, n.pooler) {
        out.push(Site {
            module: name.path(prefix),
            layer: 0,
            slot: Slot::Pooler,
            offset: 0,
            len: h,
        });
    }
    out
}

/// The linear layer of a site.
pub fn linear<'a>(p: &'a Pretrained, s: &Site) -> Option<&'a Linear> {
    match s.slot {
        Slot::Pooler => p.pooler.as_ref().map(|pl| &pl.dense),
        slot => p.model.blocks.get(s.layer).map(|b| match slot {
            Slot::Qkv => &b.qkv,
            Slot::AttnOut => &b.attn_out,
            Slot::FfnIn => &b.ffn_in,
            _ => &b.ffn_out,
        }),
    }
}

/// The linear layer of a site, mutable.
pub fn linear_mut<'a>(p: &'a mut Pretrained, s: &Site) -> Option<&'a mut Linear> {
    match s.slot {
        Slot::Pooler => p.pooler.as_mut().map(|pl| &mut pl.dense),
        slot => p.model.blocks.get_mut(s.layer).map(|b| match slot {
            Slot::Qkv => &mut b.qkv,
            Slot::AttnOut => &mut b.attn_out,
            Slot::FfnIn => &mut b.ffn_in,
            _ => &mut b.ffn_out,
        }),
    }
}

/// PEFT's `target_modules` rule: a target selects a module whose full name equals it or ends
/// with `.target`; `all-linear` selects every linear module of the base model.
pub fn matches(target: &str, module: &str) -> bool {
    target == "all-linear"
        || module == target
        || module
            .strip_suffix(target)
            .is_some_and(|rest| rest.ends_with('.'))
}

/// PEFT's default targets per architecture (`query,value` for BERT, `c_attn` for GPT-2).
pub fn default_targets(p: &Pretrained) -> Vec<String> {
    match p.config().arch.names().qkv {
        QkvNames::Separate([q, _, v]) => [q, v]
            .iter()
            .map(|s| s.rsplit('.').next().unwrap_or(s).to_string())
            .collect(),
        QkvNames::Fused(name) => vec![name.rsplit('.').next().unwrap_or(name).to_string()],
    }
}

/// The module name of a block's adapter after the attention output (`after_ffn` false) or the
/// feed-forward output: `<parent of the output projection>.adapter`, e.g.
/// `bert.encoder.layer.0.attention.output.adapter`, `transformer.h.0.mlp.adapter`.
pub fn adapter_module(p: &Pretrained, layer: usize, after_ffn: bool) -> String {
    let n = p.config().arch.names();
    let proj = if after_ffn { n.ffn_out } else { n.attn_out };
    let parent = proj.rsplit_once('.').map_or("", |(a, _)| a);
    let parent = if parent.is_empty() {
        String::new()
    } else {
        format!("{parent}.")
    };
    format!(
        "{}{}{parent}adapter",
        module_prefix(p),
        n.block(layer, p.config())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_matching_follows_peft() {
        assert!(matches(
            "query",
            "bert.encoder.layer.0.attention.self.query"
        ));
        assert!(matches("dense", "bert.pooler.dense"));
        assert!(matches(
            "attention.output.dense",
            "bert.encoder.layer.3.attention.output.dense"
        ));
        assert!(!matches(
            "dense",
            "bert.encoder.layer.0.attention.self.query"
        ));
        assert!(!matches("ense", "bert.pooler.dense"));
        assert!(matches("c_proj", "transformer.h.0.mlp.c_proj"));
        assert!(matches("all-linear", "transformer.h.0.mlp.c_fc"));
    }
}
