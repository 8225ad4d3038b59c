//! Sequence-classification parity with transformers (fixtures from
//! `tests/fixtures/make_cls_fixtures.py`): task heads load with their labels, logits match
//! `*ForSequenceClassification`, one training step's loss and every gradient match PyTorch, and
//! a saved classifier is the same checkpoint transformers wrote.

mod common;

use common::*;
use kiln::checkpoint::{self, Pretrained, SaveDtype, WeightStore};
use kiln::heads::HeadKind;
use kiln::infer::classify::sequence_logits;
use kiln::model::Batch;
use kiln::train::backprop::zeros_like;
use kiln::train::classify::sequence_loss;
use std::path::PathBuf;

/// The three fixture models: (key in cls-expected.json, directory, training fixture).
const MODELS: &[(&str, &str, &str)] = &[
    ("bert", "tiny-bert-cls", "bert_cls"),
    ("bert_reg", "tiny-bert-reg", "bert_reg"),
    ("gpt2", "tiny-gpt2-cls", "gpt2_cls"),
];

fn expected(key: &str) -> serde_json::Value {
    json(&fixture("cls-expected.json"))[key].clone()
}

/// Token ids and (when present) token type ids of an example in the fixture JSON.
fn encoding(e: &serde_json::Value) -> (Vec<u32>, Option<Vec<u32>>) {
    let types = e.get("token_type_ids").map(ids);
    (ids(&e["input_ids"]), types)
}

fn packed(encs: &[(Vec<u32>, Option<Vec<u32>>)]) -> Batch {
    let seqs: Vec<(&[u32], Option<&[u32]>)> =
        encs.iter().map(|(i, t)| (&i[..], t.as_deref())).collect();
    Batch::packed(&seqs).unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-cls-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn task_heads_load_with_their_kind_and_labels() {
    let p = checkpoint::load(&fixture("tiny-bert-cls")).unwrap();
    let t = p.task.as_ref().expect("tiny-bert-cls has a task head");
    assert_eq!(t.kind, HeadKind::Sequence);
    assert_eq!(t.labels.names, ["neg", "neutral", "pos"]);
    assert!(!t.labels.regression);
    assert_eq!(t.linear.out_features(), 3);
    assert!(t.linear.bias.is_some());
    assert_eq!(
        t.dropout, 0.2,
        "classifier_dropout overrides hidden_dropout_prob"
    );
    assert!(p.pooler.is_some() && p.mlm_head.is_none() && p.lm_head.is_none());
    assert!(p.unused_tensors.is_empty(), "{:?}", p.unused_tensors);

    let p = checkpoint::load(&fixture("tiny-bert-reg")).unwrap();
    let t = p.task.as_ref().expect("tiny-bert-reg has a task head");
    assert_eq!((t.kind, t.labels.regression), (HeadKind::Sequence, true));
    assert_eq!(t.labels.outputs(), 1);
    assert_eq!(t.dropout, 0.1, "no classifier_dropout: the hidden dropout");

    let p = checkpoint::load(&fixture("tiny-gpt2-cls")).unwrap();
    let t = p.task.as_ref().expect("tiny-gpt2-cls has a task head");
    assert_eq!(t.kind, HeadKind::Sequence);
    assert_eq!(t.labels.names, ["negative", "positive"]);
    assert!(!t.labels.regression);
    assert!(t.linear.bias.is_none(), "GPT-2's score has no bias");
    assert_eq!(t.dropout, 0.0);
    assert!(p.lm_head.is_none(), "a classifier has no LM head");
    assert!(p.unused_tensors.is_empty(), "{:?}", p.unused_tensors);
}

/// Logits of each example alone and of all examples packed into one batch, against
/// transformers running each example alone; Kiln's tokenizer gives the fixture's ids.
#[test]
fn logits_match_transformers() {
    for &(key, dir, _) in MODELS {
        let p = checkpoint::load(&fixture(dir)).unwrap();
        let exp = expected(key);
        assert_eq!(
            p.task.as_ref().unwrap().labels.names,
            exp["labels"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l.as_str().unwrap())
                .collect::<Vec<_>>()
        );
        let examples = exp["examples"].as_array().unwrap();
        let tok = p.tokenizer().unwrap();
        let encs: Vec<_> = examples.iter().map(encoding).collect();
        let mut want = Vec::new();
        let mut worst = 0.0f32;
        for (e, enc) in examples.iter().zip(&encs) {
            let got = tok
                .encode(e["text"].as_str().unwrap(), e["text_b"].as_str())
                .unwrap();
            assert_eq!(got.ids, enc.0, "{key}: token ids of {}", e["text"]);
            if let Some(t) = &enc.1 {
                assert_eq!(&got.type_ids, t, "{key}: token type ids of {}", e["text"]);
            }
            let w = floats(&e["logits"]);
            let logits = sequence_logits(&p, &packed(std::slice::from_ref(enc))).unwrap();
            let d = max_diff(&logits, &w);
            assert!(
                d <= PARITY_ATOL,
                "{key}: logits of {} differ by {d}",
                e["text"]
            );
            worst = worst.max(d);
            want.extend(w);
        }
        let all = sequence_logits(&p, &packed(&encs)).unwrap();
        let d = max_diff(&all, &want);
        assert!(d <= PARITY_ATOL, "{key}: packed logits differ by {d}");
        eprintln!("{key}: max logit diff {worst:e} one by one, {d:e} packed");
    }
}

fn check_training(dir: &str, name: &str) {
    let p = checkpoint::load(&fixture(dir)).unwrap();
    let exp = json(&fixture("cls-train-parity").join(format!("{name}.json")));
    let encs: Vec<_> = exp["examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(encoding)
        .collect();
    let labels = floats(&exp["labels"]);
    let mut g = zeros_like(&p);
    let loss = sequence_loss(&p, &packed(&encs), &labels, &mut g, 1.0, None).unwrap();
    assert_loss_and_grads(name, loss, exp["loss"].as_f64().unwrap() as f32, &g);
}

#[test]
fn bert_classifier_loss_and_gradients_match_pytorch() {
    check_training("tiny-bert-cls", "bert_cls");
}

#[test]
fn bert_regression_loss_and_gradients_match_pytorch() {
    check_training("tiny-bert-reg", "bert_reg");
}

/// transformers runs the batch right-padded and picks each sequence's last non-pad token;
/// Kiln packs without padding and picks the last token: the same rows, the same gradients.
#[test]
fn gpt2_classifier_loss_and_gradients_match_pytorch() {
    check_training("tiny-gpt2-cls", "gpt2_cls");
}

fn all_logits(p: &Pretrained, key: &str) -> Vec<f32> {
    let encs: Vec<_> = expected(key)["examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(encoding)
        .collect();
    sequence_logits(p, &packed(&encs)).unwrap()
}

/// Saving a loaded classifier writes the checkpoint transformers wrote: the same tensor names
/// and values, the same architecture and labels; reloading gives the same logits.
#[test]
fn saved_classifier_is_the_transformers_checkpoint() {
    for &(key, dir, _) in MODELS {
        let p = checkpoint::load(&fixture(dir)).unwrap();
        let out = scratch(dir);
        checkpoint::save(&p, &out, SaveDtype::F32).unwrap();

        let (hf, ours) = (
            WeightStore::open_dir(&fixture(dir)).unwrap(),
            WeightStore::open_dir(&out).unwrap(),
        );
        let (mut hf_names, mut our_names) = (hf.names(), ours.names());
        hf_names.sort();
        our_names.sort();
        assert_eq!(our_names, hf_names, "{key}: tensor names");
        for n in &hf_names {
            let (a, b) = (hf.get(n).unwrap(), ours.get(n).unwrap());
            assert_eq!(a.shape(), b.shape(), "{key}: shape of {n}");
            assert_eq!(a.data(), b.data(), "{key}: values of {n}");
        }

        let (hf_cfg, our_cfg) = (
            json(&fixture(dir).join("config.json")),
            json(&out.join("config.json")),
        );
        for field in [
            "architectures",
            "id2label",
            "label2id",
            "problem_type",
            "pad_token_id",
        ] {
            assert_eq!(our_cfg[field], hf_cfg[field], "{key}: config.json {field}");
        }

        let q = checkpoint::load(&out).unwrap();
        let t = q.task.as_ref().expect("the saved model has its task head");
        assert_eq!(t.labels, p.task.as_ref().unwrap().labels);
        assert_eq!(t.dropout, p.task.as_ref().unwrap().dropout);
        assert_eq!(
            all_logits(&q, key),
            all_logits(&p, key),
            "{key}: logits after reload"
        );
        std::fs::remove_dir_all(&out).unwrap();
    }
}
