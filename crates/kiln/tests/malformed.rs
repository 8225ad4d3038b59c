//! Bad model directories give errors that name the file and the tensor or field at fault.

mod common;

use common::*;
use kiln::checkpoint::{self, weights::write_safetensors, SaveDtype, WeightStore};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A scratch copy of the tiny BERT fixture.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-bad-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture("tiny-bert").join(f), dir.join(f)).unwrap();
    }
    dir
}

fn load_err(dir: &Path) -> String {
    let msg = match checkpoint::load(dir) {
        Ok(_) => panic!("{} loaded but should not have", dir.display()),
        Err(e) => e.to_string(),
    };
    if dir.starts_with(std::env::temp_dir()) {
        let _ = std::fs::remove_dir_all(dir);
    }
    msg
}

fn rewrite_tensors(dir: &Path, edit: impl FnOnce(&mut BTreeMap<String, kiln::engine::Tensor>)) {
    let store = WeightStore::open_dir(dir).unwrap();
    let mut t: BTreeMap<_, _> = store
        .names()
        .into_iter()
        .map(|n| (n.clone(), store.get(&n).unwrap()))
        .collect();
    drop(store);
    edit(&mut t);
    write_safetensors(&dir.join("model.safetensors"), &t, SaveDtype::F32).unwrap();
}

#[test]
fn missing_directory_and_files() {
    let msg = load_err(Path::new("/nonexistent/kiln-model"));
    assert!(
        msg.contains("/nonexistent/kiln-model") && msg.contains("config.json"),
        "{msg}"
    );

    let dir = scratch("noconfig");
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let msg = load_err(&dir);
    assert!(
        msg.contains("missing file") && msg.contains("config.json"),
        "{msg}"
    );

    let dir = scratch("noweights");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let msg = load_err(&dir);
    assert!(
        msg.contains("model.safetensors") && msg.contains("model.safetensors.index.json"),
        "{msg}"
    );
}

#[test]
fn invalid_json_names_the_file() {
    let dir = scratch("badjson");
    std::fs::write(dir.join("config.json"), "{\"model_type\": \"bert\", ").unwrap();
    let msg = load_err(&dir);
    assert!(
        msg.contains("invalid JSON") && msg.contains("config.json"),
        "{msg}"
    );
}

#[test]
fn unknown_model_type_lists_supported_ones() {
    let dir = scratch("unknowntype");
    let mut cfg = json(&dir.join("config.json"));
    cfg["model_type"] = "llama".into();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let msg = load_err(&dir);
    assert!(
        msg.contains("\"llama\"")
            && msg.contains("config.json")
            && msg.contains("bert, roberta, xlm-roberta, distilbert, electra, albert, gpt2"),
        "{msg}"
    );
}

#[test]
fn bad_config_value_names_the_field() {
    let dir = scratch("badfield");
    let mut cfg = json(&dir.join("config.json"));
    cfg["hidden_size"] = "ninety-six".into();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let msg = load_err(&dir);
    assert!(
        msg.contains("hidden_size") && msg.contains("config.json"),
        "{msg}"
    );

    let dir = scratch("badheads");
    let mut cfg = json(&fixture("tiny-bert").join("config.json"));
    cfg["num_attention_heads"] = 5.into();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let msg = load_err(&dir);
    assert!(
        msg.contains("num_attention_heads") && msg.contains("not divisible"),
        "{msg}"
    );
}

#[test]
fn missing_tensor_is_named() {
    let dir = scratch("missingtensor");
    rewrite_tensors(&dir, |t| {
        t.remove("bert.encoder.layer.1.attention.self.key.weight");
    });
    let msg = load_err(&dir);
    assert!(
        msg.contains("bert.encoder.layer.1.attention.self.key.weight")
            && msg.contains("model.safetensors"),
        "{msg}"
    );
}

#[test]
fn misshaped_tensor_is_named_with_both_shapes() {
    let dir = scratch("badshape");
    rewrite_tensors(&dir, |t| {
        t.insert(
            "bert.encoder.layer.0.intermediate.dense.weight".into(),
            kiln::engine::Tensor::zeros(&[199, 96]),
        );
    });
    let msg = load_err(&dir);
    assert!(
        msg.contains("bert.encoder.layer.0.intermediate.dense.weight")
            && msg.contains("[199, 96]")
            && msg.contains("[200, 96]"),
        "{msg}"
    );
}

#[test]
fn truncated_and_corrupt_safetensors() {
    let dir = scratch("truncated");
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let msg = load_err(&dir);
    assert!(
        msg.contains("corrupt safetensors")
            && msg.contains("model.safetensors")
            && msg.contains("truncated"),
        "{msg}"
    );

    let dir = scratch("garbage");
    std::fs::write(
        dir.join("model.safetensors"),
        b"this is not a safetensors file at all",
    )
    .unwrap();
    let msg = load_err(&dir);
    assert!(
        msg.contains("corrupt safetensors") && msg.contains("model.safetensors"),
        "{msg}"
    );
    // In words, not the safetensors crate's enum names.
    assert!(msg.contains("header too large"), "{msg}");
}

#[test]
fn non_finite_weights_are_refused_naming_the_tensor() {
    for bad in [f32::NAN, f32::INFINITY] {
        let dir = scratch("nan");
        rewrite_tensors(&dir, |t| {
            let name = "bert.encoder.layer.2.output.dense.weight";
            let mut w = t[name].data().to_vec();
            w[7] = bad;
            t.insert(
                name.into(),
                kiln::engine::Tensor::new(t[name].shape().to_vec(), w).unwrap(),
            );
        });
        let msg = load_err(&dir);
        assert!(
            msg.contains("bert.encoder.layer.2.output.dense.weight")
                && msg.contains("non-finite")
                && msg.contains("index 7"),
            "{msg}"
        );
    }
}

#[test]
fn unsupported_dtype_is_named() {
    // An int64 tensor where a float weight is expected.
    let store = WeightStore::open_dir(&fixture("tiny-bert-legacy")).unwrap();
    assert!(store.contains("bert.embeddings.position_ids"));
    let err = store
        .get("bert.embeddings.position_ids")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bert.embeddings.position_ids") && err.contains("I64"),
        "{err}"
    );
}

#[test]
fn a_config_with_fewer_layers_than_the_weights_is_refused() {
    let dir = scratch("fewer-layers");
    let path = dir.join("config.json");
    let mut cfg = json(&path);
    cfg["num_hidden_layers"] = 2.into();
    std::fs::write(&path, cfg.to_string()).unwrap();
    let msg = load_err(&dir);
    assert!(
        msg.contains("config.json")
            && msg.contains("bert.encoder.layer.2.*")
            && msg.contains("does not match"),
        "{msg}"
    );
    // Another task's head is not the model's own: it loads, listed as unused.
    let dir = scratch("other-head");
    rewrite_tensors(&dir, |t| {
        t.insert(
            "cls.seq_relationship.weight".into(),
            kiln::engine::Tensor::zeros(&[2, 96]),
        );
    });
    let p = checkpoint::load(&dir).unwrap();
    assert_eq!(p.unused_tensors, vec!["cls.seq_relationship.weight"]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_tokenizer_larger_than_the_vocabulary_is_refused_at_load() {
    let dir = scratch("big-tokenizer");
    let path = dir.join("tokenizer.json");
    let mut t = json(&path);
    for (i, w) in ["zebra", "yak"].iter().enumerate() {
        t["added_tokens"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({
                "id": 250 + i, "content": w, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": true, "special": false
            }));
    }
    std::fs::write(&path, t.to_string()).unwrap();
    let msg = load_err(&dir);
    assert!(
        msg.contains("252 tokens") && msg.contains("250 embeddings") && msg.contains("vocab_size"),
        "{msg}"
    );
}
