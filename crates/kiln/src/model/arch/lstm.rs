//! Kiln's LSTM language model (`model_type: "kiln_lstm"`): config.json schema and tensor
//! names. Not a transformers architecture: its tensors carry PyTorch `nn.LSTM` / `nn.Linear` /
//! `nn.Embedding` state-dict names, so a PyTorch module tree loads them strictly
//! (`docs/lstm.md`).

use super::{Classes, NameTable, QkvNames};
use crate::engine::Activation;
use crate::error::{Error, Result};
use crate::model::config::{merge_json, parse_struct, ModelConfig, NormPlacement};
use crate::model::lstm::LstmShape;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// An LSTM reads any length: this only bounds the inputs commands accept (there is no
/// position table).
pub const MAX_TOKENS: usize = 1 << 20;

/// `config.json` of a `kiln_lstm` model; missing keys take these defaults.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
#[allow(missing_docs)]
pub struct LstmConfig {
    pub vocab_size: usize,
    /// The embedding width and each layer's projected output.
    pub projection_size: usize,
    /// `nn.LSTM`'s `hidden_size`: the cell width.
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub bidirectional: bool,
    pub residual: bool,
    /// Dropout on the embeddings and on every layer's output, in training.
    pub dropout: f64,
    pub initializer_range: f64,
    pub pad_token_id: Option<u32>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub tie_word_embeddings: bool,
}

impl Default for LstmConfig {
    fn default() -> Self {
        LstmConfig {
            vocab_size: 30522,
            projection_size: 256,
            hidden_size: 1024,
            num_hidden_layers: 2,
            bidirectional: true,
            residual: true,
            dropout: 0.1,
            initializer_range: 0.02,
            pad_token_id: None,
            bos_token_id: None,
            eos_token_id: None,
            tie_word_embeddings: true,
        }
    }
}

/// The LSTM's names. Only the embeddings, the layers' prefix and the task heads are read from
/// this table; the per-layer names are in [`layer_prefix`] and [`direction_names`].
pub const NAMES: NameTable = NameTable {
    base_prefix: "",
    word_embeddings: "embeddings.weight",
    position_embeddings: "",
    token_type_embeddings: None,
    embeddings_norm: None,
    embeddings_project: None,
    always_project: false,
    layer: "layers.",
    inner_layer: None,
    qkv: QkvNames::Fused(""),
    attn_out: "",
    ln_attn: "",
    ffn_in: "",
    ffn_out: "",
    ln_ffn: "",
    final_norm: None,
    conv1d: false,
    pooler: None,
    mlm: None,
    rtd: None,
    heads: ["classifier", "classifier", "qa_outputs"],
    classes: Classes {
        base: "KilnLstmModel",
        pretraining: "KilnLstmForLanguageModeling",
        sequence: Some("KilnLstmForSequenceClassification"),
        token: Some("KilnLstmForTokenClassification"),
        span: None,
        rtd: None,
    },
    ignored_suffixes: &[],
};

/// The module prefix of layer `l`: `layers.{l}.`.
pub fn layer_prefix(l: usize) -> String {
    format!("{}{l}.", NAMES.layer)
}

/// Direction `d`'s names inside a layer: the `nn.LSTM` parameter suffix (`_l0` or
/// `_l0_reverse`) and the projection module (`proj` or `proj_reverse`).
pub fn direction_names(d: usize) -> (&'static str, &'static str) {
    if d == 0 {
        ("_l0", "proj")
    } else {
        ("_l0_reverse", "proj_reverse")
    }
}

pub(crate) fn parse_config(raw: serde_json::Value, path: &Path) -> Result<ModelConfig> {
    let c: LstmConfig = parse_struct(&raw, path)?;
    let bad = |field: &str, msg: &str| Error::Config {
        path: path.to_path_buf(),
        field: field.into(),
        msg: msg.into(),
    };
    for (field, v) in [
        ("vocab_size", c.vocab_size),
        ("projection_size", c.projection_size),
        ("hidden_size", c.hidden_size),
        ("num_hidden_layers", c.num_hidden_layers),
    ] {
        if v == 0 {
            return Err(bad(field, "must be positive, got 0"));
        }
    }
    if !(0.0..1.0).contains(&c.dropout) {
        return Err(bad("dropout", "must be in [0, 1)"));
    }
    if !c.tie_word_embeddings {
        return Err(bad(
            "tie_word_embeddings",
            "a kiln_lstm model's softmax is its embedding matrix; it must be true",
        ));
    }
    let shape = LstmShape {
        layers: c.num_hidden_layers,
        hidden: c.hidden_size,
        proj: c.projection_size,
        bidirectional: c.bidirectional,
        residual: c.residual,
    };
    Ok(ModelConfig {
        arch: super::Arch::Lstm,
        vocab_size: c.vocab_size,
        hidden_size: shape.output_width(crate::engine::MaskKind::Bidirectional),
        embedding_size: c.projection_size,
        num_layers: 0,
        num_heads: 1,
        intermediate_size: 0,
        max_positions: MAX_TOKENS,
        type_vocab_size: 0,
        layer_norm_eps: 1e-5,
        activation: Activation::GeluErf,
        norm: NormPlacement::Pre,
        embedding_norm: false,
        final_norm: false,
        tie_word_embeddings: true,
        pad_token_id: c.pad_token_id,
        bos_token_id: c.bos_token_id,
        eos_token_id: c.eos_token_id,
        initializer_range: c.initializer_range,
        hidden_dropout: c.dropout,
        attention_dropout: 0.0,
        pruned_heads: Default::default(),
        intermediate_sizes: Vec::new(),
        position_offset: 0,
        layer_blocks: Vec::new(),
        lstm: Some(shape),
        raw,
    })
}

pub(crate) fn write_config(cfg: &ModelConfig) -> serde_json::Value {
    let orig: LstmConfig = serde_json::from_value(cfg.raw.clone()).unwrap_or_default();
    let shape = cfg.lstm.clone().unwrap_or(LstmShape {
        layers: orig.num_hidden_layers,
        hidden: orig.hidden_size,
        proj: orig.projection_size,
        bidirectional: orig.bidirectional,
        residual: orig.residual,
    });
    let c = LstmConfig {
        vocab_size: cfg.vocab_size,
        projection_size: shape.proj,
        hidden_size: shape.hidden,
        num_hidden_layers: shape.layers,
        bidirectional: shape.bidirectional,
        residual: shape.residual,
        dropout: cfg.hidden_dropout,
        initializer_range: cfg.initializer_range,
        pad_token_id: cfg.pad_token_id,
        bos_token_id: cfg.bos_token_id,
        eos_token_id: cfg.eos_token_id,
        tie_word_embeddings: true,
    };
    let mut v = merge_json(&cfg.raw, serde_json::to_value(c).unwrap_or_default());
    v["model_type"] = "kiln_lstm".into();
    v
}
