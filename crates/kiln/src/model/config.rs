//! Kiln's resolved model configuration, read from a Hugging Face `config.json`.

use super::arch::Arch;
use crate::engine::Activation;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// `quantization_config.quant_method` of a model `kiln quantize` wrote.
pub const KILN_INT8: &str = "kiln_int8";

/// Where each block applies its layer norms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormPlacement {
    /// After each residual add (BERT): `x = LN(x + f(x))`.
    Post,
    /// Before each sublayer (GPT-2): `x = x + f(LN(x))`, with a final norm after the last block.
    Pre,
}

/// The switches and sizes of one transformer, independent of the architecture's file format.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    /// Which name table and head set the checkpoint uses.
    pub arch: Arch,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden width.
    pub hidden_size: usize,
    /// Number of blocks.
    pub num_layers: usize,
    /// Attention heads per block.
    pub num_heads: usize,
    /// Feed-forward inner width.
    pub intermediate_size: usize,
    /// Learned absolute positions.
    pub max_positions: usize,
    /// Segment (token type) vocabulary; 0 for none.
    pub type_vocab_size: usize,
    /// Layer norm epsilon.
    pub layer_norm_eps: f64,
    /// Feed-forward activation.
    pub activation: Activation,
    /// Norm placement in each block.
    pub norm: NormPlacement,
    /// Whether the embeddings are normalized (BERT) before the first block.
    pub embedding_norm: bool,
    /// Whether a norm follows the last block (GPT-2's `ln_f`).
    pub final_norm: bool,
    /// Output projection shares the input embedding matrix.
    pub tie_word_embeddings: bool,
    /// Padding token.
    pub pad_token_id: Option<u32>,
    /// Beginning-of-sequence token.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token.
    pub eos_token_id: Option<u32>,
    /// Std of the normal initializer (for new weights).
    pub initializer_range: f64,
    /// Dropout on hidden states (used in training).
    pub hidden_dropout: f64,
    /// Dropout on attention probabilities (used in training).
    pub attention_dropout: f64,
    /// The original config.json, written back on save so no field is lost.
    pub raw: serde_json::Value,
}

impl ModelConfig {
    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// Parameters of the base model (embeddings, blocks, norms), without task heads; in u128
    /// so absurd sizes are counted rather than overflowed.
    pub fn parameter_count(&self) -> u128 {
        let (h, i) = (self.hidden_size as u128, self.intermediate_size as u128);
        let embeddings = (self.vocab_size + self.max_positions + self.type_vocab_size) as u128 * h
            + if self.embedding_norm { 2 * h } else { 0 };
        // q, k, v and output projections, both FFN linears, two norms, with biases.
        let block = 4 * (h * h + h) + (h * i + i) + (i * h + h) + 4 * h;
        embeddings + self.num_layers as u128 * block + if self.final_norm { 2 * h } else { 0 }
    }

    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::MissingFile {
                    path: path.to_path_buf(),
                    hint: "a model directory needs config.json (as written by transformers' save_pretrained)".into(),
                }
            } else {
                Error::io("read", path, e)
            }
        })?;
        let raw: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Json {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
        Self::from_value(raw, path)
    }

    /// Builds a config from parsed JSON; `path` is named in errors.
    pub fn from_value(raw: serde_json::Value, path: &Path) -> Result<Self> {
        let model_type = raw
            .get("model_type")
            .and_then(|v| v.as_str())
            .ok_or_else(|| Error::Config {
                path: path.to_path_buf(),
                field: "model_type".into(),
                msg: "missing; expected a string such as \"bert\" or \"gpt2\"".into(),
            })?
            .to_string();
        let arch = Arch::from_model_type(&model_type).ok_or_else(|| Error::UnsupportedModel {
            path: path.to_path_buf(),
            model_type: model_type.clone(),
            supported: Arch::supported().join(", "),
        })?;
        if let Some(q) = raw.get("quantization_config") {
            let method = q
                .get("quant_method")
                .and_then(|m| m.as_str())
                .unwrap_or("?");
            if method != KILN_INT8 {
                return Err(Error::Config {
                    path: path.to_path_buf(),
                    field: "quantization_config.quant_method".into(),
                    msg: format!(
                        "\"{method}\": Kiln runs f32/f16/bf16 models and its own \"{KILN_INT8}\"; give the unquantized model (and `kiln quantize` it)"
                    ),
                });
            }
        }
        let cfg = arch.parse_config(raw, path)?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Whether config.json says the model is Kiln-int8 quantized.
    pub fn is_quantized(&self) -> bool {
        self.raw
            .get("quantization_config")
            .and_then(|q| q.get("quant_method"))
            .and_then(|m| m.as_str())
            == Some(KILN_INT8)
    }

    /// Checks sizes once so no kernel ever sees an impossible shape.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |field: &str, msg: String| Error::Config {
            path: PathBuf::from(path),
            field: field.into(),
            msg,
        };
        for (field, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_positions),
        ] {
            if v == 0 {
                return Err(bad(field, "must be positive, got 0".into()));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_heads) {
            return Err(bad(
                "num_attention_heads",
                format!(
                    "hidden size {} is not divisible by {} heads",
                    self.hidden_size, self.num_heads
                ),
            ));
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps.is_finite()) {
            return Err(bad(
                "layer_norm_eps",
                format!("must be positive, got {}", self.layer_norm_eps),
            ));
        }
        Ok(())
    }

    /// The config.json to write on save: the original keys, with Kiln's values for the ones it
    /// knows (so edits such as pruning layers are reflected).
    pub fn to_json(&self) -> serde_json::Value {
        self.arch.write_config(self)
    }
}

/// Deserializes an architecture's serde config struct, naming the offending field on error.
pub(crate) fn parse_struct<T: serde::de::DeserializeOwned>(
    raw: &serde_json::Value,
    path: &Path,
) -> Result<T> {
    serde_path_to_error::deserialize(raw.clone()).map_err(|e| Error::Config {
        path: path.to_path_buf(),
        field: e.path().to_string(),
        msg: e.inner().to_string(),
    })
}

/// Writes serializable fields over the keys of `raw` (keys Kiln does not know are kept).
pub(crate) fn merge_json(raw: &serde_json::Value, typed: serde_json::Value) -> serde_json::Value {
    let mut out = raw.clone();
    if let (Some(o), serde_json::Value::Object(t)) = (out.as_object_mut(), typed) {
        for (k, v) in t {
            o.insert(k, v);
        }
    }
    out
}
