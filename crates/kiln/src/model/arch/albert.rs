//! ALBERT (transformers `models/albert/modeling_albert.py`): BERT's post-LN encoder made
//! smaller two ways. The embedding tables are `embedding_size` wide and
//! `encoder.embedding_hidden_mapping_in` maps them to the hidden width (always, even when the
//! widths are equal); and the layers share weights: `num_hidden_layers` layers run
//! `num_hidden_groups` groups of `inner_group_num` blocks, layer `i` running group
//! `⌊i / (layers / groups)⌋` (all its blocks, in order). Kiln stores each block once and maps
//! the layers onto them ([`ModelConfig::layer_blocks`]); a shared block's gradients sum over its
//! layers. The pooler is a plain `albert.pooler` (tanh); the masked-LM head is `predictions.*`
//! with `hidden_act`; there is no dropout after the feed-forward output.

use super::{Classes, MlmNames, NameTable, PoolerActivation, PoolerNames, QkvNames};
use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use std::path::Path;

/// ALBERT's tensor names.
pub const NAMES: NameTable = NameTable {
    base_prefix: "albert.",
    embeddings_project: Some("encoder.embedding_hidden_mapping_in"),
    always_project: true,
    layer: "encoder.albert_layer_groups.",
    inner_layer: Some("albert_layers."),
    qkv: QkvNames::Separate(["attention.query", "attention.key", "attention.value"]),
    attn_out: "attention.dense",
    ln_attn: "attention.LayerNorm",
    ffn_in: "ffn",
    ffn_out: "ffn_output",
    ln_ffn: "full_layer_layer_norm",
    pooler: Some(PoolerNames {
        module: "pooler",
        in_base: true,
        activation: PoolerActivation::Tanh,
        dropout_before: false,
    }),
    mlm: Some(MlmNames {
        transform: "predictions.dense",
        norm: "predictions.LayerNorm",
        decoder: "predictions.decoder.weight",
        bias: "predictions.bias",
        gelu: false,
    }),
    rtd: None,
    heads: ["classifier", "classifier", "qa_outputs"],
    classes: Classes {
        base: "AlbertModel",
        pretraining: "AlbertForMaskedLM",
        sequence: Some("AlbertForSequenceClassification"),
        token: Some("AlbertForTokenClassification"),
        span: Some("AlbertForQuestionAnswering"),
        rtd: None,
    },
    ..super::bert::NAMES
};

/// `AlbertConfig`'s defaults where they differ from BERT's (for keys a config.json leaves out).
fn albert_defaults() -> Vec<(&'static str, serde_json::Value)> {
    vec![
        ("vocab_size", 30000.into()),
        ("embedding_size", 128.into()),
        ("hidden_size", 4096.into()),
        ("num_hidden_layers", 12.into()),
        ("num_hidden_groups", 1.into()),
        ("num_attention_heads", 64.into()),
        ("intermediate_size", 16384.into()),
        ("inner_group_num", 1.into()),
        ("hidden_act", "gelu_new".into()),
        ("hidden_dropout_prob", 0.0.into()),
        ("attention_probs_dropout_prob", 0.0.into()),
        ("classifier_dropout_prob", 0.1.into()),
        ("pad_token_id", 0.into()),
        ("bos_token_id", 2.into()),
        ("eos_token_id", 3.into()),
    ]
}

/// The block each layer runs: layer `i` runs group `⌊i / (layers / groups)⌋` (transformers
/// divides in floating point), whose `inner` blocks run in order; `num_layers` counts them all.
fn layer_blocks(layers: usize, groups: usize, inner: usize) -> Vec<usize> {
    let per = layers as f64 / groups as f64;
    (0..layers)
        .flat_map(|i| {
            let g = (i as f64 / per) as usize;
            (0..inner).map(move |j| g * inner + j)
        })
        .collect()
}

pub(crate) fn parse_config(mut raw: serde_json::Value, path: &Path) -> Result<ModelConfig> {
    if let Some(o) = raw.as_object_mut() {
        for (k, v) in albert_defaults() {
            if o.get(k).is_none_or(|x| x.is_null()) {
                o.insert(k.to_string(), v);
            }
        }
    }
    let get = |k: &str| raw[k].as_u64().unwrap_or(0) as usize;
    let (layers, groups, inner, e) = (
        get("num_hidden_layers"),
        get("num_hidden_groups"),
        get("inner_group_num"),
        get("embedding_size"),
    );
    let bad = |field: &str, msg: String| Error::Config {
        path: path.to_path_buf(),
        field: field.into(),
        msg,
    };
    if groups == 0 || groups > layers.max(1) {
        return Err(bad(
            "num_hidden_groups",
            format!("{groups}: must be between 1 and num_hidden_layers ({layers})"),
        ));
    }
    if inner == 0 {
        return Err(bad("inner_group_num", "must be positive".into()));
    }
    if e == 0 {
        return Err(bad("embedding_size", "must be positive".into()));
    }
    let mut c = super::bert::parse_as(raw, path, super::Arch::Albert)?;
    let get = |k: &str| c.raw[k].as_u64().map(|v| v as u32);
    c.bos_token_id = get("bos_token_id");
    c.eos_token_id = get("eos_token_id");
    c.embedding_size = e;
    let map = layer_blocks(layers, groups, inner);
    c.num_layers = map.len();
    // One block per layer needs no map (and stays editable layer by layer).
    c.layer_blocks = if map.iter().enumerate().all(|(l, &b)| l == b) {
        Vec::new()
    } else {
        map
    };
    Ok(c)
}

pub(crate) fn write_config(cfg: &ModelConfig) -> serde_json::Value {
    let mut v = super::bert::write_as(cfg);
    v["model_type"] = "albert".into();
    v["embedding_size"] = cfg.embedding_size.into();
    v["bos_token_id"] = cfg.bos_token_id.into();
    v["eos_token_id"] = cfg.eos_token_id.into();
    if cfg.layer_blocks.is_empty() {
        v["num_hidden_layers"] = cfg.num_layers.into();
        v["num_hidden_groups"] = cfg.num_layers.into();
        v["inner_group_num"] = 1.into();
    } else {
        let inner = cfg.raw["inner_group_num"].as_u64().unwrap_or(1).max(1) as usize;
        v["num_hidden_layers"] = (cfg.num_layers / inner).into();
    }
    v
}

#[cfg(test)]
mod tests {
    use super::layer_blocks;

    #[test]
    fn layers_map_onto_groups_as_transformers_does() {
        assert_eq!(layer_blocks(3, 1, 1), vec![0, 0, 0]);
        assert_eq!(layer_blocks(4, 2, 1), vec![0, 0, 1, 1]);
        assert_eq!(layer_blocks(4, 2, 2), vec![0, 1, 0, 1, 2, 3, 2, 3]);
        // 3 / 2 = 1.5 layers per group: layers 0 and 1 run group 0, layer 2 group 1.
        assert_eq!(layer_blocks(3, 2, 1), vec![0, 0, 1]);
        assert_eq!(layer_blocks(2, 2, 1), vec![0, 1]);
    }
}
