//! sentence-transformers directories: `modules.json`, `1_Pooling/config.json`,
//! `sentence_bert_config.json` and a `Normalize` module become `kiln embed`'s defaults.

use super::{atomic_write, read_json};
use crate::error::{Error, Result};
use std::path::Path;

/// How token vectors become one sentence vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over real (non-padding) tokens.
    Mean,
    /// The first token ([CLS]).
    Cls,
    /// Elementwise max over real tokens.
    Max,
}

impl std::str::FromStr for Pooling {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "mean" => Ok(Pooling::Mean),
            "cls" => Ok(Pooling::Cls),
            "max" => Ok(Pooling::Max),
            _ => Err(Error::Input(format!(
                "unknown pooling \"{s}\": expected mean, cls or max"
            ))),
        }
    }
}

/// The embedding settings of a sentence-transformers model.
#[derive(Clone, Debug, PartialEq)]
pub struct SentenceConfig {
    /// Pooling mode from `1_Pooling/config.json`.
    pub pooling: Pooling,
    /// Whether a `Normalize` module follows pooling.
    pub normalize: bool,
    /// `max_seq_length` of `sentence_bert_config.json` (overrides the tokenizer's truncation).
    pub max_seq_length: Option<usize>,
    /// Folder of the transformer module when it is not the directory itself.
    pub transformer_path: Option<String>,
}

impl SentenceConfig {
    /// Reads the sentence-transformers files of `dir`; `None` when there is no `modules.json`.
    pub fn read(dir: &Path) -> Result<Option<Self>> {
        let modules_path = dir.join("modules.json");
        if !modules_path.exists() {
            return Ok(None);
        }
        let modules = read_json(&modules_path)?;
        let list = modules.as_array().ok_or_else(|| Error::Json {
            path: modules_path.clone(),
            msg: "expected an array of modules".into(),
        })?;
        let mut cfg = SentenceConfig {
            pooling: Pooling::Mean,
            normalize: false,
            max_seq_length: None,
            transformer_path: None,
        };
        for m in list {
            let ty = m.get("type").and_then(|t| t.as_str()).unwrap_or("");
            let path = m.get("path").and_then(|t| t.as_str()).unwrap_or("");
            if ty.ends_with(".Transformer") {
                if !path.is_empty() {
                    cfg.transformer_path = Some(path.to_string());
                }
                for name in [
                    "sentence_bert_config.json",
                    "sentence_distilbert_config.json",
                ] {
                    let p = dir.join(path).join(name);
                    if p.exists() {
                        let j = read_json(&p)?;
                        cfg.max_seq_length = j
                            .get("max_seq_length")
                            .and_then(|v| v.as_u64())
                            .map(|v| v as usize);
                    }
                }
            } else if ty.ends_with(".Pooling") {
                let p = dir.join(path).join("config.json");
                let j = read_json(&p)?;
                let flag = |k: &str| j.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
                cfg.pooling = if flag("pooling_mode_cls_token") {
                    Pooling::Cls
                } else if flag("pooling_mode_max_tokens") {
                    Pooling::Max
                } else if flag("pooling_mode_mean_tokens") {
                    Pooling::Mean
                } else {
                    return Err(Error::Json {
                        path: p,
                        msg: "no supported pooling mode set (pooling_mode_mean_tokens, _cls_token, _max_tokens)".into(),
                    });
                };
            } else if ty.ends_with(".Normalize") {
                cfg.normalize = true;
            }
        }
        Ok(Some(cfg))
    }
}

/// Copies the sentence-transformers files of `src` to the model directory `dst` (a saved copy of
/// the model: quantized, converted): `modules.json`, the settings, and the module folders
/// (`1_Pooling/`, ...). The transformer module is the directory itself in the copy.
pub fn copy_files(src: &Path, dst: &Path) -> Result<()> {
    let modules_path = src.join("modules.json");
    if !modules_path.exists() {
        return Ok(());
    }
    let mut modules = read_json(&modules_path)?;
    let copy = |from: &Path, to: &Path| -> Result<()> {
        let bytes = std::fs::read(from).map_err(|e| Error::io("read", from, e))?;
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io("create directory", parent, e))?;
        }
        atomic_write(to, &bytes)
    };
    for m in modules.as_array_mut().into_iter().flatten() {
        let ty = m
            .get("type")
            .and_then(|t| t.as_str())
            .unwrap_or("")
            .to_string();
        let path = m
            .get("path")
            .and_then(|t| t.as_str())
            .unwrap_or("")
            .to_string();
        let from = src.join(&path);
        if ty.ends_with(".Transformer") {
            for name in [
                "sentence_bert_config.json",
                "sentence_distilbert_config.json",
            ] {
                if from.join(name).is_file() {
                    copy(&from.join(name), &dst.join(name))?;
                }
            }
            m["path"] = "".into();
        } else if !path.is_empty() && from.is_dir() {
            let rd = std::fs::read_dir(&from).map_err(|e| Error::io("read", &from, e))?;
            for e in rd.flatten().filter(|e| e.path().is_file()) {
                copy(&e.path(), &dst.join(&path).join(e.file_name()))?;
            }
        }
    }
    let other = src.join("config_sentence_transformers.json");
    if other.is_file() {
        copy(&other, &dst.join("config_sentence_transformers.json"))?;
    }
    let text = serde_json::to_string_pretty(&modules).map_err(|e| Error::Json {
        path: dst.join("modules.json"),
        msg: e.to_string(),
    })?;
    atomic_write(&dst.join("modules.json"), text.as_bytes())
}
