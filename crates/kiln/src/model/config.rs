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
    /// Width of the embedding tables (ELECTRA's and ALBERT's `embedding_size`), projected to
    /// `hidden_size` before the first block when it differs.
    pub embedding_size: usize,
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
    /// Heads removed from each pruned block, by their index in the unpruned block
    /// (`config.json`'s `pruned_heads`, as transformers 4 wrote it); empty for an unpruned model.
    pub pruned_heads: std::collections::BTreeMap<usize, Vec<usize>>,
    /// Feed-forward width of each block when pruning made them differ
    /// (`kiln_intermediate_sizes`); empty: every block has `intermediate_size`.
    pub intermediate_sizes: Vec<usize>,
    /// Rows of the position table before position 0 (RoBERTa: `pad_token_id + 1`, which
    /// transformers' position ids skip); `max_positions` counts the rows after them.
    pub position_offset: usize,
    /// The stored block each of the `num_layers` layers runs, when layers share weights
    /// (ALBERT: every layer runs one block); empty: layer `l` runs block `l`.
    pub layer_blocks: Vec<usize>,
    /// An LSTM backbone's shape (`kiln_lstm`), which runs in place of the attention blocks
    /// (`num_layers` is then 0 and `hidden_size` the width of its bidirectional output).
    pub lstm: Option<super::lstm::LstmShape>,
    /// The original config.json, written back on save so no field is lost.
    pub raw: serde_json::Value,
}

impl ModelConfig {
    /// Rows of the position embedding table.
    pub fn position_rows(&self) -> usize {
        self.max_positions + self.position_offset
    }

    /// The position-table rows of a batch's positions (shifted past RoBERTa's skipped rows).
    pub fn position_ids<'a>(&self, positions: &'a [u32]) -> std::borrow::Cow<'a, [u32]> {
        if self.position_offset == 0 {
            return positions.into();
        }
        let o = self.position_offset as u32;
        positions.iter().map(|&p| p + o).collect::<Vec<_>>().into()
    }

    /// The token-type rows of a batch's segment ids: as given, or all row 0 for a model with a
    /// single type (RoBERTa, whose tokenizer marks no segments: a sentence pair or an encoder's
    /// generated target is segment 0 there, as transformers computes it).
    pub fn type_ids<'a>(&self, types: &'a [u32]) -> std::borrow::Cow<'a, [u32]> {
        if self.type_vocab_size == 1 && types.iter().any(|&t| t != 0) {
            return vec![0; types.len()].into();
        }
        types.into()
    }

    /// The stored block layer `l` runs.
    pub fn block_of(&self, l: usize) -> usize {
        self.layer_blocks.get(l).copied().unwrap_or(l)
    }

    /// Blocks stored (fewer than `num_layers` when layers share them).
    pub fn num_blocks(&self) -> usize {
        match self.layer_blocks.iter().max() {
            Some(&m) => m + 1,
            None => self.num_layers,
        }
    }

    /// Whether several layers run the same block (ALBERT).
    pub fn shares_layers(&self) -> bool {
        self.num_blocks() != self.num_layers
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// Attention heads of block `layer` (fewer than `num_heads` once pruned).
    pub fn heads_at(&self, layer: usize) -> usize {
        self.num_heads - self.pruned_heads.get(&layer).map_or(0, Vec::len)
    }

    /// Width of block `layer`'s attention (its heads × head width): the rows of each of its
    /// query, key and value projections.
    pub fn attention_width_at(&self, layer: usize) -> usize {
        self.heads_at(layer) * self.head_dim()
    }

    /// Feed-forward width of block `layer`.
    pub fn intermediate_at(&self, layer: usize) -> usize {
        self.intermediate_sizes
            .get(layer)
            .copied()
            .unwrap_or(self.intermediate_size)
    }

    /// Whether some block has fewer heads or feed-forward neurons than the config's sizes.
    pub fn is_pruned(&self) -> bool {
        !self.pruned_heads.is_empty() || !self.intermediate_sizes.is_empty()
    }

    /// Keeps the blocks `layers` (increasing indices), carrying their pruned sizes along.
    pub fn keep_layers(&mut self, layers: &[usize]) {
        self.pruned_heads = layers
            .iter()
            .enumerate()
            .filter_map(|(new, old)| self.pruned_heads.get(old).map(|h| (new, h.clone())))
            .collect();
        if !self.intermediate_sizes.is_empty() {
            self.intermediate_sizes = layers.iter().map(|&l| self.intermediate_at(l)).collect();
        }
        self.num_layers = layers.len();
    }

    /// Parameters of the base model (embeddings, blocks, norms), without task heads; in u128
    /// so absurd sizes are counted rather than overflowed.
    pub fn parameter_count(&self) -> u128 {
        if let Some(l) = &self.lstm {
            return (self.vocab_size * self.embedding_size) as u128 + l.parameter_count();
        }
        let h = self.hidden_size as u128;
        let e = self.embedding_size as u128;
        let project = if self.embedding_size != self.hidden_size || self.arch.names().always_project
        {
            e * h + h
        } else {
            0
        };
        let embeddings = (self.vocab_size + self.position_rows() + self.type_vocab_size) as u128
            * e
            + if self.embedding_norm { 2 * e } else { 0 }
            + project;
        // q, k, v (w wide) and output projections, both FFN linears, two norms, with biases;
        // a block shared by several layers counts once.
        let blocks: u128 = (0..self.num_blocks())
            .map(|l| {
                let (w, i) = (
                    self.attention_width_at(l) as u128,
                    self.intermediate_at(l) as u128,
                );
                3 * (w * h + w) + (w * h + h) + (h * i + i) + (i * h + h) + 4 * h
            })
            .sum();
        embeddings + blocks + if self.final_norm { 2 * h } else { 0 }
    }

    /// Reads the pruned sizes (`pruned_heads`, `kiln_intermediate_sizes`) from `raw`.
    fn read_pruned(&mut self, path: &Path) -> Result<()> {
        let bad = |field: &str, msg: String| Error::Config {
            path: PathBuf::from(path),
            field: field.into(),
            msg,
        };
        if let Some(ph) = self.raw.get("pruned_heads").filter(|v| !v.is_null()) {
            let map = ph.as_object().ok_or_else(|| {
                bad(
                    "pruned_heads",
                    "expected an object of layer -> list of head indices".into(),
                )
            })?;
            for (layer, heads) in map {
                let l: usize = layer
                    .parse()
                    .ok()
                    .filter(|&l| l < self.num_layers)
                    .ok_or_else(|| {
                        bad(
                            "pruned_heads",
                            format!(
                                "\"{layer}\" is not a layer of this {}-layer model",
                                self.num_layers
                            ),
                        )
                    })?;
                let mut list: Vec<usize> = heads
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|h| h.as_u64().map(|h| h as usize))
                            .collect()
                    })
                    .unwrap_or_default();
                list.sort_unstable();
                list.dedup();
                if list.iter().any(|&h| h >= self.num_heads) || list.len() >= self.num_heads {
                    return Err(bad(
                        &format!("pruned_heads.{layer}"),
                        format!(
                            "{heads}: head indices must be below {} and leave at least one head",
                            self.num_heads
                        ),
                    ));
                }
                if !list.is_empty() {
                    self.pruned_heads.insert(l, list);
                }
            }
        }
        if let Some(sizes) = self
            .raw
            .get("kiln_intermediate_sizes")
            .filter(|v| !v.is_null())
        {
            let list: Vec<usize> = sizes
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_u64().map(|v| v as usize))
                        .collect()
                })
                .unwrap_or_default();
            if list.len() != self.num_layers || list.contains(&0) {
                return Err(bad(
                    "kiln_intermediate_sizes",
                    format!(
                        "{sizes}: expected {} positive feed-forward widths, one per layer",
                        self.num_layers
                    ),
                ));
            }
            if list.iter().any(|&i| i != self.intermediate_size) {
                self.intermediate_sizes = list;
            }
        }
        Ok(())
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
        let mut cfg = arch.parse_config(raw, path)?;
        cfg.validate(path)?;
        cfg.read_pruned(path)?;
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
        if self.lstm.is_some() {
            // The LSTM's sizes were checked when its config was read; it has no attention.
            return Ok(());
        }
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
        let mut v = self.arch.write_config(self);
        if let Some(o) = v.as_object_mut() {
            o.remove("pruned_heads");
            o.remove("kiln_intermediate_sizes");
            if !self.pruned_heads.is_empty() {
                let map: serde_json::Map<String, serde_json::Value> = self
                    .pruned_heads
                    .iter()
                    .map(|(l, h)| (l.to_string(), serde_json::json!(h)))
                    .collect();
                o.insert("pruned_heads".into(), map.into());
            }
            if !self.intermediate_sizes.is_empty() {
                o.insert(
                    "kiln_intermediate_sizes".into(),
                    serde_json::json!(self.intermediate_sizes),
                );
            }
        }
        v
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
