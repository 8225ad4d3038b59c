//! Structured pruning: a pruned model computes what the unpruned one computes with those heads
//! and neurons masked (in Kiln and in transformers), round-trips through its config, pads back
//! to the dense shape unchanged, decodes with its KV cache, fine-tunes with its structure kept;
//! importance from data is the mask gradient.

mod common;

use common::*;
use kiln::checkpoint::{self, Pretrained};
use kiln::compress::prune::{
    data_scores, densify, keep_heads, keep_neurons, magnitude_scores, prune, PruneOptions,
};
use kiln::infer::classify::sequence_logits;
use kiln::model::Batch;
use kiln::train::classify::{encode_examples, evaluate_examples, read_data, Fields};
use kiln::train::{FinetuneConfig, TrainConfig};
use std::path::PathBuf;

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-prune-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn logits(p: &Pretrained, ids: &[u32]) -> Vec<f32> {
    sequence_logits(p, &Batch::packed(&[(ids, None)]).unwrap()).unwrap()
}

/// `{"layer": [indices]}` of the fixture as (layer, indices).
fn per_layer(v: &serde_json::Value) -> Vec<(usize, Vec<usize>)> {
    v.as_object()
        .unwrap()
        .iter()
        .map(|(l, xs)| {
            (
                l.parse().unwrap(),
                xs.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as usize)
                    .collect(),
            )
        })
        .collect()
}

/// Cuts the fixture's heads and neurons out of `p`.
fn cut(p: &mut Pretrained, fx: &serde_json::Value) {
    let (heads, inter) = (p.config().num_heads, p.config().intermediate_size);
    for (l, gone) in per_layer(&fx["pruned_heads"]) {
        let keep: Vec<usize> = (0..heads).filter(|h| !gone.contains(h)).collect();
        keep_heads(p, l, &keep).unwrap();
    }
    for (l, gone) in per_layer(&fx["pruned_neurons"]) {
        let keep: Vec<usize> = (0..inter).filter(|i| !gone.contains(i)).collect();
        keep_neurons(p, l, &keep).unwrap();
    }
}

/// Zeroes the fixture's heads' attention-output columns and neurons' output columns: a mask.
fn mask(p: &mut Pretrained, fx: &serde_json::Value) {
    let (h, d, inter) = (
        p.config().hidden_size,
        p.config().head_dim(),
        p.config().intermediate_size,
    );
    for (l, gone) in per_layer(&fx["pruned_heads"]) {
        let w = p.model.blocks[l].attn_out.weight.data_mut();
        for r in 0..h {
            for &g in &gone {
                w[r * h + g * d..r * h + (g + 1) * d].fill(0.0);
            }
        }
        p.model.blocks[l].attn_out.weights_changed();
    }
    for (l, gone) in per_layer(&fx["pruned_neurons"]) {
        let w = p.model.blocks[l].ffn_out.weight.data_mut();
        for r in 0..h {
            for &g in &gone {
                w[r * inter + g] = 0.0;
            }
        }
        p.model.blocks[l].ffn_out.weights_changed();
    }
}

#[test]
fn a_pruned_model_computes_what_the_masked_one_does_in_kiln_and_transformers() {
    let fx = json(&fixture("prune-expected.json"));
    let mut pruned = checkpoint::load(&fixture("tiny-bert-cls")).unwrap();
    cut(&mut pruned, &fx);
    let mut masked = checkpoint::load(&fixture("tiny-bert-cls")).unwrap();
    mask(&mut masked, &fx);
    assert_eq!(pruned.model.blocks[0].qkv.out_features(), 3 * 64);
    assert_eq!(pruned.model.blocks[2].attn_out.in_features(), 32);
    assert_eq!(pruned.config().intermediate_sizes, [100, 150, 197]);
    let dir = scratch("parity");
    checkpoint::save(&pruned, &dir.join("pruned"), checkpoint::SaveDtype::F32).unwrap();
    let reloaded = checkpoint::load(&dir.join("pruned")).unwrap();
    let config = json(&dir.join("pruned/config.json"));
    assert_eq!(config["pruned_heads"], fx["pruned_heads"]);
    assert_eq!(
        config["kiln_intermediate_sizes"],
        serde_json::json!([100, 150, 197])
    );
    let mut dense = checkpoint::load(&dir.join("pruned")).unwrap();
    densify(&mut dense).unwrap();
    checkpoint::save(&dense, &dir.join("dense"), checkpoint::SaveDtype::F32).unwrap();
    let dense_config = json(&dir.join("dense/config.json"));
    assert!(dense_config.get("pruned_heads").is_none());
    assert!(dense_config.get("kiln_intermediate_sizes").is_none());
    let dense = checkpoint::load(&dir.join("dense")).unwrap();
    assert!(!dense.config().is_pruned());
    assert_eq!(dense.model.blocks[2].attn_out.in_features(), 96);
    for case in fx["cases"].as_array().unwrap() {
        let ids = common::ids(&case["ids"]);
        let want = floats(&case["logits"]);
        let got = logits(&pruned, &ids);
        assert!(
            max_diff(&got, &want) < PARITY_ATOL,
            "{got:?} vs transformers {want:?}"
        );
        assert!(max_diff(&got, &logits(&masked, &ids)) < 1e-5);
        assert_eq!(got, logits(&reloaded, &ids), "save/load round trip");
        assert!(max_diff(&got, &logits(&dense, &ids)) < 1e-5, "dense");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_pruned_decoder_gives_the_same_states_with_its_kv_cache() {
    let mut p = checkpoint::load(&fixture("tiny-gpt2")).unwrap();
    let scores = magnitude_scores(&p).unwrap();
    let r = prune(
        &mut p,
        &scores,
        &PruneOptions {
            heads: 0.4,
            ffn: 0.3,
            drop_layers: vec![],
        },
    )
    .unwrap();
    assert_eq!(r.heads.iter().sum::<usize>(), 9 - 4);
    assert!(r.parameters.1 < r.parameters.0);
    let ids = [5u32, 17, 33, 2, 9, 41];
    let mask = p.model.default_mask();
    let whole = p
        .model
        .forward(&Batch::packed(&[(&ids, None)]).unwrap(), mask, None)
        .unwrap();
    let mut caches = vec![p.model.new_cache()];
    let h = p.config().hidden_size;
    for (i, &id) in ids.iter().enumerate() {
        let mut b = Batch::packed(&[(&[id][..], None)]).unwrap();
        b.positions = vec![i as u32];
        let step = p.model.forward(&b, mask, Some(&mut caches)).unwrap();
        let d = max_diff(step.data(), &whole.data()[i * h..(i + 1) * h]);
        assert!(d < 1e-5, "token {i}: {d}");
    }
}

#[test]
fn importance_from_data_is_the_gradient_of_a_head_or_neuron_mask() {
    let dir = scratch("importance");
    let data = dir.join("data.jsonl");
    let lines: Vec<String> = (0..8)
        .map(|i| {
            let label = ["neg", "neutral", "pos"][i % 3];
            serde_json::json!({"text": format!("every {i} model reads water"), "label": label})
                .to_string()
        })
        .collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    let records = read_data(&data, false).unwrap().records;
    let cfg = FinetuneConfig {
        train_file: data.clone(),
        train: TrainConfig {
            batch_size: 8,
            ..TrainConfig::default()
        },
        ..FinetuneConfig::default()
    };
    let mut p = checkpoint::load(&fixture("tiny-bert-cls")).unwrap();
    let scores = data_scores(&mut p, &cfg, &records, 8).unwrap();
    assert_eq!(scores.heads.len(), 3);
    assert_eq!(scores.neurons[1].len(), 200);
    // The loss with a head's (or neuron's) output scaled by m, around m = 1.
    let labels = p.task.as_ref().unwrap().labels.clone();
    let fields = Fields::resolve(None, None, "label", None);
    let ex = encode_examples(p.tokenizer().unwrap(), &records, &fields, Some(&labels), 64).unwrap();
    let loss_at = |m: f32, head: bool| {
        let mut q = checkpoint::load(&fixture("tiny-bert-cls")).unwrap();
        let (h, d) = (q.config().hidden_size, q.config().head_dim());
        let b = &mut q.model.blocks[1];
        if head {
            let w = b.attn_out.weight.data_mut();
            for r in 0..h {
                w[r * h + 2 * d..r * h + 3 * d]
                    .iter_mut()
                    .for_each(|v| *v *= m);
            }
            b.attn_out.weights_changed();
        } else {
            let w = b.ffn_out.weight.data_mut();
            for r in 0..h {
                w[r * 200 + 7] *= m;
            }
            b.ffn_out.weights_changed();
        }
        evaluate_examples(&q, &ex).unwrap()["valid_loss"]
            .as_f64()
            .unwrap()
    };
    for (head, score) in [(true, scores.heads[1][2]), (false, scores.neurons[1][7])] {
        let eps = 1e-2;
        let numeric =
            ((loss_at(1.0 + eps, head) - loss_at(1.0 - eps, head)) / (2.0 * eps as f64)).abs();
        assert!(
            (numeric - score).abs() < 2e-3 * numeric.max(1e-3) + 1e-5,
            "{}: mask gradient {score} vs numeric {numeric}",
            if head { "head" } else { "neuron" }
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// `kiln prune` (magnitude importance) then `kiln convert --dense`, as the fixture script ran
/// them with the binary: transformers loaded that directory, and its logits are the ones the
/// pruned and the dense model give in Kiln.
#[test]
fn transformers_loads_a_dense_converted_pruned_model_with_the_same_outputs() {
    let fx = json(&fixture("prune-expected.json"));
    let want = &fx["kiln_dense"];
    let flags: Vec<&str> = want["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        flags,
        [
            "--heads",
            "0.34",
            "--ffn",
            "0.5",
            "--drop-layers",
            "1",
            "--importance",
            "magnitude"
        ],
        "the options below are these flags"
    );
    let mut p = checkpoint::load(&fixture("tiny-bert-cls")).unwrap();
    let scores = magnitude_scores(&p).unwrap();
    let opts = PruneOptions {
        heads: 0.34,
        ffn: 0.5,
        drop_layers: vec![1],
    };
    prune(&mut p, &scores, &opts).unwrap();
    let dir = scratch("transformers-dense");
    checkpoint::save(&p, &dir.join("pruned"), checkpoint::SaveDtype::F32).unwrap();
    let mut dense = checkpoint::load(&dir.join("pruned")).unwrap();
    densify(&mut dense).unwrap();
    checkpoint::save(&dense, &dir.join("dense"), checkpoint::SaveDtype::F32).unwrap();
    let dense = checkpoint::load(&dir.join("dense")).unwrap();
    assert_eq!(
        dense.config().num_layers as u64,
        want["layers"].as_u64().unwrap()
    );
    for case in want["cases"].as_array().unwrap() {
        let ids = common::ids(&case["ids"]);
        let hf = floats(&case["logits"]);
        for (what, m) in [("pruned", &p), ("dense", &dense)] {
            let got = logits(m, &ids);
            assert!(
                max_diff(&got, &hf) < PARITY_ATOL,
                "{what}: {got:?} vs transformers on Kiln's dense directory {hf:?}"
            );
        }
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_pruned_model_fine_tunes_and_prunes_again_keeping_its_structure() {
    let dir = scratch("finetune");
    let mut p = checkpoint::load(&fixture("tiny-bert-cls")).unwrap();
    let scores = magnitude_scores(&p).unwrap();
    prune(
        &mut p,
        &scores,
        &PruneOptions {
            heads: 0.34,
            ffn: 0.5,
            drop_layers: vec![1],
        },
    )
    .unwrap();
    assert_eq!(p.config().num_layers, 2);
    let heads: Vec<usize> = (0..2).map(|l| p.config().heads_at(l)).collect();
    assert_eq!(
        heads.iter().sum::<usize>(),
        4,
        "6 heads after dropping a layer, 2 removed"
    );
    let pruned = dir.join("pruned");
    checkpoint::save(&p, &pruned, checkpoint::SaveDtype::F32).unwrap();
    // Recovery training: finetune keeps the per-layer sizes.
    let data = dir.join("data.jsonl");
    let lines: Vec<String> = (0..16)
        .map(|i| {
            let label = ["neg", "pos"][i % 2];
            serde_json::json!({"text": format!("model {i} reads"), "label": label}).to_string()
        })
        .collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    let cfg = FinetuneConfig {
        train_file: data.clone(),
        labels: None,
        train: TrainConfig {
            batch_size: 8,
            max_steps: Some(3),
            ..TrainConfig::default()
        },
        ..FinetuneConfig::default()
    };
    let out = dir.join("recovered");
    run_finetune(&pruned, &out, &cfg, false).unwrap();
    let q = checkpoint::load(&out).unwrap();
    assert_eq!(
        (0..2).map(|l| q.config().heads_at(l)).collect::<Vec<_>>(),
        heads
    );
    assert_eq!(q.config().intermediate_sizes, p.config().intermediate_sizes);
    // Pruned again: the removed heads are recorded by their index in the original layer.
    let mut again = checkpoint::load(&out).unwrap();
    let before = again.config().pruned_heads.clone();
    let keep = vec![0];
    let l = (0..2).find(|&l| again.config().heads_at(l) >= 2).unwrap();
    keep_heads(&mut again, l, &keep).unwrap();
    let gone = &again.config().pruned_heads[&l];
    assert_eq!(gone.len(), 2);
    assert!(before
        .get(&l)
        .is_none_or(|b| b.iter().all(|h| gone.contains(h))));
    std::fs::remove_dir_all(dir).unwrap();
}

/// Sixteen labelled sentences and a fine-tuning config of `steps` steps pruning to `sparsity`.
fn sparse_run(
    dir: &std::path::Path,
    steps: u64,
    sparsity: f32,
    method: &str,
    scope: &str,
) -> FinetuneConfig {
    let data = dir.join("data.jsonl");
    let lines: Vec<String> = (0..16)
        .map(|i| {
            let label = ["neg", "pos"][i % 2];
            serde_json::json!({"text": format!("model {i} reads water"), "label": label})
                .to_string()
        })
        .collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    FinetuneConfig {
        train_file: data,
        train: TrainConfig {
            batch_size: 8,
            max_steps: Some(steps),
            save_every: 10,
            keep_last: 10,
            lr: 1e-3,
            sparsity: kiln::compress::sparsity::SparsityConfig {
                prune_to: Some(sparsity),
                prune_method: method.into(),
                prune_start: Some(0),
                prune_end: Some(20),
                prune_scope: scope.into(),
            },
            ..TrainConfig::default()
        },
        ..FinetuneConfig::default()
    }
}

/// Zero positions of every block linear weight.
fn zeros(p: &Pretrained) -> Vec<Vec<bool>> {
    p.model
        .blocks
        .iter()
        .flat_map(|b| [&b.qkv, &b.attn_out, &b.ffn_in, &b.ffn_out])
        .map(|l| l.weight.data().iter().map(|&v| v == 0.0).collect())
        .collect()
}

#[test]
fn unstructured_pruning_reaches_its_sparsity_and_pruned_weights_stay_zero() {
    let dir = scratch("sparse");
    for (method, scope) in [("magnitude", "global"), ("movement", "layer")] {
        let cfg = sparse_run(&dir, 30, 0.6, method, scope);
        let out = dir.join(format!("{method}-{scope}"));
        run_finetune(&fixture("tiny-bert-cls"), &out, &cfg, false).unwrap();
        let mut last = checkpoint::load(&out).unwrap();
        let (per_layer, overall) = kiln::compress::sparsity::sparsity(&mut last);
        assert!((overall - 0.6).abs() < 0.005, "{method}: {overall}");
        if scope == "layer" {
            for (name, s) in &per_layer {
                assert!((s - 0.6).abs() < 0.005, "{name}: {s}");
            }
        }
        // Reached at step 20; the ten steps after it train the rest and keep the zeros.
        let at20 = checkpoint::load(&out.join("checkpoint-20")).unwrap();
        assert_eq!(
            zeros(&at20),
            zeros(&last),
            "{method}: the mask changed after step 20"
        );
        let at10 = checkpoint::load(&out.join("checkpoint-10")).unwrap();
        let (z10, z20) = (zeros(&at10), zeros(&at20));
        let count = |z: &[Vec<bool>]| z.iter().flatten().filter(|&&b| b).count();
        assert!(count(&z10) < count(&z20), "the mask grows on the schedule");
        for (a, b) in z10.iter().flatten().zip(z20.iter().flatten()) {
            assert!(!a || *b, "a pruned weight came back");
        }
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn resumed_movement_pruning_is_bit_identical() {
    let dir = scratch("sparse-resume");
    let cfg = sparse_run(&dir, 30, 0.5, "movement", "global");
    let full = dir.join("full");
    run_finetune(&fixture("tiny-bert-cls"), &full, &cfg, false).unwrap();
    let part = dir.join("part");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let s = kiln::train::finetune(
        &fixture("tiny-bert-cls"),
        &part,
        &cfg,
        false,
        &stop,
        |_| {},
        |p| {
            if p.step == 15 {
                stop.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        },
    )
    .unwrap();
    assert!(s.interrupted);
    run_finetune(&fixture("tiny-bert-cls"), &part, &cfg, true).unwrap();
    assert_eq!(
        checkpoint::named_tensors(&checkpoint::load(&full.join("checkpoint-30")).unwrap()).unwrap(),
        checkpoint::named_tensors(&checkpoint::load(&part.join("checkpoint-30")).unwrap()).unwrap(),
    );
    std::fs::remove_dir_all(dir).unwrap();
}
