//! Saving a model directory that transformers' `from_pretrained` loads: the inverse of the
//! name table in `load.rs` (q/k/v split back apart, Conv1D weights transposed back).

use super::load::Pretrained;
use super::weights::{write_safetensors_with_i8, I8Tensor, SaveDtype};
use super::{atomic_write, TOKENIZER_FILES};
use crate::engine::int8::Int8Weight;
use crate::engine::{LayerNorm, Linear, Tensor};
use crate::error::{Error, Result};
use crate::heads::LmHead;
use crate::model::arch::QkvNames;
use crate::model::{Arch, Transformer};
use std::collections::BTreeMap;
use std::path::Path;

/// The transformers class a saved directory represents.
pub fn architecture_name(p: &Pretrained) -> &'static str {
    if let Some(name) = p
        .task
        .as_ref()
        .and_then(|t| t.kind.architecture(p.config().arch))
    {
        return name;
    }
    let c = p.config().arch.names().classes;
    if let (Some(_), Some(name)) = (&p.rtd_head, c.rtd) {
        return name;
    }
    if p.mlm_head.is_some() || p.lm_head.is_some() {
        c.pretraining
    } else {
        c.base
    }
}

/// Every f32 tensor of `p` under its Hugging Face name (a quantized model's int8 weights are in
/// [`all_tensors`]).
pub fn named_tensors(p: &Pretrained) -> Result<BTreeMap<String, Tensor>> {
    Ok(all_tensors(p)?.f32)
}

/// The tensors of a model under their checkpoint names.
#[derive(Default)]
pub struct Tensors {
    /// f32 tensors (saved in the chosen dtype).
    pub f32: BTreeMap<String, Tensor>,
    /// Int8 weights of quantized layers (saved as I8).
    pub i8: BTreeMap<String, I8Tensor>,
}

impl Tensors {
    fn insert(&mut self, name: String, t: Tensor) {
        self.f32.insert(name, t);
    }

    /// A linear layer: `module.weight` (Conv1D layout `[in, out]` when `conv1d`) and
    /// `module.bias`; an int8 layer as `module.weight` I8 `[out, in]` (whatever the
    /// architecture's f32 layout) and `module.weight_scale` `[out]`.
    fn linear(&mut self, module: &str, l: &Linear, conv1d: bool) -> Result<()> {
        match &l.int8 {
            Some(q) => {
                let (n, k) = (q.out_features(), q.in_features());
                self.i8
                    .insert(format!("{module}.weight"), (vec![n, k], q.data.clone()));
                self.insert(
                    format!("{module}.weight_scale"),
                    Tensor::new(vec![n], q.scale.clone())?,
                );
                if let Some(s) = &q.smooth {
                    self.insert(
                        format!("{module}.input_smooth"),
                        Tensor::new(vec![k], s.clone())?,
                    );
                }
            }
            None => {
                let w = if conv1d {
                    l.weight.transpose2d()?
                } else {
                    l.weight.clone()
                };
                self.insert(format!("{module}.weight"), w);
            }
        }
        if let Some(b) = &l.bias {
            self.insert(format!("{module}.bias"), b.clone());
        }
        Ok(())
    }

    fn norm(&mut self, module: &str, ln: &LayerNorm) {
        self.insert(format!("{module}.weight"), ln.weight.clone());
        self.insert(format!("{module}.bias"), ln.bias.clone());
    }
}

/// Every tensor of `p` under its name: the f32 ones, and the int8 weights of quantized layers
/// (see docs/quantization.md).
pub fn all_tensors(p: &Pretrained) -> Result<Tensors> {
    let cfg = p.config();
    let names = cfg.arch.names();
    let prefix = if p.has_head() { names.base_prefix } else { "" };
    let mut out = Tensors::default();
    base_tensors(&p.model, prefix, &mut out)?;
    if let (Some(pooler), Some(m)) = (&p.pooler, names.pooler) {
        out.linear(&m.path(prefix), &pooler.dense, false)?;
    }
    if let (Some(head), Some(m)) = (&p.mlm_head, names.mlm) {
        out.linear(m.transform, &head.transform, false)?;
        out.norm(m.norm, &head.norm);
        out.insert(m.bias.into(), head.bias.clone());
        if let Some(d) = &head.decoder {
            out.insert(m.decoder.into(), d.clone());
        }
    }
    if let (Some(head), Some(m)) = (&p.rtd_head, names.rtd) {
        out.linear(&format!("{m}.dense"), &head.dense, false)?;
        out.linear(&format!("{m}.dense_prediction"), &head.prediction, false)?;
    }
    if let Some(LmHead { weight: Some(w) }) = &p.lm_head {
        out.insert("lm_head.weight".into(), w.clone());
    }
    if let Some(t) = &p.task {
        // Task heads are nn.Linear in every architecture (no Conv1D layout).
        out.linear(t.kind.module(cfg.arch), &t.linear, false)?;
    }
    Ok(out)
}

/// The rows `[at, at + len)` of a linear layer (the q, k or v part of a fused projection).
fn rows_of(l: &Linear, at: usize, len: usize) -> Result<Linear> {
    let bias = match &l.bias {
        Some(b) => Some(Tensor::new(vec![len], b.data()[at..at + len].to_vec())?),
        None => None,
    };
    Ok(match &l.int8 {
        Some(q) => {
            let k = q.in_features();
            Linear::quantized(
                Int8Weight::from_parts(
                    q.data[at * k..(at + len) * k].to_vec(),
                    q.scale[at..at + len].to_vec(),
                    len,
                    k,
                )
                .with_smooth(q.smooth.clone()),
                bias,
            )
        }
        None => {
            let k = l.in_features();
            let w = l.weight.data()[at * k..(at + len) * k].to_vec();
            Linear::new(Tensor::new(vec![len, k], w)?, bias)
        }
    })
}

fn base_tensors(m: &Transformer, prefix: &str, out: &mut Tensors) -> Result<()> {
    let n = m.config.arch.names();
    let conv = n.conv1d;
    let e = &m.embeddings;
    let word = format!("{prefix}{}", n.word_embeddings);
    out.linear(word.trim_end_matches(".weight"), &e.word, false)?;
    if let Some(lstm) = &m.lstm {
        use crate::model::arch::lstm::{direction_names, layer_prefix};
        for (l, layer) in lstm.layers.iter().enumerate() {
            let pre = format!("{prefix}{}", layer_prefix(l));
            for (d, dir) in std::iter::once(&layer.forward)
                .chain(&layer.backward)
                .enumerate()
            {
                let (suffix, proj) = direction_names(d);
                let c = &dir.cell;
                for (name, t) in [
                    ("weight_ih", &c.w_ih),
                    ("weight_hh", &c.w_hh),
                    ("bias_ih", &c.b_ih),
                    ("bias_hh", &c.b_hh),
                ] {
                    out.insert(format!("{pre}lstm.{name}{suffix}"), t.clone());
                }
                out.linear(&format!("{pre}{proj}"), &dir.proj, false)?;
            }
        }
        return Ok(());
    }
    out.insert(
        format!("{prefix}{}", n.position_embeddings),
        e.position.clone(),
    );
    if let (Some(t), Some(name)) = (&e.token_type, n.token_type_embeddings) {
        out.insert(format!("{prefix}{name}"), t.clone());
    }
    if let (Some(ln), Some(name)) = (&e.norm, n.embeddings_norm) {
        out.norm(&format!("{prefix}{name}"), ln);
    }
    if let (Some(pj), Some(name)) = (&e.project, n.embeddings_project) {
        out.linear(&format!("{prefix}{name}"), pj, false)?;
    }
    for (l, b) in m.blocks.iter().enumerate() {
        let p = format!("{prefix}{}", n.block(l, &m.config));
        let w = b.attention_width();
        match n.qkv {
            QkvNames::Separate(parts) => {
                for (i, name) in parts.iter().enumerate() {
                    out.linear(&format!("{p}{name}"), &rows_of(&b.qkv, i * w, w)?, conv)?;
                }
            }
            QkvNames::Fused(name) => out.linear(&format!("{p}{name}"), &b.qkv, conv)?,
        }
        out.linear(&format!("{p}{}", n.attn_out), &b.attn_out, conv)?;
        out.norm(&format!("{p}{}", n.ln_attn), &b.ln_attn);
        out.linear(&format!("{p}{}", n.ffn_in), &b.ffn_in, conv)?;
        out.linear(&format!("{p}{}", n.ffn_out), &b.ffn_out, conv)?;
        out.norm(&format!("{p}{}", n.ln_ffn), &b.ln_ffn);
    }
    if let (Some(ln), Some(name)) = (&m.final_norm, n.final_norm) {
        out.norm(&format!("{prefix}{name}"), ln);
    }
    Ok(())
}

/// Saves `p` as a Hugging Face model directory at `dir` (created if needed). Every file is
/// written atomically.
///
/// A model carrying an adapter saves only the adapter (PEFT's layout, see
/// [`crate::peft::files`]).
pub fn save(p: &Pretrained, dir: &Path, dtype: SaveDtype) -> Result<()> {
    if p.peft.is_some() {
        return crate::peft::files::save_adapter(p, dir);
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
    let tensors = all_tensors(p)?;
    write_safetensors_with_i8(
        &dir.join("model.safetensors"),
        &tensors.f32,
        dtype,
        &tensors.i8,
    )?;
    let mut cfg = p.config().to_json();
    cfg["architectures"] = serde_json::json!([architecture_name(p)]);
    if let Some(t) = &p.task {
        if t.kind != crate::heads::HeadKind::Span {
            t.labels.write(&mut cfg);
        }
        // transformers finds GPT-2's last real token through pad_token_id.
        if p.config().arch == Arch::Gpt2 && cfg["pad_token_id"].is_null() {
            cfg["pad_token_id"] = cfg["eos_token_id"].clone();
        }
    }
    // transformers 5 reads `dtype`, older versions `torch_dtype`.
    let dtype_name = match dtype {
        SaveDtype::F32 => "float32",
        SaveDtype::F16 => "float16",
        SaveDtype::BF16 => "bfloat16",
    };
    cfg["dtype"] = dtype_name.into();
    if cfg.get("torch_dtype").is_some() {
        cfg["torch_dtype"] = dtype_name.into();
    }
    let text = serde_json::to_string_pretty(&cfg).map_err(|e| Error::Json {
        path: dir.join("config.json"),
        msg: e.to_string(),
    })?;
    atomic_write(&dir.join("config.json"), text.as_bytes())?;
    let src = &p.dir;
    // Added tokens live only in our tokenizer.json (transformers prefers that file).
    let changed = p.tokenizer.as_ref().is_some_and(|t| t.changed());
    if src.canonicalize().ok() != dir.canonicalize().ok() {
        if p.sentence.is_some() {
            super::sentence::copy_files(src, dir)?;
        }
        for f in TOKENIZER_FILES {
            let from = src.join(f);
            if from.is_file() && !(changed && *f == "tokenizer.json") {
                let bytes = std::fs::read(&from).map_err(|e| Error::io("read", &from, e))?;
                atomic_write(&dir.join(f), &bytes)?;
            }
        }
    }
    if let Some(t) = &p.tokenizer {
        if changed || !dir.join("tokenizer.json").exists() {
            t.save(&dir.join("tokenizer.json"))?;
        }
    }
    Ok(())
}
