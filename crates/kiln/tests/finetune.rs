//! Fine-tuning end to end on tiny models: a rule the model must generalize to held-out items
//! (single sentences from JSONL, sentence pairs from TSV), best-model selection, resume, and
//! malformed data named by file and line.

mod common;

use common::*;
use kiln::checkpoint;
use kiln::train::classify::{encode_examples, evaluate_examples, read_data, Fields};
use kiln::train::tag::{encode_tag_examples, evaluate_tags, LongSentences};
use kiln::train::{finetune, FinetuneConfig, TrainConfig};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

const WORDS: &[&str] = &[
    "token", "every", "small", "away", "cafe", "into", "last", "model", "morning", "makes", "open",
    "read", "sing", "times", "they", "water", "with", "while",
];

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-ft-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A sentence of 4–7 filler words, with "rain" inserted when `rain`.
fn sentence(rng: &mut rand::rngs::StdRng, rain: bool) -> String {
    let n = rng.gen_range(4..8);
    let mut w: Vec<&str> = (0..n).map(|_| *WORDS.choose(rng).unwrap()).collect();
    if rain {
        let at = rng.gen_range(0..=w.len());
        w.insert(at, "rain");
    }
    w.join(" ")
}

fn config(train: &Path, valid: &Path, steps: u64) -> FinetuneConfig {
    FinetuneConfig {
        train_file: train.to_path_buf(),
        valid_file: Some(valid.to_path_buf()),
        train: TrainConfig {
            lr: 2e-3,
            batch_size: 16,
            max_steps: Some(steps),
            warmup_steps: 5,
            eval_every: 20,
            log_every: 5,
            seed: 3,
            ..TrainConfig::default()
        },
        ..FinetuneConfig::default()
    }
}

/// train / valid / test JSONL (400 / 60 / 100 sentences) in `dir`, every other one with
/// "rain" in it and labelled "wet", the rest "dry".
fn rain_splits(dir: &Path, seed: u64) -> (PathBuf, PathBuf, PathBuf) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut write = |name: &str, n: usize| {
        let path = dir.join(name);
        let mut f = std::fs::File::create(&path).unwrap();
        for i in 0..n {
            let rain = i % 2 == 0;
            let label = if rain { "wet" } else { "dry" };
            let line = serde_json::json!({ "text": sentence(&mut rng, rain), "label": label });
            writeln!(f, "{line}").unwrap();
        }
        path
    };
    (
        write("train.jsonl", 400),
        write("valid.jsonl", 60),
        write("test.jsonl", 100),
    )
}

#[test]
fn single_sentence_classifier_learns_a_rule_it_must_generalize() {
    let dir = scratch("single");
    let (train, valid, test) = rain_splits(&dir, 1);
    let out = dir.join("out");
    let s = run_finetune(
        &fixture("tiny-bert"),
        &out,
        &config(&train, &valid, 200),
        false,
    )
    .unwrap();
    let (best_step, best) = s.best.unwrap();
    // The output directory holds the best model: its validation accuracy is the best one.
    let p = checkpoint::load(&out).unwrap();
    let labels = &p.task.as_ref().unwrap().labels;
    assert_eq!(labels.names, ["dry", "wet"]);
    let fields = Fields::resolve(None, None, "label", None);
    let enc = |path: &Path| {
        let recs = read_data(path, false).unwrap().records;
        encode_examples(p.tokenizer().unwrap(), &recs, &fields, Some(labels), 64).unwrap()
    };
    let on_valid = evaluate_examples(&p, &enc(&valid)).unwrap();
    assert_eq!(
        on_valid["accuracy"].as_f64().unwrap(),
        best,
        "best at step {best_step}"
    );
    // Scored on items it never saw.
    let on_test = evaluate_examples(&p, &enc(&test)).unwrap();
    let acc = on_test["accuracy"].as_f64().unwrap();
    assert!(acc >= 95.0, "held-out accuracy {acc}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn pair_classifier_reads_the_second_sentence_from_tsv() {
    let dir = scratch("pair");
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let mut write = |name: &str, n: usize| {
        let path = dir.join(name);
        let mut f = std::fs::File::create(&path).unwrap();
        writeln!(f, "premise\thypothesis\tlabel").unwrap();
        for i in 0..n {
            // The label is whether the SECOND sentence mentions rain; the first one does at
            // random, as a distractor.
            let rain_b = i % 2 == 0;
            let rain_a = rng.gen_bool(0.5);
            let a = sentence(&mut rng, rain_a);
            let b = sentence(&mut rng, rain_b);
            writeln!(f, "{a}\t{b}\t{}", rain_b as u8).unwrap();
        }
        path
    };
    let (train, valid, test) = (
        write("train.tsv", 600),
        write("valid.tsv", 60),
        write("test.tsv", 100),
    );
    let out = dir.join("out");
    let cfg = FinetuneConfig {
        text_field: Some("premise".into()),
        text_b_field: Some("hypothesis".into()),
        ..config(&train, &valid, 300)
    };
    run_finetune(&fixture("tiny-bert"), &out, &cfg, false).unwrap();
    let p = checkpoint::load(&out).unwrap();
    let labels = &p.task.as_ref().unwrap().labels;
    assert_eq!(labels.names, ["0", "1"]);
    let fields = Fields::resolve(Some("premise"), Some("hypothesis"), "label", None);
    let recs = read_data(&test, false).unwrap().records;
    let ex = encode_examples(p.tokenizer().unwrap(), &recs, &fields, Some(labels), 64).unwrap();
    assert!(ex[0].type_ids.contains(&1), "pairs carry segment ids");
    let acc = evaluate_examples(&p, &ex).unwrap()["accuracy"]
        .as_f64()
        .unwrap();
    let log = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert!(acc >= 90.0, "held-out accuracy {acc}\n{log}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn max_eval_samples_scores_the_first_validation_examples() {
    let dir = scratch("max-eval");
    let mut rng = rand::rngs::StdRng::seed_from_u64(6);
    let path = dir.join("data.jsonl");
    let mut f = std::fs::File::create(&path).unwrap();
    for i in 0..40 {
        let line = serde_json::json!({ "text": sentence(&mut rng, i % 2 == 0), "label": i % 2 });
        writeln!(f, "{line}").unwrap();
    }
    drop(f);
    let out = dir.join("out");
    let base = config(&path, &path, 6);
    let cfg = FinetuneConfig {
        max_eval_samples: Some(7),
        train: TrainConfig {
            eval_every: 6,
            ..base.train.clone()
        },
        ..base.clone()
    };
    let s = run_finetune(&fixture("tiny-bert"), &out, &cfg, false).unwrap();
    // One evaluation, at the last step: the model in --out, scored on the first 7 examples.
    let (_, best) = s.best.unwrap();
    let p = checkpoint::load(&out).unwrap();
    let fields = Fields::resolve(None, None, "label", None);
    let labels = &p.task.as_ref().unwrap().labels;
    let recs = read_data(&path, false).unwrap().records;
    let ex = encode_examples(
        p.tokenizer().unwrap(),
        &recs[..7],
        &fields,
        Some(labels),
        64,
    )
    .unwrap();
    let first7 = evaluate_examples(&p, &ex).unwrap();
    assert_eq!(Some(best), first7["accuracy"].as_f64());
    let log = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let eval_losses: Vec<f64> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["valid_loss"].as_f64())
        .collect();
    let want = first7["valid_loss"].as_f64().unwrap();
    assert_eq!(eval_losses.len(), 1, "{log}");
    assert!((eval_losses[0] - want).abs() < 1e-5, "{log}");
    let cfg = FinetuneConfig {
        max_eval_samples: Some(0),
        ..base
    };
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("--max-eval-samples"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn malformed_data_is_named_by_file_and_line() {
    let dir = scratch("bad");
    let check = |name: &str, body: &str, want: &[&str]| {
        let path = dir.join(name);
        std::fs::write(&path, body).unwrap();
        let valid = dir.join("v.jsonl");
        std::fs::write(&valid, "{\"text\": \"a\", \"label\": \"x\"}\n").unwrap();
        let err = run_finetune(
            &fixture("tiny-bert"),
            &dir.join("out"),
            &config(&path, &valid, 1),
            false,
        )
        .unwrap_err()
        .to_string();
        for w in want {
            assert!(err.contains(w), "{name}: {err}");
        }
    };
    let ok =
        "{\"text\": \"open water\", \"label\": \"x\"}\n{\"text\": \"rain\", \"label\": \"y\"}\n";
    check(
        "broken.jsonl",
        &format!("{ok}{{\"text\": \"oops\"\n"),
        &["broken.jsonl line 3", "invalid JSON"],
    );
    check(
        "nolabel.jsonl",
        &format!("{ok}{{\"text\": \"cafe\"}}\n"),
        &["nolabel.jsonl line 3", "\"label\""],
    );
    check(
        "notext.jsonl",
        &format!("{ok}{{\"txt\": \"cafe\", \"label\": \"x\"}}\n"),
        &["notext.jsonl line 3", "\"text\""],
    );
    check(
        "ragged.csv",
        "text,label\nopen water,x\nrain,y,extra\n",
        &["ragged.csv line 3"],
    );
    check(
        "float.jsonl",
        &format!("{ok}{{\"text\": \"cafe\", \"label\": 0.5}}\n"),
        &["float.jsonl line 3", "--regression"],
    );
    check("model.txt", "open water\n", &["model.txt", "format"]);
    // --skip-invalid counts the bad line (in the training and the validation file, here the
    // same) and trains on the rest.
    let path = dir.join("skip.jsonl");
    std::fs::write(&path, format!("{ok}not json\n")).unwrap();
    let cfg = FinetuneConfig {
        skip_invalid: true,
        ..config(&path, &path, 1)
    };
    let mut skipped = Vec::new();
    finetune(
        &fixture("tiny-bert"),
        &dir.join("out2"),
        &cfg,
        false,
        &AtomicBool::new(false),
        |s| skipped = s.skipped_lines.clone(),
        |_| {},
    )
    .unwrap();
    assert_eq!(skipped, vec![(path.clone(), 1), (path.clone(), 1)]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn resumed_finetune_is_bit_identical() {
    let dir = scratch("resume");
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    let path = dir.join("train.jsonl");
    let mut f = std::fs::File::create(&path).unwrap();
    for i in 0..40 {
        let line = serde_json::json!({ "text": sentence(&mut rng, i % 3 == 0), "label": (i % 3 == 0) as u8 });
        writeln!(f, "{line}").unwrap();
    }
    drop(f);
    let mut cfg = config(&path, &path, 9);
    cfg.train.save_every = 4;
    cfg.train.grad_accum = 2;
    cfg.train.batch_size = 8;
    // Evaluations before and after the interruption: the best model may come from either.
    cfg.train.eval_every = 2;
    let full = dir.join("full");
    run_finetune(&fixture("tiny-gpt2"), &full, &cfg, false).unwrap();
    let part = dir.join("part");
    let stop = AtomicBool::new(false);
    let s = finetune(
        &fixture("tiny-gpt2"),
        &part,
        &cfg,
        false,
        &stop,
        |_| {},
        |p| {
            if p.step == 5 {
                stop.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        },
    )
    .unwrap();
    assert!(s.interrupted && s.step == 5);
    let s = run_finetune(&fixture("tiny-gpt2"), &part, &cfg, true).unwrap();
    assert_eq!(s.step, 9);
    let a =
        checkpoint::named_tensors(&checkpoint::load(&full.join("checkpoint-9")).unwrap()).unwrap();
    let b =
        checkpoint::named_tensors(&checkpoint::load(&part.join("checkpoint-9")).unwrap()).unwrap();
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (n, t) in &a {
        assert_eq!(t.data(), b[n].data(), "{n}");
    }
    assert!(
        a.contains_key("score.weight"),
        "GPT-2 classifier head saved as `score`"
    );
    // The output directory's model (the best by the validation metric) is the same too: the
    // resumed run does not replace the best model with the checkpoint it resumed from.
    assert_eq!(
        checkpoint::named_tensors(&checkpoint::load(&full).unwrap()).unwrap(),
        checkpoint::named_tensors(&checkpoint::load(&part).unwrap()).unwrap(),
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn tagger_learns_a_rule_it_must_generalize_from_conll_columns() {
    let dir = scratch("tag");
    let init = fresh_tiny_model(kiln::model::Arch::Bert, &dir.join("init"));
    tag_rule(&dir, &init, 2e-3);
}

/// The same tagging rule from a bidirectional LSTM encoder (ELMo-style, fresh).
#[test]
fn lstm_tagger_learns_the_rule() {
    let dir = scratch("tag-lstm");
    let init = fresh_lstm(&dir.join("init"), true);
    tag_rule(&dir, &init, 1e-2);
}

/// Fine-tunes `init` to tag "rain" as WET and "water" (and the word after it) as DRINK in
/// CoNLL columns, and checks the entity F1 on held-out sentences.
fn tag_rule(dir: &Path, init: &Path, lr: f32) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut write = |name: &str, n: usize| {
        let path = dir.join(name);
        let mut f = std::fs::File::create(&path).unwrap();
        writeln!(f, "-DOCSTART- -X- O\n").unwrap();
        for _ in 0..n {
            let wet = rng.gen_bool(0.7);
            let s = sentence(&mut rng, wet);
            let words: Vec<&str> = s.split(' ').collect();
            for (i, w) in words.iter().enumerate() {
                // "rain" is a WET entity, "water" and the word after it a DRINK entity.
                let tag = match *w {
                    "rain" => "B-WET",
                    "water" => "B-DRINK",
                    _ if i > 0 && words[i - 1] == "water" => "I-DRINK",
                    _ => "O",
                };
                writeln!(f, "{w} NN {tag}").unwrap();
            }
            writeln!(f).unwrap();
        }
        path
    };
    let (train, valid, test) = (
        write("train.conll", 300),
        write("valid.conll", 40),
        write("test.conll", 80),
    );
    let out = dir.join("out");
    let mut cfg = FinetuneConfig {
        task: "tag".into(),
        ..config(&train, &valid, 300)
    };
    cfg.train.lr = lr;
    let s = run_finetune(init, &out, &cfg, false).unwrap();
    assert_eq!(s.metric.as_deref(), Some("f1"));
    let p = checkpoint::load(&out).unwrap();
    let labels = &p.task.as_ref().unwrap().labels;
    assert_eq!(labels.names[0], "O");
    assert!(labels.names.contains(&"I-DRINK".to_string()));
    let recs = read_data(&test, false).unwrap().records;
    assert_eq!(
        recs[0].line, 3,
        "sentences start after -DOCSTART- and its blank line"
    );
    let ex = encode_tag_examples(
        p.tokenizer().unwrap(),
        &recs,
        "tokens",
        "tags",
        Some(labels),
        64,
        false,
        LongSentences::Windows,
    )
    .unwrap();
    let m = evaluate_tags(&p, &ex).unwrap();
    let f1 = m["f1"].as_f64().unwrap();
    let log = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert!(f1 >= 90.0, "held-out entity F1 {f1}: {m}\n{log}");
    // The POS column is there too, as col1.
    assert_eq!(recs[0].fields["col1"][0], "NN");
    std::fs::remove_dir_all(dir).unwrap();
}

/// A bidirectional LSTM encoder (fresh, ELMo-style) fine-tuned to classify sentences by a word
/// anywhere in them: its mean-pooled states carry it.
#[test]
fn lstm_classifier_learns_a_rule_it_must_generalize() {
    let dir = scratch("single-lstm");
    let (train, valid, test) = rain_splits(&dir, 2);
    let init = fresh_lstm(&dir.join("init"), true);
    let out = dir.join("out");
    let mut cfg = config(&train, &valid, 200);
    cfg.train.lr = 1e-2;
    run_finetune(&init, &out, &cfg, false).unwrap();
    let p = checkpoint::load(&out).unwrap();
    assert_eq!(
        checkpoint::save::architecture_name(&p),
        "KilnLstmForSequenceClassification"
    );
    let labels = &p.task.as_ref().unwrap().labels;
    let fields = Fields::resolve(None, None, "label", None);
    let recs = read_data(&test, false).unwrap().records;
    let ex = encode_examples(p.tokenizer().unwrap(), &recs, &fields, Some(labels), 64).unwrap();
    let acc = evaluate_examples(&p, &ex).unwrap()["accuracy"]
        .as_f64()
        .unwrap();
    let log = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert!(acc >= 90.0, "held-out accuracy {acc}\n{log}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn tag_data_errors_name_file_and_line() {
    let dir = scratch("tagbad");
    let run = |name: &str, body: &str| {
        let path = dir.join(name);
        std::fs::write(&path, body).unwrap();
        let cfg = FinetuneConfig {
            task: "tag".into(),
            valid_file: None,
            ..config(&path, &path, 1)
        };
        run_finetune(&fixture("tiny-bert"), &dir.join("out"), &cfg, false)
            .unwrap_err()
            .to_string()
    };
    let err = run("a.conll", "rain NN B-W\nopen NN O\n\nwater NN O\nrain NN\n");
    assert!(
        err.contains("a.conll line 5") && err.contains("columns"),
        "{err}"
    );
    let err = run(
        "b.jsonl",
        "{\"tokens\": [\"rain\", \"open\"], \"tags\": [\"B-W\", \"O\"]}\n{\"tokens\": [\"rain\"], \"tags\": [\"B-W\", \"O\"]}\n",
    );
    assert!(
        err.contains("b.jsonl line 2") && err.contains("1 words but 2 tags"),
        "{err}"
    );
    let err = run(
        "c.jsonl",
        "{\"tokens\": \"rain open\", \"tags\": [\"O\", \"B-W\"]}\n",
    );
    assert!(
        err.contains("c.jsonl line 1") && err.contains("list"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
