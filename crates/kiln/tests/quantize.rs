//! int8 quantization: quantize → save → load keeps every value, the int8 model computes what
//! the f32 model does within a stated tolerance, dequantizing gives the weights back, and what
//! cannot be done with an int8 model is refused.

mod common;

use common::*;
use kiln::checkpoint::{self, SaveDtype};
use kiln::compress::{dequantize, quantize, QuantizeOptions};
use kiln::model::Batch;
use std::path::PathBuf;

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-q-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// The int8 model's logits may differ from f32 by this fraction of the f32 logits' spread (per
/// channel weights and per row activations on random tiny models; real models do better).
const INT8_LOGIT_RTOL: f32 = 0.05;

fn batch(p: &checkpoint::Pretrained) -> Batch {
    let tok = p.tokenizer().unwrap();
    let a = tok.encode("the cat sat on the mat", None).unwrap();
    let b = tok.encode("a dog", None).unwrap();
    Batch::packed(&[(&a.ids, Some(&a.type_ids)), (&b.ids, Some(&b.type_ids))]).unwrap()
}

#[test]
fn quantized_models_save_load_and_compute_like_f32() {
    for model in ["tiny-bert-cls", "tiny-gpt2-cls"] {
        let f32_model = checkpoint::load(&fixture(model)).unwrap();
        let mut p = checkpoint::load(&fixture(model)).unwrap();
        let report = quantize(&mut p, &QuantizeOptions::plain()).unwrap();
        // Every block linear layer and the word embeddings.
        assert_eq!(report.len(), 4 * p.model.blocks.len() + 1, "{model}");
        assert!(p.model.embeddings.word.int8.is_some());
        assert!(
            report.iter().all(|r| r.int8 && r.weight_error < 0.02),
            "{report:?}"
        );
        let out = scratch(model);
        checkpoint::save(&p, &out, SaveDtype::F32).unwrap();
        let q = checkpoint::load(&out).unwrap();
        assert!(q.config().is_quantized());
        // Every int8 value and scale survives the round trip.
        let words = (&p.model.embeddings.word, &q.model.embeddings.word);
        for (a, b) in p.model.blocks.iter().zip(&q.model.blocks) {
            for (x, y) in [(&a.qkv, &b.qkv), (&a.ffn_out, &b.ffn_out), words] {
                let (x, y) = (x.int8.as_ref().unwrap(), y.int8.as_ref().unwrap());
                assert_eq!((&x.data, &x.scale), (&y.data, &y.scale), "{model}");
            }
        }
        assert_eq!(
            checkpoint::named_tensors(&p).unwrap(),
            checkpoint::named_tensors(&q).unwrap()
        );
        // The int8 logits are those of f32 within the budget.
        let b = batch(&f32_model);
        let want = kiln::infer::classify::sequence_logits(&f32_model, &b).unwrap();
        let got = kiln::infer::classify::sequence_logits(&q, &b).unwrap();
        let spread = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-3);
        assert!(
            max_diff(&got, &want) <= INT8_LOGIT_RTOL * spread,
            "{model}: {got:?} vs {want:?}"
        );
        // Dequantized (what `kiln convert` writes): the weights the int8 values stand for.
        let mut d = checkpoint::load(&out).unwrap();
        dequantize(&mut d);
        assert!(!d.config().is_quantized());
        let qkv = q.model.blocks[0].qkv.int8.as_ref().unwrap();
        assert_eq!(d.model.blocks[0].qkv.weight.data(), qkv.dequantize().data());
        std::fs::remove_dir_all(out).unwrap();
    }
}

#[test]
fn kept_layers_stay_f32_and_mistakes_are_refused() {
    let mut p = checkpoint::load(&fixture("tiny-bert")).unwrap();
    let opts = QuantizeOptions {
        keep_f32: vec!["key".into(), "output.dense".into()],
        ..QuantizeOptions::plain()
    };
    let report = quantize(&mut p, &opts).unwrap();
    for b in &p.model.blocks {
        // `key` keeps the fused query/key/value; `output.dense` both output projections.
        assert!(b.qkv.int8.is_none() && b.attn_out.int8.is_none() && b.ffn_out.int8.is_none());
        assert!(b.ffn_in.int8.is_some());
    }
    // The FFN input layers and the word embeddings.
    assert_eq!(
        report.iter().filter(|r| r.int8).count(),
        p.model.blocks.len() + 1
    );
    let err = quantize(&mut p, &QuantizeOptions::plain())
        .unwrap_err()
        .to_string();
    assert!(err.contains("already quantized"), "{err}");
    let mut fresh = checkpoint::load(&fixture("tiny-bert")).unwrap();
    let err = quantize(
        &mut fresh,
        &QuantizeOptions {
            keep_f32: vec!["querry".into()],
            ..QuantizeOptions::plain()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("querry") && err.contains("matches no"),
        "{err}"
    );
}

#[test]
fn an_int8_base_trains_adapters_but_not_its_own_weights() {
    let dir = scratch("lora");
    let mut p = checkpoint::load(&fixture("tiny-bert")).unwrap();
    quantize(&mut p, &QuantizeOptions::plain()).unwrap();
    let base = dir.join("q");
    checkpoint::save(&p, &base, SaveDtype::F32).unwrap();
    let data = dir.join("train.jsonl");
    let lines: String = (0..48)
        .map(|i| {
            let (t, l) = if i % 2 == 0 {
                ("the cat sat on the mat", "a")
            } else {
                ("a dog barked", "b")
            };
            format!("{{\"text\": \"{t} {i}\", \"label\": \"{l}\"}}\n")
        })
        .collect();
    std::fs::write(&data, lines).unwrap();
    let mut cfg = kiln::train::FinetuneConfig {
        train_file: data.clone(),
        ..Default::default()
    };
    cfg.train.max_steps = Some(30);
    cfg.train.lr = 1e-2;
    cfg.train.batch_size = 8;
    cfg.train.log_every = 1;
    let err = run_finetune(&base, &dir.join("full"), &cfg, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("quantized") && err.contains("--method lora"),
        "{err}"
    );
    cfg.peft.method = kiln::peft::Method::Lora;
    cfg.peft.train_extra = vec!["pooler".into()];
    let out = dir.join("lora");
    run_finetune(&base, &out, &cfg, false).unwrap();
    let losses: Vec<f64> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["loss"].as_f64())
        .collect();
    let (first, last) = (
        losses[..3].iter().sum::<f64>(),
        losses[losses.len() - 3..].iter().sum::<f64>(),
    );
    assert!(last < 0.7 * first, "loss {first} -> {last}");
    // A PEFT adapter, which loads on the int8 base and on the f32 one.
    assert!(out.join("adapter_model.safetensors").exists());
    let mut on_int8 = checkpoint::load(&base).unwrap();
    kiln::peft::files::load_adapter(&mut on_int8, &out, "a").unwrap();
    let mut on_f32 = checkpoint::load(&fixture("tiny-bert")).unwrap();
    kiln::peft::files::load_adapter(&mut on_f32, &out, "a").unwrap();
    // Merging into int8 weights is refused.
    let err = kiln::peft::merge_and_unload(&mut on_int8)
        .unwrap_err()
        .to_string();
    assert!(err.contains("quantized"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn calibration_smooths_layers_and_the_smoothing_survives_saving() {
    let mut p = checkpoint::load(&fixture("tiny-bert-cls")).unwrap();
    let texts: Vec<String> = std::fs::read_to_string(fixture("apple_sentences.txt"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let opts = QuantizeOptions {
        calibration: texts,
        max_error: Some(1e-9),
        ..QuantizeOptions::plain()
    };
    // An error budget nothing meets keeps every block layer in f32, saying why.
    let report = quantize(&mut p, &opts).unwrap();
    let blocks: Vec<_> = report.iter().filter(|r| r.output_error.is_some()).collect();
    assert_eq!(blocks.len(), 4 * p.model.blocks.len());
    assert!(blocks
        .iter()
        .all(|r| !r.int8 && r.kept_because.as_deref().unwrap().contains("--max-error")));
    // A generous budget: every layer int8, smoothed where that measured better.
    let mut p = checkpoint::load(&fixture("tiny-bert-cls")).unwrap();
    let f32_model = checkpoint::load(&fixture("tiny-bert-cls")).unwrap();
    let report = quantize(
        &mut p,
        &QuantizeOptions {
            max_error: Some(1.0),
            ..opts
        },
    )
    .unwrap();
    assert!(report.iter().all(|r| r.int8));
    for r in report.iter().filter(|r| r.output_error.is_some()) {
        let (plain, smooth) = r.output_error.unwrap();
        assert_eq!(r.smoothed, smooth < plain, "{r:?}");
    }
    assert!(report.iter().any(|r| r.smoothed), "{report:?}");
    let out = scratch("smoothed");
    checkpoint::save(&p, &out, SaveDtype::F32).unwrap();
    let q = checkpoint::load(&out).unwrap();
    for (a, b) in p.model.blocks.iter().zip(&q.model.blocks) {
        for (x, y) in [
            (&a.qkv, &b.qkv),
            (&a.ffn_in, &b.ffn_in),
            (&a.ffn_out, &b.ffn_out),
        ] {
            assert_eq!(
                x.int8.as_ref().unwrap().smooth,
                y.int8.as_ref().unwrap().smooth
            );
        }
    }
    let b = batch(&f32_model);
    let want = kiln::infer::classify::sequence_logits(&f32_model, &b).unwrap();
    let got = kiln::infer::classify::sequence_logits(&q, &b).unwrap();
    let spread = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-3);
    assert!(
        max_diff(&got, &want) <= INT8_LOGIT_RTOL * spread,
        "{got:?} vs {want:?}"
    );
    std::fs::remove_dir_all(out).unwrap();
}
