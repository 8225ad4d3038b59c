//! Sequence generation end to end with a decoder-only model: a fresh tiny GPT-2 learns to copy
//! its source (a rule it must generalize to held-out sentences), scored by BLEU and chrF on
//! generated text; the loss counts target tokens only.

mod common;

use common::*;
use kiln::checkpoint;
use kiln::model::Batch;
use kiln::train::backprop::IGNORE;
use kiln::train::classify::read_data;
use kiln::train::seq2seq::{evaluate_seq2seq, pairs_of, seq2seq_batch, Lengths, Seq2SeqExample};
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
    setup_with(arch, tag, 3..7, |s| s.join(" "))
}

/// Chinese for each of [`WORDS`]: characters the tiny English vocabulary does not have.
const CHINESE: &[&str] = &[
    "猫", "狗", "日", "雨", "树", "书", "海", "红", "蓝", "月", "鸟", "鱼",
];

/// Word-by-word "translation" of English words into Chinese characters.
fn to_chinese(words: &[&str]) -> String {
    words
        .iter()
        .map(|w| CHINESE[WORDS.iter().position(|x| x == w).unwrap()])
        .collect()
}

/// As [`setup`], with the target `target(source words)`.
fn setup_with(
    arch: kiln::model::Arch,
    tag: &str,
    words: std::ops::Range<usize>,
    target: fn(&[&str]) -> String,
) -> (PathBuf, [PathBuf; 3], PathBuf) {
    let dir = std::env::temp_dir().join(format!("kiln-s2s-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut write = |name: &str, n: usize| {
        let path = dir.join(name);
        let mut f = std::fs::File::create(&path).unwrap();
        for _ in 0..n {
            let k = rng.gen_range(words.clone());
            let s: Vec<&str> = (0..k).map(|_| *WORDS.choose(&mut rng).unwrap()).collect();
            let line = serde_json::json!({"source": s.join(" "), "target": target(&s)});
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

/// The lengths every test here encodes with.
const LEN: Lengths = Lengths {
    max_length: 64,
    max_target_length: 16,
};

/// The source/target pairs of `file`, encoded for `p`.
fn encoded(p: &checkpoint::Pretrained, file: &std::path::Path) -> Vec<Seq2SeqExample> {
    let records = read_data(file, false).unwrap().records;
    pairs_of(p, &records, true, &LEN).unwrap()
}

/// The first training pair of the copy data for a fresh `arch` model, and its one-pair batch.
fn first_pair_batch(arch: kiln::model::Arch, tag: &str) -> (Seq2SeqExample, Batch, Vec<i64>) {
    let (dir, files, init) = setup(arch, tag);
    let p0 = checkpoint::load(&init).unwrap();
    let e = encoded(&p0, &files[0]).remove(0);
    let (b, t) = seq2seq_batch(&[&e]).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    (e, b, t)
}

/// Only target positions count: the separator predicts the first target token, the last
/// target token predicts the end token.
fn assert_counts_target_then_eos(e: &Seq2SeqExample, t: &[i64]) {
    let counted: Vec<i64> = t.iter().copied().filter(|&x| x != IGNORE).collect();
    let mut want: Vec<i64> = e.tgt.iter().map(|&x| x as i64).collect();
    want.push(e.eos as i64);
    assert_eq!(counted, want);
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
    let out = dir.join("out");
    let cfg = config(&files);
    let s = run_finetune(&init, &out, &cfg, false).unwrap();
    assert_eq!(s.metric.as_deref(), Some("bleu"));
    let p = checkpoint::load(&out).unwrap();
    let pairs = encoded(&p, &files[2]);
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
    let (e, b, t) = first_pair_batch(kiln::model::Arch::Bert, "bert-batch");
    let prefix = e.src.len() + 2;
    assert_eq!(b.prefix_lens, Some(vec![prefix]));
    assert_eq!(b.ids[0], e.cls.unwrap());
    assert_eq!(b.ids[prefix - 1], e.eos);
    assert!(b.type_ids[..prefix].iter().all(|&x| x == 0));
    assert!(b.type_ids[prefix..].iter().all(|&x| x == 1));
    assert_counts_target_then_eos(&e, &t);
    let (before, m, mb, log) = train_and_score(kiln::model::Arch::Bert, "bert");
    assert_learned(&before, &m, &mb, &log);
}

#[test]
fn decoder_only_model_learns_to_copy() {
    let (e, b, t) = first_pair_batch(kiln::model::Arch::Gpt2, "gpt2-batch");
    assert_eq!(b.tokens(), e.src.len() + e.tgt.len() + 2);
    assert_counts_target_then_eos(&e, &t);
    assert!(
        b.prefix_lens.is_none(),
        "a decoder runs causally throughout"
    );
    let (before, m, mb, log) = train_and_score(kiln::model::Arch::Gpt2, "gpt2");
    assert_learned(&before, &m, &mb, &log);
}

#[test]
fn extended_vocabulary_lets_an_english_encoder_write_chinese() {
    // Every target character is [UNK] to the tiny English vocabulary: without new tokens the
    // task cannot be learned; with --extend-vocab each becomes a token with an embedding row.
    let (dir, files, init) = setup_with(kiln::model::Arch::Bert, "bert-zh", 1..4, to_chinese);
    let p0 = checkpoint::load(&init).unwrap();
    let tok = p0.tokenizer().unwrap();
    let unk = tok.unk_id().unwrap();
    assert!(tok
        .encode_plain("猫狗")
        .unwrap()
        .ids
        .iter()
        .all(|&i| i == unk));
    let old_vocab = p0.config().vocab_size;
    let out = dir.join("out");
    let base = config(&files);
    // New tokens start from nothing: twice the copy tests' steps.
    let cfg = FinetuneConfig {
        extend_vocab: true,
        train: TrainConfig {
            max_steps: Some(800),
            eval_every: 400,
            ..base.train.clone()
        },
        ..base
    };
    let lora = FinetuneConfig {
        peft: kiln::peft::PeftConfig {
            method: kiln::peft::Method::Lora,
            ..Default::default()
        },
        ..cfg.clone()
    };
    let err = lora.validate().unwrap_err().to_string();
    assert!(err.contains("extend-vocab"), "{err}");
    let mut added = 0;
    finetune(
        &init,
        &out,
        &cfg,
        false,
        &AtomicBool::new(false),
        |s| added = s.added_tokens,
        |_| {},
    )
    .unwrap();
    assert_eq!(added, CHINESE.len());
    // The saved model and tokenizer carry the new tokens and load as one.
    let p = checkpoint::load(&out).unwrap();
    assert_eq!(p.config().vocab_size, old_vocab + CHINESE.len());
    let tok = p.tokenizer().unwrap();
    assert_eq!(tok.vocab_size(), p.config().vocab_size);
    let ids = tok.encode_plain("猫狗").unwrap().ids;
    assert!(ids.iter().all(|&i| i as usize >= old_vocab), "{ids:?}");
    let pairs = encoded(&p, &files[2]);
    // One to three words: targets under four characters have no 4-grams, so corpus BLEU is 0
    // by sacreBLEU's definition; chrF and exact matches measure the learning.
    let m = evaluate_seq2seq(&p, &pairs, 1, 1.0, 16).unwrap();
    assert_eq!(m["bleu_tokenize"], "zh");
    assert!(m["chrf"].as_f64().unwrap() >= 80.0, "held-out: {m}");
    // Generated Chinese is written as Chinese: no spaces between the characters.
    let hyps = kiln::train::seq2seq::generate_targets(&p, &pairs, 1, 1.0, 16).unwrap();
    let right = hyps
        .iter()
        .zip(&pairs)
        .filter(|(h, e)| **h == e.target)
        .count();
    assert!(
        right * 10 >= pairs.len() * 8,
        "{right}/{}: {hyps:?}",
        pairs.len()
    );
    assert!(hyps.iter().all(|h| !h.contains(' ')), "{hyps:?}");
    // A later run on the extended model finds nothing left to add.
    assert!(tok
        .unknown_words(["猫 dog 鱼"].iter().copied())
        .unwrap()
        .is_empty());
    std::fs::remove_dir_all(dir).unwrap();
}

/// The encoder-as-decoder model is saved as BertForMaskedLM, which has no pooler: the one a
/// checkpoint brings is dropped, so transformers finds no unexpected tensor.
#[test]
fn prefix_lm_drops_the_pooler() {
    let (dir, files, _) = setup(kiln::model::Arch::Bert, "pooler");
    let mut p = checkpoint::load(&fixture("tiny-bert-cls")).unwrap();
    p.task = None; // a BertModel with a pooler
    let base = dir.join("with-pooler");
    checkpoint::save(&p, &base, checkpoint::SaveDtype::F32).unwrap();
    assert!(checkpoint::load(&base).unwrap().pooler.is_some());
    let cfg = FinetuneConfig {
        valid_file: None,
        train: TrainConfig {
            max_steps: Some(1),
            ..config(&files).train
        },
        ..config(&files)
    };
    run_finetune(&base, &dir.join("out"), &cfg, false).unwrap();
    let out = checkpoint::load(&dir.join("out")).unwrap();
    assert!(out.mlm_head.is_some() && out.pooler.is_none());
    std::fs::remove_dir_all(dir).unwrap();
}
