//! Sequence generation end to end with a decoder-only model: a fresh tiny GPT-2 learns to copy
//! its source (a rule it must generalize to held-out sentences), scored by BLEU and chrF on
//! generated text; the loss counts target tokens only.

mod common;

use common::*;
use kiln::checkpoint;
use kiln::train::backprop::IGNORE;
use kiln::train::seq2seq::{evaluate_seq2seq, load_pairs, seq2seq_batch, Lengths};
use kiln::train::{finetune, FinetuneConfig, TrainConfig};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

const WORDS: &[&str] = &[
    "cat", "dog", "sun", "rain", "tree", "book", "sea", "red", "blue", "moon", "bird", "fish",
];

/// Copy data (train, valid, test) and a fresh two-layer model of `arch` with the fixture's
/// tokenizer, in a scratch directory.
fn setup(arch: kiln::model::Arch, tag: &str) -> (PathBuf, [PathBuf; 3], PathBuf) {
    let dir = std::env::temp_dir().join(format!("kiln-s2s-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut write = |name: &str, n: usize| {
        let path = dir.join(name);
        let mut f = std::fs::File::create(&path).unwrap();
        for _ in 0..n {
            let k = rng.gen_range(3..7);
            let s: Vec<&str> = (0..k).map(|_| *WORDS.choose(&mut rng).unwrap()).collect();
            let line = serde_json::json!({"source": s.join(" "), "target": s.join(" ")});
            writeln!(f, "{line}").unwrap();
        }
        path
    };
    let files = [
        write("train.jsonl", 3000),
        write("valid.jsonl", 30),
        write("test.jsonl", 40),
    ];
    let init = fresh_tiny_model(arch, &dir.join("init"));
    (dir, files, init)
}

fn config(files: &[PathBuf; 3]) -> FinetuneConfig {
    FinetuneConfig {
        task: "seq2seq".into(),
        train_file: files[0].clone(),
        valid_file: Some(files[1].clone()),
        max_length: 64,
        max_target_length: 16,
        train: TrainConfig {
            lr: 3e-3,
            batch_size: 16,
            max_steps: Some(400),
            warmup_steps: 10,
            eval_every: 200,
            log_every: 10,
            seed: 3,
            ..TrainConfig::default()
        },
        ..FinetuneConfig::default()
    }
}

/// Trains on the copy data and returns (untrained, trained) held-out metrics, greedy and beam.
fn train_and_score(
    arch: kiln::model::Arch,
    tag: &str,
) -> (
    serde_json::Value,
    serde_json::Value,
    serde_json::Value,
    String,
) {
    let (dir, files, init) = setup(arch, tag);
    let p0 = checkpoint::load(&init).unwrap();
    let len = Lengths {
        max_length: 64,
        max_target_length: 16,
    };
    let out = dir.join("out");
    let cfg = config(&files);
    let s = finetune(
        &init,
        &out,
        &cfg,
        false,
        &AtomicBool::new(false),
        |_| {},
        |_| {},
    )
    .unwrap();
    assert_eq!(s.metric.as_deref(), Some("bleu"));
    let p = checkpoint::load(&out).unwrap();
    let pairs = load_pairs(&p, &files[2], false, true, &len).unwrap();
    let before = evaluate_seq2seq(&p0, &pairs, 1, 1.0, 16).unwrap();
    let greedy = evaluate_seq2seq(&p, &pairs, 1, 1.0, 16).unwrap();
    let beam = evaluate_seq2seq(&p, &pairs, 3, 1.0, 16).unwrap();
    let log = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    std::fs::remove_dir_all(dir).unwrap();
    (before, greedy, beam, log)
}

/// Copying is hard for a two-layer, 128-wide model after 400 steps (it needs attention that
/// aligns each target position with its source position): it gets most of it right; the
/// untrained model none.
fn assert_learned(
    before: &serde_json::Value,
    m: &serde_json::Value,
    mb: &serde_json::Value,
    log: &str,
) {
    assert!(
        before["bleu"].as_f64().unwrap() < 5.0,
        "untrained: {before}"
    );
    let bleu = m["bleu"].as_f64().unwrap();
    assert!(bleu >= 55.0, "held-out BLEU {bleu}: {m}\n{log}");
    assert!(m["chrf"].as_f64().unwrap() >= 75.0, "{m}");
    assert!(mb["bleu"].as_f64().unwrap() >= 55.0, "beam search: {mb}");
}

#[test]
fn encoder_learns_to_copy_under_the_prefix_mask() {
    // [CLS] source [SEP] target [SEP]: segments 0 then 1, the prefix is [CLS] source [SEP].
    let (dir, files, init) = setup(kiln::model::Arch::Bert, "bert-batch");
    let p0 = checkpoint::load(&init).unwrap();
    let len = Lengths {
        max_length: 64,
        max_target_length: 16,
    };
    let pairs = load_pairs(&p0, &files[0], false, true, &len).unwrap();
    let e = &pairs[0];
    let (b, t) = seq2seq_batch(&[e]).unwrap();
    let prefix = e.src.len() + 2;
    assert_eq!(b.prefix_lens, Some(vec![prefix]));
    assert_eq!(b.ids[0], e.cls.unwrap());
    assert_eq!(b.ids[prefix - 1], e.eos);
    assert!(b.type_ids[..prefix].iter().all(|&x| x == 0));
    assert!(b.type_ids[prefix..].iter().all(|&x| x == 1));
    let counted: Vec<i64> = t.iter().copied().filter(|&x| x != IGNORE).collect();
    let mut want: Vec<i64> = e.tgt.iter().map(|&x| x as i64).collect();
    want.push(e.eos as i64);
    assert_eq!(counted, want);
    std::fs::remove_dir_all(&dir).unwrap();
    let (before, m, mb, log) = train_and_score(kiln::model::Arch::Bert, "bert");
    assert_learned(&before, &m, &mb, &log);
}

#[test]
fn decoder_only_model_learns_to_copy() {
    let (dir, files, init) = setup(kiln::model::Arch::Gpt2, "gpt2-batch");

    // Only target positions count: the separator predicts the first target token, the last
    // target token predicts the end token.
    let p0 = checkpoint::load(&init).unwrap();
    let len = Lengths {
        max_length: 64,
        max_target_length: 16,
    };
    let pairs = load_pairs(&p0, &files[0], false, true, &len).unwrap();
    let (b, t) = seq2seq_batch(&[&pairs[0]]).unwrap();
    let e = &pairs[0];
    assert_eq!(b.tokens(), e.src.len() + e.tgt.len() + 2);
    let counted: Vec<i64> = t.iter().copied().filter(|&x| x != IGNORE).collect();
    let mut want: Vec<i64> = e.tgt.iter().map(|&x| x as i64).collect();
    want.push(e.eos as i64);
    assert_eq!(counted, want);

    assert!(
        b.prefix_lens.is_none(),
        "a decoder runs causally throughout"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    let (before, m, mb, log) = train_and_score(kiln::model::Arch::Gpt2, "gpt2");
    assert_learned(&before, &m, &mb, &log);
}
