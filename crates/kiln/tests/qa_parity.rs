//! Extractive QA parity with transformers (fixtures from `tests/fixtures/make_qa_fixtures.py`):
//! the windows, offsets and answer positions of `run_qa.py`'s feature preparation, the
//! `BertForQuestionAnswering` logits, the span loss and every gradient, and the answers and
//! SQuAD scores of `postprocess_qa_predictions`.

mod common;

use common::*;
use kiln::checkpoint;
use kiln::infer::qa::Decode;
use kiln::train::backprop::zeros_like;
use kiln::train::qa::{
    answer_questions, answer_text, encode_features, qa_batch, read_examples, read_qa_data,
    span_loss, QaFeature, Windows,
};
use std::sync::Arc;

fn expected() -> serde_json::Value {
    json(&fixture("qa-expected.json"))
}

fn features() -> (kiln::checkpoint::Pretrained, Vec<QaFeature>) {
    let e = expected();
    let p = checkpoint::load(&fixture(e["dir"].as_str().unwrap())).unwrap();
    let s = &e["settings"];
    let w = Windows {
        max_length: s["max_length"].as_u64().unwrap() as usize,
        doc_stride: s["doc_stride"].as_u64().unwrap() as usize,
        max_question: s["max_question"].as_u64().unwrap() as usize,
    };
    let recs = read_qa_data(&fixture("qa-sample.jsonl"), false)
        .unwrap()
        .records;
    let ex: Vec<_> = read_examples(&recs)
        .unwrap()
        .into_iter()
        .map(Arc::new)
        .collect();
    let f = encode_features(p.tokenizer().unwrap(), &ex, &w).unwrap();
    (p, f)
}

#[test]
fn windows_offsets_and_targets_match_run_qa() {
    let e = expected();
    let (_, f) = features();
    let want = e["features"].as_array().unwrap();
    assert_eq!(f.len(), want.len(), "number of windows");
    for (k, (got, w)) in f.iter().zip(want).enumerate() {
        assert_eq!(got.ids, ids(&w["input_ids"]), "window {k} ids");
        assert_eq!(
            got.type_ids,
            ids(&w["token_type_ids"]),
            "window {k} type ids"
        );
        let spans: Vec<Option<(usize, usize)>> = w["byte_offsets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                o.as_array().map(|a| {
                    (
                        a[0].as_u64().unwrap() as usize,
                        a[1].as_u64().unwrap() as usize,
                    )
                })
            })
            .collect();
        assert_eq!(got.spans, spans, "window {k} context offsets");
        let target = (
            w["start_position"].as_u64().unwrap() as usize,
            w["end_position"].as_u64().unwrap() as usize,
        );
        assert_eq!(got.target, target, "window {k} answer position");
    }
}

#[test]
fn logits_match_bert_for_question_answering() {
    let e = expected();
    let (p, f) = features();
    let mut worst = 0.0f32;
    for (k, (feat, want)) in f.iter().zip(e["logits"].as_array().unwrap()).enumerate() {
        let l = kiln::infer::qa::span_logits(&p, &qa_batch(&[feat]).unwrap()).unwrap();
        let starts: Vec<f32> = l.iter().step_by(2).copied().collect();
        let ends: Vec<f32> = l.iter().skip(1).step_by(2).copied().collect();
        let d = max_diff(&starts, &floats(&want["start_logits"]))
            .max(max_diff(&ends, &floats(&want["end_logits"])));
        assert!(d <= PARITY_ATOL, "window {k}: logits differ by {d}");
        worst = worst.max(d);
    }
    eprintln!("max logit diff {worst:e}");
}

#[test]
fn span_loss_and_gradients_match_pytorch() {
    let e = expected();
    let (p, f) = features();
    let windows = e["train"]["windows"].as_array().unwrap();
    let refs: Vec<&QaFeature> = windows
        .iter()
        .map(|w| &f[w["feature"].as_u64().unwrap() as usize])
        .collect();
    let targets: Vec<(usize, usize)> = refs.iter().map(|r| r.target).collect();
    let mut g = zeros_like(&p);
    let loss = span_loss(&p, &qa_batch(&refs).unwrap(), &targets, &mut g, 1.0, None).unwrap();
    assert_loss_and_named_grads(
        "qa",
        loss,
        e["train"]["loss"].as_f64().unwrap() as f32,
        &checkpoint::named_tensors(&g).unwrap(),
        &fixture("qa-train-grads.safetensors"),
    );
}

#[test]
fn answers_and_squad_scores_match_postprocessing() {
    let e = expected();
    let (p, f) = features();
    let s = &e["settings"];
    let d = Decode {
        max_answer_length: s["max_answer_length"].as_u64().unwrap() as usize,
        n_best: s["n_best"].as_u64().unwrap() as usize,
        null_threshold: None,
    };
    let (answers, _) = answer_questions(&p, &f, &d).unwrap();
    let want = e["predictions"].as_array().unwrap();
    assert_eq!(answers.len(), want.len());
    for ((ex, a), w) in answers.iter().zip(want) {
        assert_eq!(answer_text(ex, a), w["text"].as_str().unwrap(), "{}", ex.id);
        let (bs, be) = a.span.unwrap();
        assert_eq!(ex.char_offset(bs) as u64, w["start"].as_u64().unwrap());
        assert_eq!(ex.char_offset(be) as u64, w["end"].as_u64().unwrap());
        let ds = (a.score - w["score"].as_f64().unwrap() as f32).abs();
        assert!(ds <= 2.0 * PARITY_ATOL, "{}: score differs by {ds}", ex.id);
    }
    let m = kiln::train::qa::evaluate_qa(&p, &f, &d).unwrap();
    assert!((m["exact_match"].as_f64().unwrap() - e["exact_match"].as_f64().unwrap()).abs() < 1e-9);
    assert!((m["f1"].as_f64().unwrap() - e["f1"].as_f64().unwrap()).abs() < 1e-9);
}
