//! GPT-2: config.json schema and tensor names (transformers `models/gpt2/modeling_gpt2.py`).

use super::{Classes, NameTable, QkvNames};
use crate::engine::Activation;
use crate::error::{Error, Result};
use crate::model::config::{merge_json, parse_struct, ModelConfig, NormPlacement};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// `GPT2Config` as transformers writes it; missing keys take transformers' defaults.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
#[allow(missing_docs)]
pub struct Gpt2Config {
    pub vocab_size: usize,
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_inner: Option<usize>,
    pub activation_function: String,
    pub resid_pdrop: f64,
    pub embd_pdrop: f64,
    pub attn_pdrop: f64,
    pub layer_norm_epsilon: f64,
    pub initializer_range: f64,
    pub scale_attn_weights: bool,
    pub scale_attn_by_inverse_layer_idx: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
    pub tie_word_embeddings: bool,
}

impl Default for Gpt2Config {
    fn default() -> Self {
        Gpt2Config {
            vocab_size: 50257,
            n_positions: 1024,
            n_embd: 768,
            n_layer: 12,
            n_head: 12,
            n_inner: None,
            activation_function: "gelu_new".into(),
            resid_pdrop: 0.1,
            embd_pdrop: 0.1,
            attn_pdrop: 0.1,
            layer_norm_epsilon: 1e-5,
            initializer_range: 0.02,
            scale_attn_weights: true,
            scale_attn_by_inverse_layer_idx: false,
            bos_token_id: Some(50256),
            eos_token_id: Some(50256),
            pad_token_id: None,
            tie_word_embeddings: true,
        }
    }
}

/// GPT-2's tensor names. Every linear is a Conv1D stored `[in, out]`; the table's `conv1d`
/// flag makes the reader transpose them once at load time (and the writer transpose back).
pub const NAMES: NameTable = NameTable {
    base_prefix: "transformer.",
    word_embeddings: "wte.weight",
    position_embeddings: "wpe.weight",
    token_type_embeddings: None,
    embeddings_norm: None,
    embeddings_project: None,
    always_project: false,
    layer: "h.",
    inner_layer: None,
    qkv: QkvNames::Fused("attn.c_attn"),
    attn_out: "attn.c_proj",
    ln_attn: "ln_1",
    ffn_in: "mlp.c_fc",
    ffn_out: "mlp.c_proj",
    ln_ffn: "ln_2",
    final_norm: Some("ln_f"),
    conv1d: true,
    pooler: None,
    mlm: None,
    rtd: None,
    heads: ["score", "classifier", "qa_outputs"],
    classes: Classes {
        base: "GPT2Model",
        pretraining: "GPT2LMHeadModel",
        sequence: Some("GPT2ForSequenceClassification"),
        token: Some("GPT2ForTokenClassification"),
        span: None,
        rtd: None,
    },
    ignored_suffixes: &["attn.bias", "attn.masked_bias"],
};

pub(crate) fn parse_config(raw: serde_json::Value, path: &Path) -> Result<ModelConfig> {
    let c: Gpt2Config = parse_struct(&raw, path)?;
    let err = |field: &str, msg: String| Error::Config {
        path: path.to_path_buf(),
        field: field.into(),
        msg,
    };
    let activation = Activation::from_hf(&c.activation_function).ok_or_else(|| {
        err(
            "activation_function",
            format!(
                "unsupported activation \"{}\" (gelu, gelu_new, relu)",
                c.activation_function
            ),
        )
    })?;
    if !c.scale_attn_weights || c.scale_attn_by_inverse_layer_idx {
        return Err(err(
            "scale_attn_weights",
            "only the standard 1/sqrt(head_dim) attention scaling is supported".into(),
        ));
    }
    Ok(ModelConfig {
        arch: super::Arch::Gpt2,
        vocab_size: c.vocab_size,
        hidden_size: c.n_embd,
        embedding_size: c.n_embd,
        num_layers: c.n_layer,
        num_heads: c.n_head,
        intermediate_size: c.n_inner.unwrap_or(4 * c.n_embd),
        max_positions: c.n_positions,
        type_vocab_size: 0,
        layer_norm_eps: c.layer_norm_epsilon,
        activation,
        norm: NormPlacement::Pre,
        embedding_norm: false,
        final_norm: true,
        tie_word_embeddings: c.tie_word_embeddings,
        pad_token_id: c.pad_token_id,
        bos_token_id: c.bos_token_id,
        eos_token_id: c.eos_token_id,
        initializer_range: c.initializer_range,
        hidden_dropout: c.resid_pdrop,
        attention_dropout: c.attn_pdrop,
        pruned_heads: Default::default(),
        intermediate_sizes: Vec::new(),
        position_offset: 0,
        layer_blocks: Vec::new(),
        lstm: None,
        raw,
    })
}

pub(crate) fn write_config(cfg: &ModelConfig) -> serde_json::Value {
    let orig: Gpt2Config = serde_json::from_value(cfg.raw.clone()).unwrap_or_default();
    let c = Gpt2Config {
        vocab_size: cfg.vocab_size,
        n_positions: cfg.max_positions,
        n_embd: cfg.hidden_size,
        n_layer: cfg.num_layers,
        n_head: cfg.num_heads,
        n_inner: if cfg.intermediate_size == 4 * cfg.hidden_size && orig.n_inner.is_none() {
            None
        } else {
            Some(cfg.intermediate_size)
        },
        activation_function: cfg.activation.hf_name().into(),
        resid_pdrop: cfg.hidden_dropout,
        attn_pdrop: cfg.attention_dropout,
        layer_norm_epsilon: cfg.layer_norm_eps,
        initializer_range: cfg.initializer_range,
        bos_token_id: cfg.bos_token_id,
        eos_token_id: cfg.eos_token_id,
        pad_token_id: cfg.pad_token_id,
        tie_word_embeddings: cfg.tie_word_embeddings,
        ..orig
    };
    let mut v = merge_json(&cfg.raw, serde_json::to_value(c).unwrap_or_default());
    v["model_type"] = "gpt2".into();
    v
}
