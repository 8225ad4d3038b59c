//! BERT: config.json schema and tensor names (transformers `models/bert/modeling_bert.py`).

use super::{Classes, MlmNames, NameTable, PoolerActivation, PoolerNames, QkvNames};
use crate::engine::Activation;
use crate::error::{Error, Result};
use crate::model::config::{merge_json, parse_struct, ModelConfig, NormPlacement};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// `BertConfig` as transformers writes it; missing keys take transformers' defaults.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
#[allow(missing_docs)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_act: String,
    pub hidden_dropout_prob: f64,
    pub attention_probs_dropout_prob: f64,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub initializer_range: f64,
    pub layer_norm_eps: f64,
    pub pad_token_id: Option<u32>,
    pub position_embedding_type: String,
    pub tie_word_embeddings: bool,
}

impl Default for BertConfig {
    fn default() -> Self {
        BertConfig {
            vocab_size: 30522,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: "gelu".into(),
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            initializer_range: 0.02,
            layer_norm_eps: 1e-12,
            pad_token_id: Some(0),
            position_embedding_type: "absolute".into(),
            tie_word_embeddings: true,
        }
    }
}

/// BERT's tensor names. Query/key/value are separate modules; the legacy `gamma`/`beta`
/// LayerNorm names are handled by the checkpoint reader for every architecture.
pub const NAMES: NameTable = NameTable {
    base_prefix: "bert.",
    word_embeddings: "embeddings.word_embeddings.weight",
    position_embeddings: "embeddings.position_embeddings.weight",
    token_type_embeddings: Some("embeddings.token_type_embeddings.weight"),
    embeddings_norm: Some("embeddings.LayerNorm"),
    embeddings_project: None,
    always_project: false,
    layer: "encoder.layer.",
    inner_layer: None,
    qkv: QkvNames::Separate([
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
    ]),
    attn_out: "attention.output.dense",
    ln_attn: "attention.output.LayerNorm",
    ffn_in: "intermediate.dense",
    ffn_out: "output.dense",
    ln_ffn: "output.LayerNorm",
    final_norm: None,
    conv1d: false,
    pooler: Some(PoolerNames {
        module: "pooler.dense",
        in_base: true,
        activation: PoolerActivation::Tanh,
        dropout_before: false,
    }),
    mlm: Some(MlmNames {
        transform: "cls.predictions.transform.dense",
        norm: "cls.predictions.transform.LayerNorm",
        decoder: "cls.predictions.decoder.weight",
        bias: "cls.predictions.bias",
        gelu: false,
    }),
    rtd: None,
    heads: ["classifier", "classifier", "qa_outputs"],
    classes: Classes {
        base: "BertModel",
        pretraining: "BertForMaskedLM",
        sequence: Some("BertForSequenceClassification"),
        token: Some("BertForTokenClassification"),
        span: Some("BertForQuestionAnswering"),
        rtd: None,
    },
    ignored_suffixes: &["position_ids"],
};

pub(crate) fn parse_config(raw: serde_json::Value, path: &Path) -> Result<ModelConfig> {
    parse_as(raw, path, super::Arch::Bert)
}

/// A BERT-schema config.json (BERT, RoBERTa) as the configuration of `arch`.
pub(crate) fn parse_as(
    raw: serde_json::Value,
    path: &Path,
    arch: super::Arch,
) -> Result<ModelConfig> {
    let c: BertConfig = parse_struct(&raw, path)?;
    let err = |field: &str, msg: String| Error::Config {
        path: path.to_path_buf(),
        field: field.into(),
        msg,
    };
    let activation = Activation::from_hf(&c.hidden_act).ok_or_else(|| {
        err(
            "hidden_act",
            format!(
                "unsupported activation \"{}\" (gelu, gelu_new, relu)",
                c.hidden_act
            ),
        )
    })?;
    if c.position_embedding_type != "absolute" {
        return Err(err(
            "position_embedding_type",
            format!(
                "\"{}\" is not supported; Kiln implements \"absolute\"",
                c.position_embedding_type
            ),
        ));
    }
    Ok(ModelConfig {
        arch,
        vocab_size: c.vocab_size,
        hidden_size: c.hidden_size,
        embedding_size: c.hidden_size,
        num_layers: c.num_hidden_layers,
        num_heads: c.num_attention_heads,
        intermediate_size: c.intermediate_size,
        max_positions: c.max_position_embeddings,
        type_vocab_size: c.type_vocab_size,
        layer_norm_eps: c.layer_norm_eps,
        activation,
        norm: NormPlacement::Post,
        embedding_norm: true,
        final_norm: false,
        tie_word_embeddings: c.tie_word_embeddings,
        pad_token_id: c.pad_token_id,
        bos_token_id: None,
        eos_token_id: None,
        initializer_range: c.initializer_range,
        hidden_dropout: c.hidden_dropout_prob,
        attention_dropout: c.attention_probs_dropout_prob,
        pruned_heads: Default::default(),
        intermediate_sizes: Vec::new(),
        position_offset: 0,
        layer_blocks: Vec::new(),
        lstm: None,
        raw,
    })
}

pub(crate) fn write_config(cfg: &ModelConfig) -> serde_json::Value {
    let mut v = write_as(cfg);
    v["model_type"] = "bert".into();
    v
}

/// `cfg` in BERT's config.json schema (BERT, RoBERTa: `max_position_embeddings` counts the
/// rows before the first position too).
pub(crate) fn write_as(cfg: &ModelConfig) -> serde_json::Value {
    let c = BertConfig {
        vocab_size: cfg.vocab_size,
        hidden_size: cfg.hidden_size,
        num_hidden_layers: cfg.num_layers,
        num_attention_heads: cfg.num_heads,
        intermediate_size: cfg.intermediate_size,
        hidden_act: cfg.activation.hf_name().into(),
        hidden_dropout_prob: cfg.hidden_dropout,
        attention_probs_dropout_prob: cfg.attention_dropout,
        max_position_embeddings: cfg.max_positions + cfg.position_offset,
        type_vocab_size: cfg.type_vocab_size,
        initializer_range: cfg.initializer_range,
        layer_norm_eps: cfg.layer_norm_eps,
        pad_token_id: cfg.pad_token_id,
        position_embedding_type: "absolute".into(),
        tie_word_embeddings: cfg.tie_word_embeddings,
    };
    merge_json(&cfg.raw, serde_json::to_value(c).unwrap_or_default())
}
