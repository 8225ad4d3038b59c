//! What differs between architectures: the config.json schema and the table of checkpoint tensor
//! names. The computation itself is the one [`Transformer`](super::Transformer).
//!
//! Adding an architecture (distilbert, roberta, albert) means adding a file here with a serde
//! config struct and a [`NameTable`]; nothing in the core is copied.

pub mod bert;
pub mod gpt2;

use super::config::ModelConfig;
use crate::error::Result;
use std::path::Path;

/// The architectures Kiln reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// BERT (`model_type: "bert"`): post-LN encoder.
    Bert,
    /// GPT-2 (`model_type: "gpt2"`): pre-LN decoder.
    Gpt2,
}

/// The q, k, v projections: three modules, or one fused module.
#[derive(Clone, Copy, Debug)]
pub enum QkvNames {
    /// Separate `query`, `key`, `value` linears (fused at load time into one `[3H, H]` matrix so
    /// one GEMM computes all three).
    Separate([&'static str; 3]),
    /// A single `[.., 3H]` projection (GPT-2's `c_attn`).
    Fused(&'static str),
}

/// The one table that maps Kiln's slots to an architecture's tensor names. Module names are
/// relative to `base_prefix` (the `bert.` / `transformer.` that task models add); head names
/// are absolute.
#[derive(Clone, Copy, Debug)]
pub struct NameTable {
    /// Prefix of the base model's tensors inside a task model.
    pub base_prefix: &'static str,
    /// Word embedding matrix (tensor name).
    pub word_embeddings: &'static str,
    /// Position embedding matrix (tensor name).
    pub position_embeddings: &'static str,
    /// Token type embedding matrix (tensor name), if the architecture has segments.
    pub token_type_embeddings: Option<&'static str>,
    /// Norm applied to the summed embeddings (module name).
    pub embeddings_norm: Option<&'static str>,
    /// Prefix of block `i` is `format!("{layer}{i}.")`.
    pub layer: &'static str,
    /// Attention projections (module names, relative to the block).
    pub qkv: QkvNames,
    /// Attention output projection.
    pub attn_out: &'static str,
    /// Norm around the attention sublayer.
    pub ln_attn: &'static str,
    /// Feed-forward up projection.
    pub ffn_in: &'static str,
    /// Feed-forward down projection.
    pub ffn_out: &'static str,
    /// Norm around the feed-forward sublayer.
    pub ln_ffn: &'static str,
    /// Norm after the last block.
    pub final_norm: Option<&'static str>,
    /// Linear weights are stored `[in, out]` (GPT-2's Conv1D) rather than `[out, in]`.
    pub conv1d: bool,
    /// Pooler dense layer (module name, under the base prefix).
    pub pooler: Option<&'static str>,
    /// Tensor-name suffixes of buffers that are not parameters and may be ignored.
    pub ignored_suffixes: &'static [&'static str],
}

impl Arch {
    /// Maps a config.json `model_type`.
    pub fn from_model_type(t: &str) -> Option<Self> {
        match t {
            "bert" => Some(Arch::Bert),
            "gpt2" => Some(Arch::Gpt2),
            _ => None,
        }
    }

    /// The `model_type` strings Kiln accepts.
    pub fn supported() -> Vec<&'static str> {
        vec!["bert", "gpt2"]
    }

    /// The `model_type` string.
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Bert => "bert",
            Arch::Gpt2 => "gpt2",
        }
    }

    /// The tensor name table.
    pub fn names(self) -> &'static NameTable {
        match self {
            Arch::Bert => &bert::NAMES,
            Arch::Gpt2 => &gpt2::NAMES,
        }
    }

    pub(crate) fn parse_config(self, raw: serde_json::Value, path: &Path) -> Result<ModelConfig> {
        match self {
            Arch::Bert => bert::parse_config(raw, path),
            Arch::Gpt2 => gpt2::parse_config(raw, path),
        }
    }

    pub(crate) fn write_config(self, cfg: &ModelConfig) -> serde_json::Value {
        match self {
            Arch::Bert => bert::write_config(cfg),
            Arch::Gpt2 => gpt2::write_config(cfg),
        }
    }
}
