//! ELECTRA: BERT's config.json schema plus `embedding_size`, and BERT's encoder under
//! `electra.` (transformers `models/electra/modeling_electra.py`). The embedding tables are
//! `embedding_size` wide; after their LayerNorm and dropout `embeddings_project` maps them to
//! the hidden width (only when the sizes differ). There is no pooler: the sequence classifier
//! is its own `dense → GELU → out_proj` on the first token (GELU whatever `hidden_act` says),
//! and the generator's masked-LM head is `generator_predictions` (dense to `embedding_size`,
//! GELU, LayerNorm) and `generator_lm_head`, tied to the word embeddings.

use super::{Classes, MlmNames, NameTable, PoolerActivation, PoolerNames};
use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use std::path::Path;

/// ELECTRA's tensor names.
pub const NAMES: NameTable = NameTable {
    base_prefix: "electra.",
    embeddings_project: Some("embeddings_project"),
    pooler: Some(PoolerNames {
        module: "classifier.dense",
        in_base: false,
        activation: PoolerActivation::Gelu,
        dropout_before: true,
    }),
    mlm: Some(MlmNames {
        transform: "generator_predictions.dense",
        norm: "generator_predictions.LayerNorm",
        decoder: "generator_lm_head.weight",
        bias: "generator_lm_head.bias",
        gelu: true,
    }),
    rtd: Some("discriminator_predictions"),
    heads: ["classifier.out_proj", "classifier", "qa_outputs"],
    classes: Classes {
        base: "ElectraModel",
        pretraining: "ElectraForMaskedLM",
        sequence: Some("ElectraForSequenceClassification"),
        token: Some("ElectraForTokenClassification"),
        span: Some("ElectraForQuestionAnswering"),
        rtd: Some("ElectraForPreTraining"),
    },
    ..super::bert::NAMES
};

pub(crate) fn parse_config(raw: serde_json::Value, path: &Path) -> Result<ModelConfig> {
    let mut c = super::bert::parse_as(raw, path, super::Arch::Electra)?;
    let e = c.raw.get("embedding_size").and_then(|v| v.as_u64());
    c.embedding_size = e.map_or(c.hidden_size, |e| e as usize);
    if c.embedding_size == 0 {
        return Err(Error::Config {
            path: path.to_path_buf(),
            field: "embedding_size".into(),
            msg: "must be positive".into(),
        });
    }
    Ok(c)
}

pub(crate) fn write_config(cfg: &ModelConfig) -> serde_json::Value {
    let mut v = super::bert::write_as(cfg);
    v["model_type"] = "electra".into();
    v["embedding_size"] = cfg.embedding_size.into();
    v
}
