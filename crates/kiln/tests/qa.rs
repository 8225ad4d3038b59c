//! Extractive QA: a rule learned end to end through windows (contexts several windows long, the
//! answer found through offsets), SQuAD JSON input, and malformed answers named by file and
//! line.

mod common;

use common::*;
use kiln::checkpoint;
use kiln::train::qa::{answer_questions, answer_text, features_of, read_examples, read_qa_data};
use kiln::train::{FinetuneConfig, TrainConfig};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::io::Write;
use std::path::PathBuf;

const FILLER: &[&str] = &[
    "every", "small", "away", "cafe", "into", "last", "model", "morning", "makes", "open", "read",
    "sing", "times", "they", "water", "with", "while",
];
const ANSWERS: &[&str] = &["token", "rain", "the cat", "summer", "paris"];

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-qa-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A context of filler words with "code is <answer>" somewhere in it; the question asks for the
/// code. Contexts run to ~50 words, so with 32-token windows most need several.
fn example(rng: &mut rand::rngs::StdRng, i: usize) -> serde_json::Value {
    let n = rng.gen_range(20..50);
    let mut words: Vec<String> = (0..n)
        .map(|_| FILLER.choose(rng).unwrap().to_string())
        .collect();
    let answer = ANSWERS.choose(rng).unwrap();
    let at = rng.gen_range(0..=words.len());
    words.insert(at, format!("code is {answer}"));
    // A non-ASCII word before the answer half of the time: character and byte offsets differ.
    if rng.gen_bool(0.5) {
        words.insert(0, "café".into());
    }
    let context = words.join(" ");
    let start = context.find(&format!("code is {answer}")).unwrap() + "code is ".len();
    let char_start = context[..start].chars().count();
    serde_json::json!({
        "id": format!("q{i}"),
        "question": "what is the code ?",
        "context": context,
        "answers": [{"text": answer, "answer_start": char_start}],
    })
}

#[test]
fn qa_learns_a_rule_through_windows() {
    let dir = scratch("learn");
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut write = |name: &str, n: usize| {
        let path = dir.join(name);
        let mut f = std::fs::File::create(&path).unwrap();
        for i in 0..n {
            writeln!(f, "{}", example(&mut rng, i)).unwrap();
        }
        path
    };
    let (train, valid, test) = (
        write("train.jsonl", 300),
        write("valid.jsonl", 40),
        write("test.jsonl", 60),
    );
    let init = fresh_tiny_model(kiln::model::Arch::Bert, &dir.join("init"));
    let out = dir.join("out");
    let cfg = FinetuneConfig {
        task: "qa".into(),
        train_file: train.clone(),
        valid_file: Some(valid),
        max_length: 32,
        doc_stride: 8,
        max_answer_length: 6,
        train: TrainConfig {
            lr: 2e-3,
            batch_size: 16,
            max_steps: Some(300),
            warmup_steps: 10,
            eval_every: 50,
            log_every: 10,
            seed: 3,
            ..TrainConfig::default()
        },
        ..FinetuneConfig::default()
    };
    let s = run_finetune(&init, &out, &cfg, false).unwrap();
    assert_eq!(s.metric.as_deref(), Some("f1"));
    let p = checkpoint::load(&out).unwrap();
    let w = kiln::train::qa::windows_of(&cfg, &p);
    let features = features_of(&p, &read_qa_data(&test, false).unwrap().records, &w).unwrap();
    assert!(
        features.len() >= 2 * 60,
        "contexts need several windows: {} windows for 60 questions",
        features.len()
    );
    let (answers, _) = answer_questions(&p, &features, &kiln::train::qa::decode_of(&cfg)).unwrap();
    assert_eq!(answers.len(), 60);
    let golds: Vec<Vec<String>> = answers
        .iter()
        .map(|(e, _)| e.answers.iter().map(|a| a.text.clone()).collect())
        .collect();
    let (em, f1) = kiln::metrics::squad::corpus_scores(
        answers
            .iter()
            .zip(&golds)
            .map(|((e, a), g)| (answer_text(e, a), &g[..])),
    );
    let log = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert!(em >= 90.0, "held-out exact match {em} (F1 {f1})\n{log}");
    // Offsets are characters: the answer text sits at them.
    for (e, a) in &answers {
        if let Some((s, t)) = a.span {
            let (cs, ct) = (e.char_offset(s), e.char_offset(t));
            let text: String = e.context.chars().skip(cs).take(ct - cs).collect();
            assert_eq!(text, answer_text(e, a));
        }
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn squad_json_and_bad_answers() {
    let dir = scratch("json");
    let squad = serde_json::json!({"version": "1.1", "data": [{"title": "T", "paragraphs": [
        {"context": "Zürich is a city. Its lake is large.",
         "qas": [{"id": "a", "question": "What is large?", "answers": [{"text": "Its lake", "answer_start": 18}]},
                 {"id": "b", "question": "What is Zürich?", "answers": [{"text": "a city", "answer_start": 10}]}]}]}]});
    let path = dir.join("dev.json");
    std::fs::write(&path, squad.to_string()).unwrap();
    let recs = read_qa_data(&path, false).unwrap().records;
    let ex = read_examples(&recs).unwrap();
    assert_eq!(ex.len(), 2);
    assert_eq!(ex[0].id, "a");
    // Character offset 18 is byte 19 ("ü" is two bytes).
    assert_eq!(ex[0].answers[0].start, 19);
    assert_eq!(&ex[0].context[19..27], "Its lake");
    let bad = dir.join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"context\": \"abc def\", \"question\": \"q\", \"answers\": [{\"text\": \"abc\", \"answer_start\": 0}]}\n{\"context\": \"abc def\", \"question\": \"q\", \"answers\": [{\"text\": \"xyz\", \"answer_start\": 4}]}\n",
    )
    .unwrap();
    let recs = read_qa_data(&bad, false).unwrap().records;
    let err = read_examples(&recs).unwrap_err().to_string();
    assert!(
        err.contains("bad.jsonl line 2") && err.contains("xyz"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// BertForQuestionAnswering and BertForTokenClassification have no pooler: a new span or token
/// head drops the one a checkpoint brings (here a sequence classifier's), so transformers finds
/// no unexpected tensor in what Kiln saves; a sequence head keeps it.
#[test]
fn span_and_token_heads_drop_the_pooler() {
    let dir = scratch("pooler");
    let load = || checkpoint::load(&fixture("tiny-bert-cls")).unwrap();
    let mut p = load();
    assert!(p.pooler.is_some());
    kiln::train::qa::new_span_head(&mut p, 1).unwrap();
    assert!(p.pooler.is_none());
    checkpoint::save(&p, &dir, checkpoint::SaveDtype::F32).unwrap();
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let names = st.names();
    assert!(
        names.iter().any(|n| n.starts_with("qa_outputs.")),
        "{names:?}"
    );
    assert!(!names.iter().any(|n| n.contains("pooler")), "{names:?}");
    let mut p = load();
    let labels = p.task.as_ref().unwrap().labels.clone();
    kiln::train::tag::new_token_head(&mut p, labels.clone(), 1).unwrap();
    assert!(p.pooler.is_none());
    let mut p = load();
    kiln::train::classify::new_sequence_head(&mut p, labels, 1).unwrap();
    assert!(p.pooler.is_some());
    std::fs::remove_dir_all(dir).unwrap();
}
