//! DistilBERT: its config.json schema (`dim`, `n_layers`, `hidden_dim`, …) and tensor names
//! (transformers `models/distilbert/modeling_distilbert.py`): BERT's post-LN encoder with no
//! token types and no pooler; a sequence classifier reads the first token through
//! `pre_classifier` and a ReLU. LayerNorm epsilon is fixed at 1e-12 in transformers.

use super::{Classes, MlmNames, NameTable, PoolerActivation, PoolerNames, QkvNames};
use crate::engine::Activation;
use crate::error::{Error, Result};
use crate::model::config::{merge_json, parse_struct, ModelConfig, NormPlacement};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// `DistilBertConfig` as transformers writes it; missing keys take transformers' defaults.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
#[allow(missing_docs)]
pub struct DistilBertConfig {
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub sinusoidal_pos_embds: bool,
    pub n_layers: usize,
    pub n_heads: usize,
    pub dim: usize,
    pub hidden_dim: usize,
    pub dropout: f64,
    pub attention_dropout: f64,
    pub activation: String,
    pub initializer_range: f64,
    pub qa_dropout: f64,
    pub seq_classif_dropout: f64,
    pub pad_token_id: Option<u32>,
    pub tie_word_embeddings: bool,
}

impl Default for DistilBertConfig {
    fn default() -> Self {
        DistilBertConfig {
            vocab_size: 30522,
            max_position_embeddings: 512,
            sinusoidal_pos_embds: false,
            n_layers: 6,
            n_heads: 12,
            dim: 768,
            hidden_dim: 3072,
            dropout: 0.1,
            attention_dropout: 0.1,
            activation: "gelu".into(),
            initializer_range: 0.02,
            qa_dropout: 0.1,
            seq_classif_dropout: 0.2,
            pad_token_id: Some(0),
            tie_word_embeddings: true,
        }
    }
}

/// DistilBERT's tensor names.
pub const NAMES: NameTable = NameTable {
    base_prefix: "distilbert.",
    word_embeddings: "embeddings.word_embeddings.weight",
    position_embeddings: "embeddings.position_embeddings.weight",
    token_type_embeddings: None,
    embeddings_norm: Some("embeddings.LayerNorm"),
    embeddings_project: None,
    always_project: false,
    layer: "transformer.layer.",
    inner_layer: None,
    qkv: QkvNames::Separate(["attention.q_lin", "attention.k_lin", "attention.v_lin"]),
    attn_out: "attention.out_lin",
    ln_attn: "sa_layer_norm",
    ffn_in: "ffn.lin1",
    ffn_out: "ffn.lin2",
    ln_ffn: "output_layer_norm",
    final_norm: None,
    conv1d: false,
    pooler: Some(PoolerNames {
        module: "pre_classifier",
        in_base: false,
        activation: PoolerActivation::Relu,
        dropout_before: false,
    }),
    mlm: Some(MlmNames {
        transform: "vocab_transform",
        norm: "vocab_layer_norm",
        decoder: "vocab_projector.weight",
        bias: "vocab_projector.bias",
        gelu: false,
    }),
    rtd: None,
    heads: ["classifier", "classifier", "qa_outputs"],
    classes: Classes {
        base: "DistilBertModel",
        pretraining: "DistilBertForMaskedLM",
        sequence: Some("DistilBertForSequenceClassification"),
        token: Some("DistilBertForTokenClassification"),
        span: Some("DistilBertForQuestionAnswering"),
        rtd: None,
    },
    ignored_suffixes: &["position_ids"],
};

pub(crate) fn parse_config(raw: serde_json::Value, path: &Path) -> Result<ModelConfig> {
    let c: DistilBertConfig = parse_struct(&raw, path)?;
    let activation = Activation::from_hf(&c.activation).ok_or_else(|| Error::Config {
        path: path.to_path_buf(),
        field: "activation".into(),
        msg: format!(
            "unsupported activation \"{}\" (gelu, gelu_new, relu)",
            c.activation
        ),
    })?;
    Ok(ModelConfig {
        arch: super::Arch::DistilBert,
        vocab_size: c.vocab_size,
        hidden_size: c.dim,
        embedding_size: c.dim,
        num_layers: c.n_layers,
        num_heads: c.n_heads,
        intermediate_size: c.hidden_dim,
        max_positions: c.max_position_embeddings,
        type_vocab_size: 0,
        layer_norm_eps: 1e-12,
        activation,
        norm: NormPlacement::Post,
        embedding_norm: true,
        final_norm: false,
        tie_word_embeddings: c.tie_word_embeddings,
        pad_token_id: c.pad_token_id,
        bos_token_id: None,
        eos_token_id: None,
        initializer_range: c.initializer_range,
        hidden_dropout: c.dropout,
        attention_dropout: c.attention_dropout,
        pruned_heads: Default::default(),
        intermediate_sizes: Vec::new(),
        position_offset: 0,
        layer_blocks: Vec::new(),
        lstm: None,
        raw,
    })
}

pub(crate) fn write_config(cfg: &ModelConfig) -> serde_json::Value {
    let old: DistilBertConfig = serde_json::from_value(cfg.raw.clone()).unwrap_or_default();
    let c = DistilBertConfig {
        vocab_size: cfg.vocab_size,
        max_position_embeddings: cfg.max_positions,
        n_layers: cfg.num_layers,
        n_heads: cfg.num_heads,
        dim: cfg.hidden_size,
        hidden_dim: cfg.intermediate_size,
        dropout: cfg.hidden_dropout,
        attention_dropout: cfg.attention_dropout,
        activation: cfg.activation.hf_name().into(),
        initializer_range: cfg.initializer_range,
        pad_token_id: cfg.pad_token_id,
        tie_word_embeddings: cfg.tie_word_embeddings,
        ..old
    };
    let mut v = merge_json(&cfg.raw, serde_json::to_value(c).unwrap_or_default());
    v["model_type"] = "distilbert".into();
    v
}
