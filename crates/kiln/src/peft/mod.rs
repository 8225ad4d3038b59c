//! Parameter-efficient fine-tuning: LoRA bypasses beside linear layers and bottleneck adapters
//! inside the blocks. The base model stays frozen; only the additions, the task head and any
//! `train_extra` tensors are trained, saved (in PEFT's layout, see [`files`]) and loaded.
//!
//! The additions live on the layers they change ([`crate::engine::Linear::lora`],
//! [`crate::model::Block::adapter_attn`]), so inference and training run them without a
//! separate model class; [`PeftState`] on the [`Pretrained`] records how they were made.

pub mod bottleneck;
pub mod files;
pub mod lora;
pub mod targets;

use crate::checkpoint::Pretrained;
use crate::engine::dropout::mix;
use crate::engine::Activation;
use crate::error::{Error, Result};
use crate::heads::TaskHead;
use bottleneck::Bottleneck;
use lora::Lora;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use targets::{linear, linear_mut, lora_sites, matches};

/// How a model is fine-tuned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Every weight is trained.
    #[default]
    Full,
    /// LoRA bypasses on the target modules.
    Lora,
    /// Bottleneck adapters.
    Adapter,
}

/// Where bottleneck adapters go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// After the attention output and after the feed-forward output (Houlsby et al.).
    #[default]
    Houlsby,
    /// After the feed-forward output only (Pfeiffer et al.).
    Pfeiffer,
}

/// The parameter-efficient settings of `kiln finetune` (flags `--method`, `--lora-*`,
/// `--adapter-*`, `--train-extra`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PeftConfig {
    /// full, lora or adapter.
    pub method: Method,
    /// LoRA rank r.
    pub lora_r: usize,
    /// LoRA alpha: the bypass is scaled by alpha / r.
    pub lora_alpha: f32,
    /// Dropout on the LoRA input in training.
    pub lora_dropout: f32,
    /// Module names LoRA adapts (PEFT's `target_modules`); empty: the architecture's default
    /// (`query,value` for BERT, `c_attn` for GPT-2).
    pub lora_targets: Vec<String>,
    /// Bottleneck width of adapters.
    pub adapter_size: usize,
    /// houlsby or pfeiffer.
    pub adapter_placement: Placement,
    /// The adapters' nonlinearity (relu, gelu, gelu_new).
    pub adapter_activation: String,
    /// Base tensors trained too: `bias` (every bias), `layernorm` (every norm), `pooler`.
    pub train_extra: Vec<String>,
}

impl Default for PeftConfig {
    fn default() -> Self {
        // PEFT's LoraConfig defaults: r 8, alpha 8, no dropout.
        PeftConfig {
            method: Method::Full,
            lora_r: 8,
            lora_alpha: 8.0,
            lora_dropout: 0.0,
            lora_targets: Vec::new(),
            adapter_size: 64,
            adapter_placement: Placement::Houlsby,
            adapter_activation: "relu".into(),
            train_extra: Vec::new(),
        }
    }
}

/// The `train_extra` words Kiln knows.
pub const EXTRAS: [&str; 3] = ["bias", "layernorm", "pooler"];

impl PeftConfig {
    /// Checks values, naming the flag at fault.
    pub fn validate(&self) -> Result<()> {
        let bad = |flag: &str, msg: String| Err(Error::Input(format!("--{flag}: {msg}")));
        if self.method == Method::Lora {
            if self.lora_r == 0 {
                return bad("lora-r", "the rank must be at least 1".into());
            }
            if !(0.0..1.0).contains(&self.lora_dropout) {
                return bad("lora-dropout", "must be in [0, 1)".into());
            }
        }
        if self.method == Method::Adapter {
            if self.adapter_size == 0 {
                return bad("adapter-size", "must be at least 1".into());
            }
            if Activation::from_hf(&self.adapter_activation).is_none() {
                return bad(
                    "adapter-activation",
                    format!("\"{}\" (relu, gelu, gelu_new)", self.adapter_activation),
                );
            }
        }
        if let Some(e) = self
            .train_extra
            .iter()
            .find(|e| !EXTRAS.contains(&e.as_str()))
        {
            return bad(
                "train-extra",
                format!("\"{e}\" is not one of {}", EXTRAS.join(", ")),
            );
        }
        if self.method == Method::Full && !self.train_extra.is_empty() {
            return bad(
                "train-extra",
                "only with --method lora or adapter (full fine-tuning trains everything)".into(),
            );
        }
        Ok(())
    }
}

/// How the parameter-efficient parts of a model were made, and the other loaded adapters.
#[derive(Clone, Debug)]
pub struct PeftState {
    /// The settings (method, rank, targets, ...) of the active adapter.
    pub config: PeftConfig,
    /// LoRA scaling by alpha / √r (rsLoRA) instead of alpha / r.
    pub rslora: bool,
    /// The base model directory the adapter belongs to.
    pub base: PathBuf,
    /// The active adapter's name.
    pub name: String,
    /// Adapters loaded but not active, by name.
    pub stash: BTreeMap<String, Stashed>,
}

/// An inactive adapter: its parts, taken out of the model.
#[derive(Clone, Debug)]
pub struct Stashed {
    config: PeftConfig,
    rslora: bool,
    /// LoRA bypasses per linear layer (blocks' four layers, then the pooler).
    loras: Vec<Vec<Lora>>,
    /// (attention, feed-forward) adapters per block.
    adapters: Vec<(Option<Bottleneck>, Option<Bottleneck>)>,
    task: Option<TaskHead>,
}

/// Adds the additions `cfg` asks for to `p` (fresh: the model's outputs do not change) and
/// marks the rest frozen. Returns how many modules were added. `Method::Full` adds nothing.
pub fn apply(p: &mut Pretrained, cfg: &PeftConfig, seed: u64) -> Result<usize> {
    cfg.validate()?;
    if p.peft.is_some() {
        return Err(Error::Input(
            "the model already carries an adapter; merge it first (kiln merge)".into(),
        ));
    }
    if p.model.lstm.is_some() && cfg.method != Method::Full {
        return Err(Error::Input(
            "LoRA and adapters attach to the attention blocks' linear layers; fine-tune an LSTM (kiln_lstm) fully".into(),
        ));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(mix(seed ^ 0x10_5A_DA_97));
    let mut cfg = cfg.clone();
    let added = match cfg.method {
        Method::Full => return Ok(0),
        Method::Lora => {
            if cfg.lora_targets.is_empty() {
                cfg.lora_targets = targets::default_targets(p);
            }
            let sites = lora_sites(p);
            for t in &cfg.lora_targets {
                if !sites.iter().any(|s| matches(t, &s.module)) {
                    let example: Vec<&str> =
                        sites.iter().take(6).map(|s| s.module.as_str()).collect();
                    return Err(Error::Input(format!(
                        "--lora-targets: \"{t}\" matches no linear module of this model (modules are named like {})",
                        example.join(", ")
                    )));
                }
            }
            let mut n = 0;
            for s in sites
                .iter()
                .filter(|s| cfg.lora_targets.iter().any(|t| matches(t, &s.module)))
            {
                let Some(l) = linear_mut(p, s) else { continue };
                let piece = Lora::new(
                    l.in_features(),
                    s.len,
                    s.offset,
                    cfg.lora_r,
                    cfg.lora_alpha,
                    cfg.lora_dropout,
                    &mut rng,
                );
                l.lora.push(piece);
                n += 1;
            }
            n
        }
        Method::Adapter => {
            let act = Activation::from_hf(&cfg.adapter_activation).unwrap_or(Activation::Relu);
            let h = p.config().hidden_size;
            let mut n = 0;
            for b in &mut p.model.blocks {
                if cfg.adapter_placement == Placement::Houlsby {
                    b.adapter_attn = Some(Bottleneck::new(h, cfg.adapter_size, act, &mut rng));
                    n += 1;
                }
                b.adapter_ffn = Some(Bottleneck::new(h, cfg.adapter_size, act, &mut rng));
                n += 1;
            }
            n
        }
    };
    p.peft = Some(PeftState {
        config: cfg,
        rslora: false,
        base: p.dir.canonicalize().unwrap_or_else(|_| p.dir.clone()),
        name: "default".into(),
        stash: BTreeMap::new(),
    });
    Ok(added)
}

/// Whether the parameter called `name` (a [`crate::train::backprop::parameters`] name) is
/// trained: everything without PEFT; with it, the additions, the task head and the extras.
pub fn is_trainable(peft: Option<&PeftState>, name: &str) -> bool {
    let Some(st) = peft else { return true };
    if name.contains(".lora") || name.contains(".adapter_") || name.starts_with("task.") {
        return true;
    }
    st.config.train_extra.iter().any(|e| match e.as_str() {
        "bias" => name.ends_with(".bias"),
        "layernorm" => name.contains("norm") || name.contains(".ln_"),
        "pooler" => name.starts_with("pooler."),
        _ => false,
    })
}

/// (trainable parameters, all parameters), as PEFT's `print_trainable_parameters` counts.
pub fn parameter_counts(p: &mut Pretrained) -> (usize, usize) {
    let peft = p.peft.clone();
    let mut trainable = 0;
    let mut total = 0;
    for (name, t, _) in crate::train::backprop::parameters(p) {
        total += t.numel();
        if is_trainable(peft.as_ref(), &name) {
            trainable += t.numel();
        }
    }
    (trainable, total)
}

/// Folds every LoRA bypass into its layer's weight (`W += scale · B A`); the bypasses stay,
/// marked merged, so [`unmerge`] can take them out again.
pub fn merge(p: &mut Pretrained) -> Result<()> {
    fold(p, 1.0)
}

/// Takes merged LoRA bypasses back out of the weights (`W -= scale · B A`).
pub fn unmerge(p: &mut Pretrained) -> Result<()> {
    fold(p, -1.0)
}

fn fold(p: &mut Pretrained, sign: f32) -> Result<()> {
    crate::compress::refuse_training(p, "merging an adapter into it")?;
    let want_merged = sign < 0.0;
    for s in lora_sites(p) {
        let Some(l) = linear_mut(p, &s) else { continue };
        let cols = l.in_features();
        let mut changed = false;
        for k in 0..l.lora.len() {
            if l.lora[k].offset != s.offset || l.lora[k].merged != want_merged {
                continue;
            }
            let d = l.lora[k].delta()?;
            let w = l.weight.data_mut();
            for (wv, dv) in w[s.offset * cols..(s.offset + s.len) * cols]
                .iter_mut()
                .zip(&d)
            {
                *wv += sign * dv;
            }
            l.lora[k].merged = !want_merged;
            changed = true;
        }
        if changed {
            l.weights_changed();
        }
    }
    Ok(())
}

/// Merges LoRA into the weights and drops the PEFT parts, leaving a plain model (base + folded
/// LoRA + task head + trained extras) that saves as a transformers directory.
pub fn merge_and_unload(p: &mut Pretrained) -> Result<()> {
    if p.model
        .blocks
        .iter()
        .any(|b| b.adapter_attn.is_some() || b.adapter_ffn.is_some())
    {
        return Err(Error::Input(
            "bottleneck adapters add a nonlinear module and cannot be folded into the weights; serve them with --adapter".into(),
        ));
    }
    merge(p)?;
    for s in lora_sites(p) {
        if let Some(l) = linear_mut(p, &s) {
            l.lora.clear();
        }
    }
    p.peft = None;
    Ok(())
}

fn take_parts(p: &mut Pretrained, st: &PeftState) -> Stashed {
    let mut loras = Vec::new();
    for b in &mut p.model.blocks {
        for l in [&mut b.qkv, &mut b.attn_out, &mut b.ffn_in, &mut b.ffn_out] {
            loras.push(std::mem::take(&mut l.lora));
        }
    }
    if let Some(pl) = &mut p.pooler {
        loras.push(std::mem::take(&mut pl.dense.lora));
    }
    let adapters = p
        .model
        .blocks
        .iter_mut()
        .map(|b| (b.adapter_attn.take(), b.adapter_ffn.take()))
        .collect();
    Stashed {
        config: st.config.clone(),
        rslora: st.rslora,
        loras,
        adapters,
        task: p.task.take(),
    }
}

pub(crate) fn put_parts(p: &mut Pretrained, s: Stashed) {
    let mut loras = s.loras.into_iter();
    for b in &mut p.model.blocks {
        for l in [&mut b.qkv, &mut b.attn_out, &mut b.ffn_in, &mut b.ffn_out] {
            l.lora = loras.next().unwrap_or_default();
        }
    }
    if let Some(pl) = &mut p.pooler {
        pl.dense.lora = loras.next().unwrap_or_default();
    }
    for (b, (a, f)) in p.model.blocks.iter_mut().zip(s.adapters) {
        b.adapter_attn = a;
        b.adapter_ffn = f;
    }
    p.task = s.task;
}

/// Makes the loaded adapter `name` the active one (the others stay loaded).
pub fn use_adapter(p: &mut Pretrained, name: &str) -> Result<()> {
    let merged = lora_sites(p)
        .iter()
        .any(|s| linear(p, s).is_some_and(|l| l.lora.iter().any(|x| x.merged)));
    let Some(mut st) = p.peft.take() else {
        return Err(Error::Input(format!("--use {name}: no adapter is loaded")));
    };
    if st.name == name {
        p.peft = Some(st);
        return Ok(());
    }
    let Some(next) = st.stash.remove(name) else {
        let mut names: Vec<String> = st.stash.keys().cloned().collect();
        names.push(st.name.clone());
        names.sort();
        p.peft = Some(st);
        return Err(Error::Input(format!(
            "--use {name}: no adapter of that name (loaded: {})",
            names.join(", ")
        )));
    };
    if merged {
        st.stash.insert(name.to_string(), next);
        p.peft = Some(st);
        return Err(Error::Input(
            "the active adapter is merged into the weights; unmerge it before switching".into(),
        ));
    }
    let current = take_parts(p, &st);
    st.config = next.config.clone();
    st.rslora = next.rslora;
    let old = std::mem::replace(&mut st.name, name.to_string());
    st.stash.insert(old, current);
    put_parts(p, next);
    p.peft = Some(st);
    Ok(())
}

/// Takes the active adapter out of the model, leaving the base model bare (so another adapter
/// can be loaded beside it); returns its state and parts.
pub(crate) fn stash_active(p: &mut Pretrained) -> Option<(PeftState, Stashed)> {
    let st = p.peft.take()?;
    let parts = take_parts(p, &st);
    Some((st, parts))
}

/// Switches a model between its bare base and its loaded adapters, request by request (a
/// server's per-request `adapter`). Switching moves the adapters' parts; no weights are copied.
#[derive(Debug, Default)]
pub struct AdapterSwitch {
    /// The adapters, taken out of the model while it runs bare.
    bare: Option<(PeftState, Stashed)>,
}

impl AdapterSwitch {
    /// Makes `name` the active adapter, or runs the base model bare for `None`.
    pub fn select(&mut self, p: &mut Pretrained, name: Option<&str>) -> Result<()> {
        match name {
            None => {
                if self.bare.is_none() {
                    self.bare = stash_active(p);
                }
                Ok(())
            }
            Some(n) => {
                if let Some((st, parts)) = self.bare.take() {
                    put_parts(p, parts);
                    p.peft = Some(st);
                }
                use_adapter(p, n)
            }
        }
    }
}
