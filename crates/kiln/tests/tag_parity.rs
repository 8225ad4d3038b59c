//! Token-classification parity with transformers (fixtures from
//! `tests/fixtures/make_tag_fixtures.py`): tagging heads load with their tags and dropout, words
//! encode to transformers' ids with tags on first pieces, logits match
//! `*ForTokenClassification`, one training step's loss and every gradient match PyTorch, and a
//! saved tagger is the same checkpoint transformers wrote.

mod common;

use common::*;
use kiln::checkpoint::{self, Pretrained, SaveDtype, WeightStore};
use kiln::data::records::Record;
use kiln::heads::HeadKind;
use kiln::infer::tag::{token_logits, word_labels};
use kiln::model::Batch;
use kiln::tokenize::Tokenizer;
use kiln::train::backprop::zeros_like;
use kiln::train::tag::{encode_tag_examples, tag_batch, token_loss, LongSentences, TagExample};
use std::path::PathBuf;

/// Longer than every fixture sentence: nothing is truncated.
const MAX_LEN: usize = 64;

/// The fixture models: (key in tag-expected.json, directory).
const MODELS: &[(&str, &str)] = &[("bert", "tiny-bert-tag"), ("gpt2", "tiny-gpt2-tag")];
const TAGS: &[&str] = &["O", "B-PER", "I-PER", "B-LOC", "I-LOC"];

fn expected(key: &str) -> serde_json::Value {
    json(&fixture("tag-expected.json"))[key].clone()
}

fn train_fixture() -> serde_json::Value {
    json(&fixture("cls-train-parity").join("bert_tag.json"))
}

fn examples(v: &serde_json::Value) -> &Vec<serde_json::Value> {
    v["examples"].as_array().unwrap()
}

/// Word ids as the fixture writes them (`null` for special tokens).
fn word_ids(v: &serde_json::Value) -> Vec<Option<u32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_u64().map(|w| w as u32))
        .collect()
}

fn ints(v: &serde_json::Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

/// A JSONL-style record with the example's `tokens` and `tags`.
fn record(e: &serde_json::Value, line: usize) -> Record {
    let mut fields = serde_json::Map::new();
    fields.insert("tokens".into(), e["words"].clone());
    fields.insert("tags".into(), e["tags"].clone());
    Record {
        fields,
        path: PathBuf::from("bert_tag.json"),
        line,
    }
}

fn encode(p: &Pretrained, tok: &Tokenizer, all_pieces: bool) -> Vec<TagExample> {
    let records: Vec<Record> = examples(&train_fixture())
        .iter()
        .enumerate()
        .map(|(i, e)| record(e, i + 1))
        .collect();
    let labels = &p.task.as_ref().unwrap().labels;
    encode_tag_examples(
        tok,
        &records,
        "tokens",
        "tags",
        Some(labels),
        MAX_LEN,
        all_pieces,
        LongSentences::Truncate,
    )
    .unwrap()
}

fn packed(seqs: &[Vec<u32>]) -> Batch {
    let seqs: Vec<(&[u32], Option<&[u32]>)> = seqs.iter().map(|s| (&s[..], None)).collect();
    Batch::packed(&seqs).unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-tag-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn tagging_heads_load_with_their_kind_tags_and_dropout() {
    for &(key, dir) in MODELS {
        let p = checkpoint::load(&fixture(dir)).unwrap();
        let t = p.task.as_ref().expect("a tagger has a task head");
        assert_eq!(t.kind, HeadKind::Token, "{key}");
        assert_eq!(t.labels.names, TAGS, "{key}");
        assert!(!t.labels.regression, "{key}");
        assert_eq!(t.linear.out_features(), TAGS.len(), "{key}");
        assert!(t.linear.bias.is_some(), "{key}: the classifier has a bias");
        assert_eq!(
            t.dropout,
            expected(key)["dropout"].as_f64().unwrap() as f32,
            "{key}: the dropout transformers built"
        );
        assert!(
            p.pooler.is_none() && p.mlm_head.is_none() && p.lm_head.is_none(),
            "{key}: a tagger has no pooler or pre-training head"
        );
        assert!(p.unused_tensors.is_empty(), "{key}: {:?}", p.unused_tensors);
    }
    let t = checkpoint::load(&fixture("tiny-bert-tag"))
        .unwrap()
        .task
        .unwrap();
    assert_eq!(
        t.dropout, 0.25,
        "classifier_dropout overrides hidden_dropout_prob"
    );
}

/// transformers' `GPT2ForTokenClassification` takes `classifier_dropout`, else a
/// `hidden_dropout` attribute GPT2Config does not have, else 0.1; `resid_pdrop` plays no part.
#[test]
fn gpt2_tagger_dropout_ignores_resid_pdrop() {
    let out = scratch("gpt2-resid");
    std::fs::create_dir_all(&out).unwrap();
    for f in std::fs::read_dir(fixture("tiny-gpt2-tag")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, out.join(f.file_name().unwrap())).unwrap();
    }
    let mut cfg = json(&out.join("config.json"));
    cfg["resid_pdrop"] = 0.3.into();
    std::fs::write(out.join("config.json"), cfg.to_string()).unwrap();
    let dropout = checkpoint::load(&out).unwrap().task.unwrap().dropout;
    std::fs::remove_dir_all(&out).unwrap();
    assert_eq!(dropout, 0.1);
}

/// Words go through tiny-bert's tokenizer to transformers' ids and word ids
/// (`is_split_into_words=True`), and tags land where `tokenize_and_align_labels` puts them.
#[test]
fn bert_words_encode_with_tags_on_first_pieces() {
    let p = checkpoint::load(&fixture("tiny-bert-tag")).unwrap();
    let tok = Tokenizer::from_dir(&fixture("tiny-bert")).unwrap().unwrap();
    let exp = train_fixture();
    let logits_exp = expected("bert");
    let (first, every) = (encode(&p, &tok, false), encode(&p, &tok, true));
    for (i, e) in examples(&exp).iter().enumerate() {
        let words = e["words"].as_array().unwrap().len();
        let gold: Vec<usize> = e["tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| TAGS.iter().position(|n| *n == t.as_str().unwrap()).unwrap())
            .collect();
        for (got, labels) in [(&first[i], "labels"), (&every[i], "labels_all_pieces")] {
            assert_eq!(got.ids, ids(&e["input_ids"]), "ids of sentence {i}");
            assert_eq!(got.word_ids, word_ids(&e["word_ids"]), "word ids of {i}");
            assert_eq!(got.targets, ints(&e[labels]), "{labels} of sentence {i}");
            assert_eq!(got.words, words);
            assert_eq!(got.gold.as_ref(), Some(&gold));
        }
        assert_eq!(
            ids(&logits_exp["examples"][i]["input_ids"]),
            first[i].ids,
            "the logits fixture encodes the same sentences"
        );
        // Every word has exactly one target among its pieces.
        let targeted: Vec<u32> = first[i]
            .word_ids
            .iter()
            .zip(&first[i].targets)
            .filter(|(_, &t)| t >= 0)
            .map(|(w, _)| w.expect("special tokens have no target"))
            .collect();
        assert_eq!(targeted, (0..words as u32).collect::<Vec<_>>());
    }
}

/// Kiln encodes GPT-2 words with a space before each (transformers' `add_prefix_space=True`,
/// which its tagging recipe needs): the fixture's `input_ids` and word ids exactly.
#[test]
fn gpt2_words_encode_with_a_prefix_space_as_transformers_recipe() {
    let p = checkpoint::load(&fixture("tiny-gpt2-tag")).unwrap();
    let tok = p.tokenizer().unwrap();
    for e in examples(&expected("gpt2")) {
        let words: Vec<&str> = e["words"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w.as_str().unwrap())
            .collect();
        let got = tok.encode_words(&words).unwrap();
        assert_eq!(got.ids, ids(&e["input_ids"]), "{words:?}");
        assert_eq!(got.word_ids, word_ids(&e["word_ids"]), "{words:?}");
    }
}

/// Logits of each sentence alone and of all sentences packed into one batch, against
/// transformers running each sentence alone on the fixture's ids.
#[test]
fn logits_match_transformers() {
    for &(key, dir) in MODELS {
        let p = checkpoint::load(&fixture(dir)).unwrap();
        let k = p.task.as_ref().unwrap().linear.out_features();
        let exp = expected(key);
        let seqs: Vec<Vec<u32>> = examples(&exp)
            .iter()
            .map(|e| ids(&e["input_ids"]))
            .collect();
        let mut want = Vec::new();
        let mut worst = 0.0f32;
        for (e, s) in examples(&exp).iter().zip(&seqs) {
            let w = floats(&e["logits"]);
            assert_eq!(w.len(), s.len() * k);
            let logits = token_logits(&p, &packed(std::slice::from_ref(s))).unwrap();
            let d = max_diff(&logits, &w);
            assert!(
                d <= PARITY_ATOL,
                "{key}: logits of {} differ by {d}",
                e["words"]
            );
            worst = worst.max(d);
            want.extend(w);
        }
        let all = token_logits(&p, &packed(&seqs)).unwrap();
        let d = max_diff(&all, &want);
        assert!(d <= PARITY_ATOL, "{key}: packed logits differ by {d}");
        eprintln!("{key}: max logit diff {worst:e} one by one, {d:e} packed");
    }
}

/// transformers runs the batch right-padded with -100 on padding; Kiln packs the sentences
/// Kiln encoded itself: the same labelled tokens, the same loss and gradients.
#[test]
fn bert_tagger_loss_and_gradients_match_pytorch() {
    let name = "bert_tag";
    let p = checkpoint::load(&fixture("tiny-bert-tag")).unwrap();
    let exp = train_fixture();
    let encoded = encode(&p, p.tokenizer().unwrap(), false);
    let refs: Vec<&TagExample> = encoded.iter().collect();
    let targets: Vec<i64> = encoded
        .iter()
        .flat_map(|e| e.targets.iter().copied())
        .collect();
    let mut g = zeros_like(&p);
    let loss = token_loss(&p, &tag_batch(&refs).unwrap(), &targets, &mut g, 1.0, None).unwrap();
    assert_loss_and_grads(name, loss, exp["loss"].as_f64().unwrap() as f32, &g);
}

fn all_logits(p: &Pretrained, key: &str) -> Vec<f32> {
    let seqs: Vec<Vec<u32>> = examples(&expected(key))
        .iter()
        .map(|e| ids(&e["input_ids"]))
        .collect();
    token_logits(p, &packed(&seqs)).unwrap()
}

/// Saving a loaded tagger writes the checkpoint transformers wrote: the same tensor names and
/// values, the same architecture and tags; reloading gives the same head and logits.
#[test]
fn saved_tagger_is_the_transformers_checkpoint() {
    for &(key, dir) in MODELS {
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
            "classifier_dropout",
        ] {
            assert_eq!(our_cfg[field], hf_cfg[field], "{key}: config.json {field}");
        }

        let q = checkpoint::load(&out).unwrap();
        let (t, u) = (q.task.as_ref().unwrap(), p.task.as_ref().unwrap());
        assert_eq!(t.kind, HeadKind::Token, "{key}");
        assert_eq!(t.labels, u.labels, "{key}");
        assert_eq!(t.dropout, u.dropout, "{key}");
        assert_eq!(
            all_logits(&q, key),
            all_logits(&p, key),
            "{key}: logits after reload"
        );
        std::fs::remove_dir_all(&out).unwrap();
    }
}

/// The arg-max at each word's first piece decides the word's label; later pieces, special
/// tokens and word ids past `words` are ignored, and words without a piece (cut off by
/// truncation) have none.
#[test]
fn word_labels_read_first_pieces() {
    const K: usize = 3;
    #[rustfmt::skip]
    let logits: [f32; 7 * K] = [
        9.0, 0.0, 0.0, // [CLS]: ignored
        0.0, 2.0, 1.0, // word 0, first piece: 1
        0.0, 0.0, 5.0, // word 0, second piece: ignored
        3.0, 3.0, 1.0, // word 1: a tie goes to the lower id, 0
        -1.0, -3.0, -2.0, // word 2, first piece: 0
        0.0, 9.0, 0.0, // word 2, second piece: ignored
        0.0, 0.0, 7.0, // word id 5 >= words: ignored
    ];
    let ids = [None, Some(0), Some(0), Some(1), Some(2), Some(2), Some(5)];
    // Four words; the fourth was truncated away.
    assert_eq!(
        word_labels(&logits, K, &ids, 4),
        [Some(1), Some(0), Some(0), None]
    );
    // No word survived.
    assert_eq!(word_labels(&logits[..K], K, &ids[..1], 2), [None, None]);
}
