//! Saving a model directory that transformers' `from_pretrained` loads: the inverse of the
//! name table in `load.rs` (q/k/v split back apart, Conv1D weights transposed back).

use super::load::Pretrained;
use super::weights::{write_safetensors, SaveDtype};
use super::{atomic_write, TOKENIZER_FILES};
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
    match p.config().arch {
        Arch::Bert if p.mlm_head.is_some() => "BertForMaskedLM",
        Arch::Bert => "BertModel",
        Arch::Gpt2 if p.lm_head.is_some() => "GPT2LMHeadModel",
        Arch::Gpt2 => "GPT2Model",
    }
}

/// Every tensor of `p` under its Hugging Face name.
pub fn named_tensors(p: &Pretrained) -> Result<BTreeMap<String, Tensor>> {
    let cfg = p.config();
    let names = cfg.arch.names();
    let with_head = p.mlm_head.is_some() || p.lm_head.is_some() || p.task.is_some();
    let prefix = if with_head { names.base_prefix } else { "" };
    let mut out = BTreeMap::new();
    base_tensors(&p.model, prefix, &mut out)?;
    if let (Some(pooler), Some(m)) = (&p.pooler, names.pooler) {
        put_linear(&mut out, &format!("{prefix}{m}"), &pooler.dense, false)?;
    }
    if let Some(head) = &p.mlm_head {
        put_linear(
            &mut out,
            "cls.predictions.transform.dense",
            &head.transform,
            false,
        )?;
        put_norm(&mut out, "cls.predictions.transform.LayerNorm", &head.norm);
        out.insert("cls.predictions.bias".into(), head.bias.clone());
        if let Some(d) = &head.decoder {
            out.insert("cls.predictions.decoder.weight".into(), d.clone());
        }
    }
    if let Some(LmHead { weight: Some(w) }) = &p.lm_head {
        out.insert("lm_head.weight".into(), w.clone());
    }
    if let Some(t) = &p.task {
        // Task heads are nn.Linear in every architecture (no Conv1D layout).
        put_linear(&mut out, t.kind.module(cfg.arch), &t.linear, false)?;
    }
    Ok(out)
}

fn base_tensors(m: &Transformer, prefix: &str, out: &mut BTreeMap<String, Tensor>) -> Result<()> {
    let n = m.config.arch.names();
    let conv = n.conv1d;
    let e = &m.embeddings;
    out.insert(format!("{prefix}{}", n.word_embeddings), e.word.clone());
    out.insert(
        format!("{prefix}{}", n.position_embeddings),
        e.position.clone(),
    );
    if let (Some(t), Some(name)) = (&e.token_type, n.token_type_embeddings) {
        out.insert(format!("{prefix}{name}"), t.clone());
    }
    if let (Some(ln), Some(name)) = (&e.norm, n.embeddings_norm) {
        put_norm(out, &format!("{prefix}{name}"), ln);
    }
    let h = m.config.hidden_size;
    for (l, b) in m.blocks.iter().enumerate() {
        let p = format!("{prefix}{}{l}.", n.layer);
        match n.qkv {
            QkvNames::Separate(parts) => {
                let ws = b.qkv.weight.split_rows(&[h, h, h])?;
                let bs: Vec<Option<Tensor>> = match &b.qkv.bias {
                    Some(bias) => bias
                        .data()
                        .chunks(h)
                        .map(|c| Tensor::new(vec![h], c.to_vec()).map(Some))
                        .collect::<Result<_>>()?,
                    None => vec![None, None, None],
                };
                for ((name, w), bias) in parts.iter().zip(ws).zip(bs) {
                    put_linear(out, &format!("{p}{name}"), &Linear::new(w, bias), conv)?;
                }
            }
            QkvNames::Fused(name) => put_linear(out, &format!("{p}{name}"), &b.qkv, conv)?,
        }
        put_linear(out, &format!("{p}{}", n.attn_out), &b.attn_out, conv)?;
        put_norm(out, &format!("{p}{}", n.ln_attn), &b.ln_attn);
        put_linear(out, &format!("{p}{}", n.ffn_in), &b.ffn_in, conv)?;
        put_linear(out, &format!("{p}{}", n.ffn_out), &b.ffn_out, conv)?;
        put_norm(out, &format!("{p}{}", n.ln_ffn), &b.ln_ffn);
    }
    if let (Some(ln), Some(name)) = (&m.final_norm, n.final_norm) {
        put_norm(out, &format!("{prefix}{name}"), ln);
    }
    Ok(())
}

fn put_linear(
    out: &mut BTreeMap<String, Tensor>,
    module: &str,
    l: &Linear,
    conv1d: bool,
) -> Result<()> {
    let w = if conv1d {
        l.weight.transpose2d()?
    } else {
        l.weight.clone()
    };
    out.insert(format!("{module}.weight"), w);
    if let Some(b) = &l.bias {
        out.insert(format!("{module}.bias"), b.clone());
    }
    Ok(())
}

fn put_norm(out: &mut BTreeMap<String, Tensor>, module: &str, ln: &LayerNorm) {
    out.insert(format!("{module}.weight"), ln.weight.clone());
    out.insert(format!("{module}.bias"), ln.bias.clone());
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
    let tensors = named_tensors(p)?;
    write_safetensors(&dir.join("model.safetensors"), &tensors, dtype)?;
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
