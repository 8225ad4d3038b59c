//! RoBERTa (and XLM-RoBERTa, the same model with a SentencePiece tokenizer): BERT's config.json
//! schema and encoder under `roberta.`, with two differences that change every output if
//! missed (transformers `models/roberta/modeling_roberta.py`): positions are counted from
//! `pad_token_id + 1` (rows 0 ..= pad of the position table are never read by a real token),
//! and the classification head is its own `dense → tanh → out_proj` on the first token, not a
//! pooler of the base model.

use super::{Classes, MlmNames, NameTable, PoolerActivation, PoolerNames};
use crate::error::Result;
use crate::model::config::ModelConfig;
use std::path::Path;

/// RoBERTa's tensor names.
pub const NAMES: NameTable = NameTable {
    base_prefix: "roberta.",
    pooler: Some(PoolerNames {
        module: "classifier.dense",
        in_base: false,
        activation: PoolerActivation::Tanh,
        dropout_before: true,
    }),
    mlm: Some(MlmNames {
        transform: "lm_head.dense",
        norm: "lm_head.layer_norm",
        decoder: "lm_head.decoder.weight",
        bias: "lm_head.bias",
        gelu: true,
    }),
    heads: ["classifier.out_proj", "classifier", "qa_outputs"],
    classes: Classes {
        base: "RobertaModel",
        pretraining: "RobertaForMaskedLM",
        sequence: Some("RobertaForSequenceClassification"),
        token: Some("RobertaForTokenClassification"),
        span: Some("RobertaForQuestionAnswering"),
        rtd: None,
    },
    ..super::bert::NAMES
};

pub(crate) fn parse_config(raw: serde_json::Value, path: &Path) -> Result<ModelConfig> {
    let mut c = super::bert::parse_as(raw, path, super::Arch::Roberta)?;
    // RobertaConfig's own defaults where BERT's differ.
    let get = |k: &str| {
        c.raw
            .get(k)
            .filter(|v| !v.is_null())
            .and_then(|v| v.as_u64())
    };
    c.pad_token_id = Some(get("pad_token_id").unwrap_or(1) as u32);
    c.bos_token_id = Some(get("bos_token_id").unwrap_or(0) as u32);
    c.eos_token_id = Some(get("eos_token_id").unwrap_or(2) as u32);
    let offset = c.pad_token_id.unwrap_or(1) as usize + 1;
    if c.max_positions <= offset {
        return Err(crate::error::Error::Config {
            path: path.to_path_buf(),
            field: "max_position_embeddings".into(),
            msg: format!(
                "{} rows leave no position after the {offset} RoBERTa skips (pad_token_id + 1)",
                c.max_positions
            ),
        });
    }
    // The usable positions: RoBERTa's 514 rows hold 512.
    c.max_positions -= offset;
    c.position_offset = offset;
    Ok(c)
}

pub(crate) fn write_config(cfg: &ModelConfig) -> serde_json::Value {
    let mut v = super::bert::write_as(cfg);
    if v["model_type"] != "xlm-roberta" {
        v["model_type"] = "roberta".into();
    }
    v["bos_token_id"] = cfg.bos_token_id.into();
    v["eos_token_id"] = cfg.eos_token_id.into();
    v
}
