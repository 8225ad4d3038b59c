//! What differs between architectures: the config.json schema and the table of checkpoint tensor
//! names. The computation itself is the one [`Transformer`](super::Transformer).
//!
//! Adding an architecture (albert, electra) means adding a file here with a serde config struct
//! and a [`NameTable`]; nothing in the core is copied.

pub mod albert;
pub mod bert;
pub mod distilbert;
pub mod electra;
pub mod gpt2;
pub mod lstm;
pub mod roberta;

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
    /// RoBERTa (`model_type: "roberta"`, and `xlm-roberta`, the same with another tokenizer):
    /// BERT's encoder with positions counted from `pad_token_id + 1` and one token type.
    Roberta,
    /// DistilBERT (`model_type: "distilbert"`): BERT's encoder without token types or pooler,
    /// under other tensor names.
    DistilBert,
    /// ELECTRA (`model_type: "electra"`): BERT's encoder under `electra.`, its embeddings
    /// `embedding_size` wide and projected to the hidden width.
    Electra,
    /// ALBERT (`model_type: "albert"`): BERT's encoder with factorized embeddings and layers
    /// that share their weights.
    Albert,
    /// Kiln's LSTM language model (`model_type: "kiln_lstm"`): the same embeddings and heads
    /// over LSTM stacks instead of attention blocks.
    Lstm,
}

/// The activation after the dense layer between the first token and a sequence classifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolerActivation {
    /// `tanh` (BERT's pooler, RoBERTa's classification head).
    Tanh,
    /// `ReLU` (DistilBERT's `pre_classifier`).
    Relu,
    /// Exact GELU (ELECTRA's classification head, whatever `hidden_act` says).
    Gelu,
}

/// The dense layer a sequence classifier reads the first token through.
#[derive(Clone, Copy, Debug)]
pub struct PoolerNames {
    /// Module name.
    pub module: &'static str,
    /// Whether the module belongs to the base model (under `base_prefix`: BERT's
    /// `bert.pooler.dense`) or to the classification head (RoBERTa's `classifier.dense`).
    pub in_base: bool,
    /// Its activation.
    pub activation: PoolerActivation,
    /// The head's dropout is applied to the first token before this layer too (RoBERTa's and
    /// ELECTRA's classification heads: dropout, dense, activation, dropout, out_proj).
    pub dropout_before: bool,
}

impl PoolerNames {
    /// The module's name in a checkpoint whose base-model tensors carry `prefix`.
    pub fn path(&self, prefix: &str) -> String {
        if self.in_base {
            format!("{prefix}{}", self.module)
        } else {
            self.module.to_string()
        }
    }
}

/// A masked-LM head's tensor names (absolute): transform dense, its norm, the decoder (tied
/// to the word embeddings unless stored) and the output bias.
#[derive(Clone, Copy, Debug)]
pub struct MlmNames {
    /// Dense transform module.
    pub transform: &'static str,
    /// Its LayerNorm module.
    pub norm: &'static str,
    /// Decoder weight tensor.
    pub decoder: &'static str,
    /// Output bias tensor; older checkpoints keep it as `<decoder module>.bias`.
    pub bias: &'static str,
    /// The transform's activation is exact GELU whatever `hidden_act` says (RoBERTa,
    /// ELECTRA); otherwise it is `hidden_act`.
    pub gelu: bool,
}

/// The transformers classes of an architecture, as config.json's `architectures` names them.
#[derive(Clone, Copy, Debug)]
pub struct Classes {
    /// The base model.
    pub base: &'static str,
    /// With its pre-training head (masked or causal LM).
    pub pretraining: &'static str,
    /// Sequence classification.
    pub sequence: Option<&'static str>,
    /// Token classification.
    pub token: Option<&'static str>,
    /// Extractive question answering.
    pub span: Option<&'static str>,
    /// With the replaced-token-detection head (ELECTRA's discriminator).
    pub rtd: Option<&'static str>,
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
    /// Projection of the embeddings to the hidden width when `embedding_size` differs (module
    /// name, under the base prefix): ELECTRA's `embeddings_project`.
    pub embeddings_project: Option<&'static str>,
    /// The projection exists even when the widths are equal (ALBERT's
    /// `encoder.embedding_hidden_mapping_in`).
    pub always_project: bool,
    /// Prefix of block `i` is `format!("{layer}{i}.")`; with `inner_layer` (ALBERT's groups),
    /// `format!("{layer}{group}.{inner_layer}{j}.")`.
    pub layer: &'static str,
    /// ALBERT: the layers inside a group (`albert_layers.`), block `i` being layer
    /// `i % inner_group_num` of group `i / inner_group_num`.
    pub inner_layer: Option<&'static str>,
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
    /// The dense layer a sequence classifier reads the first token through (BERT's pooler).
    pub pooler: Option<PoolerNames>,
    /// Masked-LM head, for encoders.
    pub mlm: Option<MlmNames>,
    /// Replaced-token-detection head (module name, absolute): ELECTRA's
    /// `discriminator_predictions`, with `dense` and `dense_prediction`.
    pub rtd: Option<&'static str>,
    /// Output layer of each task head (absolute module names): sequence, token, span.
    pub heads: [&'static str; 3],
    /// transformers class names.
    pub classes: Classes,
    /// Tensor-name suffixes of buffers that are not parameters and may be ignored.
    pub ignored_suffixes: &'static [&'static str],
}

impl NameTable {
    /// The module prefix of stored block `i` (relative to the base prefix):
    /// `encoder.layer.3.`, or ALBERT's `encoder.albert_layer_groups.0.albert_layers.1.`.
    pub fn block(&self, i: usize, cfg: &ModelConfig) -> String {
        match self.inner_layer {
            Some(inner) => {
                let per = cfg.raw["inner_group_num"].as_u64().unwrap_or(1).max(1) as usize;
                format!("{}{}.{inner}{}.", self.layer, i / per, i % per)
            }
            None => format!("{}{i}.", self.layer),
        }
    }
}

impl Arch {
    /// Maps a config.json `model_type`.
    pub fn from_model_type(t: &str) -> Option<Self> {
        match t {
            "bert" => Some(Arch::Bert),
            "gpt2" => Some(Arch::Gpt2),
            "roberta" | "xlm-roberta" => Some(Arch::Roberta),
            "distilbert" => Some(Arch::DistilBert),
            "electra" => Some(Arch::Electra),
            "albert" => Some(Arch::Albert),
            "kiln_lstm" => Some(Arch::Lstm),
            _ => None,
        }
    }

    /// Whether the architecture is a bidirectional encoder (BERT and its variants; a
    /// bidirectional LSTM is one by its config, not its architecture).
    pub fn is_encoder(self) -> bool {
        !matches!(self, Arch::Gpt2 | Arch::Lstm)
    }

    /// Whether hidden dropout follows each block's feed-forward output (not ALBERT's, whose
    /// layer builds that dropout but never applies it).
    pub fn ffn_output_dropout(self) -> bool {
        self != Arch::Albert
    }

    /// The `model_type` strings Kiln accepts.
    pub fn supported() -> Vec<&'static str> {
        vec![
            "bert",
            "roberta",
            "xlm-roberta",
            "distilbert",
            "electra",
            "albert",
            "gpt2",
            "kiln_lstm",
        ]
    }

    /// The `model_type` string.
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Bert => "bert",
            Arch::Gpt2 => "gpt2",
            Arch::Roberta => "roberta",
            Arch::DistilBert => "distilbert",
            Arch::Electra => "electra",
            Arch::Albert => "albert",
            Arch::Lstm => "kiln_lstm",
        }
    }

    /// The tensor name table.
    pub fn names(self) -> &'static NameTable {
        match self {
            Arch::Bert => &bert::NAMES,
            Arch::Gpt2 => &gpt2::NAMES,
            Arch::Roberta => &roberta::NAMES,
            Arch::DistilBert => &distilbert::NAMES,
            Arch::Electra => &electra::NAMES,
            Arch::Albert => &albert::NAMES,
            Arch::Lstm => &lstm::NAMES,
        }
    }

    pub(crate) fn parse_config(self, raw: serde_json::Value, path: &Path) -> Result<ModelConfig> {
        match self {
            Arch::Bert => bert::parse_config(raw, path),
            Arch::Gpt2 => gpt2::parse_config(raw, path),
            Arch::Roberta => roberta::parse_config(raw, path),
            Arch::DistilBert => distilbert::parse_config(raw, path),
            Arch::Electra => electra::parse_config(raw, path),
            Arch::Albert => albert::parse_config(raw, path),
            Arch::Lstm => lstm::parse_config(raw, path),
        }
    }

    pub(crate) fn write_config(self, cfg: &ModelConfig) -> serde_json::Value {
        match self {
            Arch::Bert => bert::write_config(cfg),
            Arch::Gpt2 => gpt2::write_config(cfg),
            Arch::Roberta => roberta::write_config(cfg),
            Arch::DistilBert => distilbert::write_config(cfg),
            Arch::Electra => electra::write_config(cfg),
            Arch::Albert => albert::write_config(cfg),
            Arch::Lstm => lstm::write_config(cfg),
        }
    }
}
