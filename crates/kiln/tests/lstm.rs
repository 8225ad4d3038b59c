//! The LSTM backbone against PyTorch (fixtures from `tests/fixtures/make_lstm_fixtures.py`,
//! whose layers are `nn.LSTM` modules loaded strictly from the same files): every layer's
//! output in both directions, the bidirectional and causal LM losses, and the gradient of every
//! tensor; and a save → load round trip.

mod common;

use common::*;
use kiln::checkpoint::{self, Pretrained};
use kiln::engine::MaskKind;
use kiln::model::Batch;
use kiln::train::backprop::{bilm_loss, clm_loss, zeros_like};

fn batch(exp: &serde_json::Value) -> Batch {
    let seqs: Vec<Vec<u32>> = exp["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .map(ids)
        .collect();
    let refs: Vec<(&[u32], Option<&[u32]>)> = seqs.iter().map(|s| (&s[..], None)).collect();
    Batch::packed(&refs).unwrap()
}

/// Every layer's states (forward then backward half per token) against the fixture's rows.
fn check_layers(p: &Pretrained, exp: &serde_json::Value, b: &Batch, name: &str) {
    let lstm = p.model.lstm.as_ref().expect("an LSTM backbone");
    let mut x0 = vec![0.0; b.tokens() * lstm.shape.proj];
    p.model
        .embeddings
        .forward(&b.ids, &[], &[], &mut x0)
        .unwrap();
    let layers = lstm
        .layer_outputs(&x0, b, p.model.default_mask(), None)
        .unwrap();
    let want = exp["layers"].as_array().unwrap();
    assert_eq!(
        layers.len(),
        want.len() + 1,
        "{name}: embeddings + every layer"
    );
    for (l, w) in want.iter().enumerate() {
        let dirs: Vec<Vec<f32>> = ["fwd", "bwd"]
            .iter()
            .filter_map(|d| w.get(*d))
            .map(|rows| rows.as_array().unwrap().iter().flat_map(floats).collect())
            .collect();
        let p_ = lstm.shape.proj;
        let joined: Vec<f32> = (0..b.tokens())
            .flat_map(|t| {
                dirs.iter()
                    .flat_map(move |d| d[t * p_..(t + 1) * p_].to_vec())
            })
            .collect();
        let d = max_diff(&layers[l + 1], &joined);
        assert!(d < 1e-5, "{name}: layer {} differs by {d}", l + 1);
    }
    // The model's own forward is the top layer.
    let top = p.model.forward(b, p.model.default_mask(), None).unwrap();
    assert_eq!(top.data(), &layers[layers.len() - 1][..]);
}

#[test]
fn bidirectional_lstm_matches_pytorch() {
    let exp = json(&fixture("lstm-expected.json"))["bi"].clone();
    let p = checkpoint::load(&fixture("tiny-lstm-bi")).unwrap();
    assert_eq!(p.model.default_mask(), MaskKind::Bidirectional);
    let b = batch(&exp);
    check_layers(&p, &exp, &b, "bi");
    let mut g = zeros_like(&p);
    let (loss, dirs) = bilm_loss(&p, &b, &mut g, 1.0, None).unwrap();
    for (got, key) in dirs.iter().zip(["loss_fwd", "loss_bwd"]) {
        let want = exp[key].as_f64().unwrap() as f32;
        assert!(
            (got - want).abs() <= LOSS_RTOL * want,
            "{key}: {got} vs {want}"
        );
    }
    assert_loss_and_named_grads(
        "bi",
        loss,
        exp["loss"].as_f64().unwrap() as f32,
        &checkpoint::named_tensors(&g).unwrap(),
        &fixture("lstm-bi_grads.safetensors"),
    );
}

#[test]
fn one_directional_lstm_matches_pytorch() {
    let exp = json(&fixture("lstm-expected.json"))["uni"].clone();
    let p = checkpoint::load(&fixture("tiny-lstm-uni")).unwrap();
    assert_eq!(p.model.default_mask(), MaskKind::Causal);
    let b = batch(&exp);
    check_layers(&p, &exp, &b, "uni");
    let mut g = zeros_like(&p);
    let loss = clm_loss(&p, &b, &mut g, 1.0, None).unwrap();
    assert_loss_and_named_grads(
        "uni",
        loss,
        exp["loss"].as_f64().unwrap() as f32,
        &checkpoint::named_tensors(&g).unwrap(),
        &fixture("lstm-uni_grads.safetensors"),
    );
}

/// What Kiln saves has the fixture's names and shapes (so the PyTorch module tree loads it
/// strictly) and computes the same.
#[test]
fn lstm_round_trips_with_pytorch_names() {
    let dir = std::env::temp_dir().join(format!("kiln-lstm-rt-{}", std::process::id()));
    for name in ["tiny-lstm-bi", "tiny-lstm-uni"] {
        let p = checkpoint::load(&fixture(name)).unwrap();
        checkpoint::save(&p, &dir, checkpoint::SaveDtype::F32).unwrap();
        let src = checkpoint::WeightStore::open_dir(&fixture(name)).unwrap();
        let out = checkpoint::WeightStore::open_dir(&dir).unwrap();
        let (mut a, mut b) = (src.names(), out.names());
        a.sort();
        b.sort();
        assert_eq!(a, b, "{name}: same tensors");
        for n in &a {
            assert_eq!(
                src.get(n).unwrap().data(),
                out.get(n).unwrap().data(),
                "{name}: {n}"
            );
        }
        let q = checkpoint::load(&dir).unwrap();
        assert_eq!(q.config().lstm, p.config().lstm);
        let cfg = json(&dir.join("config.json"));
        assert_eq!(cfg["model_type"], "kiln_lstm");
        assert_eq!(cfg["architectures"][0], "KilnLstmForLanguageModeling");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// A bidirectional model refuses the causal objective (its backward stack would see what it
/// predicts), and a carried state (generation) runs only the forward stack.
#[test]
fn bidirectional_lstm_refuses_what_would_peek() {
    let p = checkpoint::load(&fixture("tiny-lstm-bi")).unwrap();
    let b = Batch::packed(&[(&[3u32, 4, 5][..], None)]).unwrap();
    let mut caches = vec![p.model.new_cache()];
    let err = p
        .model
        .forward(&b, MaskKind::Bidirectional, Some(&mut caches))
        .unwrap_err();
    assert!(err.to_string().contains("forward stack"), "{err}");
    let out = p
        .model
        .forward(&b, MaskKind::Causal, Some(&mut caches))
        .unwrap();
    assert_eq!(out.shape(), &[3, 6]);
    assert_eq!(caches[0].len, 3);
}

fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-lstm-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn pretrain_config(objective: kiln::train::Objective, steps: u64) -> kiln::train::PretrainConfig {
    kiln::train::PretrainConfig {
        objective,
        corpus: vec![fixture("apple_sentences.txt")],
        valid: vec![fixture("apple_sentences.txt")],
        seq_len: 16,
        eval_sequences: 8,
        train: kiln::train::TrainConfig {
            batch_size: 4,
            max_steps: Some(steps),
            lr: 1e-2,
            warmup_steps: 2,
            log_every: 1,
            eval_every: 0,
            save_every: 3,
            grad_accum: 2,
            seed: 5,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The metrics lines, without their timing (`tokens_per_s`).
fn metrics(out: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            if let Some(o) = v.as_object_mut() {
                o.remove("tokens_per_s");
            }
            v
        })
        .collect()
}

fn run(
    model: &std::path::Path,
    out: &std::path::Path,
    cfg: &kiln::train::PretrainConfig,
    resume: bool,
    stop_at: Option<u64>,
) -> kiln::Result<kiln::train::Summary> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = AtomicBool::new(false);
    kiln::train::pretrain(
        model,
        out,
        cfg,
        resume,
        &stop,
        |_| {},
        |p| {
            if Some(p.step) == stop_at {
                stop.store(true, Ordering::SeqCst);
            }
        },
    )
}

/// ELMo's objective learns (both directions' losses fall), logs both, evaluates both, and a
/// run interrupted after a checkpoint resumes to bit-identical weights and metrics (dropout on).
#[test]
fn bilm_pretraining_learns_and_resumes_exactly() {
    let dir = scratch("bilm");
    let model = fresh_lstm(&dir.join("init"), true);
    let mut cfg = pretrain_config(kiln::train::Objective::Bilm, 30);
    cfg.train.eval_every = 30;
    let full = dir.join("full");
    run(&model, &full, &cfg, false, None).unwrap();
    let m = metrics(&full);
    let first = &m[0];
    let last = m.iter().rev().find(|l| l.get("loss").is_some()).unwrap();
    for k in ["loss", "loss_forward", "loss_backward"] {
        let (a, b) = (first[k].as_f64().unwrap(), last[k].as_f64().unwrap());
        assert!(b < a - 0.5, "{k}: {a} -> {b}");
    }
    let eval = m.iter().find(|l| l.get("valid_loss").is_some()).unwrap();
    assert!(eval["valid_loss_forward"].as_f64().unwrap() > 0.0, "{eval}");

    let part = dir.join("part");
    let s = run(&model, &part, &cfg, false, Some(7)).unwrap();
    assert!(s.interrupted && s.step == 7);
    let s = run(&model, &part, &cfg, true, None).unwrap();
    assert_eq!(s.step, 30);
    let a = checkpoint::named_tensors(&checkpoint::load(&full).unwrap()).unwrap();
    let b = checkpoint::named_tensors(&checkpoint::load(&part).unwrap()).unwrap();
    assert_eq!(a, b, "resumed weights differ from the uninterrupted run");
    assert_eq!(metrics(&full), metrics(&part));
    std::fs::remove_dir_all(dir).unwrap();
}

/// A one-directional LSTM learns next-token prediction; each model refuses the other's
/// objective with a message naming the right one.
#[test]
fn clm_pretraining_learns_and_objectives_are_checked() {
    let dir = scratch("clm");
    let uni = fresh_lstm(&dir.join("uni"), false);
    let bi = fresh_lstm(&dir.join("bi"), true);
    let cfg = pretrain_config(kiln::train::Objective::Clm, 20);
    let out = dir.join("out");
    run(&uni, &out, &cfg, false, None).unwrap();
    let m = metrics(&out);
    let (a, b) = (
        m[0]["loss"].as_f64().unwrap(),
        m[m.len() - 1]["loss"].as_f64().unwrap(),
    );
    assert!(b < a - 0.5, "clm loss {a} -> {b}");
    let err = run(&bi, &dir.join("x"), &cfg, false, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("--objective bilm"), "{err}");
    let bilm = pretrain_config(kiln::train::Objective::Bilm, 2);
    let err = run(&uni, &dir.join("y"), &bilm, false, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("--objective clm"), "{err}");
    let mlm = pretrain_config(kiln::train::Objective::Mlm, 2);
    assert!(run(&bi, &dir.join("z"), &mlm, false, None).is_err());
    std::fs::remove_dir_all(dir).unwrap();
}

/// Contextual vectors by layer: layer 0 is the embeddings (repeated per direction), the last
/// layer the model's output, the mean their average; a layer past the top is refused.
#[test]
fn layer_choice_picks_lstm_states() {
    use kiln::infer::embed::Layer;
    let p = checkpoint::load(&fixture("tiny-lstm-bi")).unwrap();
    let b = Batch::packed(&[(&[3u32, 9, 4, 7][..], None)]).unwrap();
    let mask = p.model.default_mask();
    let all = p.model.hidden_states(&b, mask).unwrap();
    assert_eq!(all.len(), 3);
    let e = p.model.embeddings.word.weight.row(9).to_vec();
    assert_eq!(&all[0].row(1)[..6], &e[..]);
    assert_eq!(&all[0].row(1)[6..], &e[..]);
    let last = Layer::Last.states(&p.model, &b, mask).unwrap();
    assert_eq!(last.data(), all[2].data());
    assert_eq!(
        Layer::Index(1).states(&p.model, &b, mask).unwrap().data(),
        all[1].data()
    );
    let mean = Layer::Mean.states(&p.model, &b, mask).unwrap();
    let want: Vec<f32> = (0..all[0].numel())
        .map(|i| (all[0].data()[i] + all[1].data()[i] + all[2].data()[i]) / 3.0)
        .collect();
    assert!(max_diff(mean.data(), &want) < 1e-6);
    let err = Layer::Index(3)
        .states(&p.model, &b, mask)
        .unwrap_err()
        .to_string();
    assert!(err.contains("0 (the embeddings) to 2"), "{err}");
}

/// Generation carries the LSTM state as its cache: greedy decoding one token at a time equals
/// re-running the whole sequence each step and taking the argmax of its last position (a
/// bidirectional model generates with its forward LM).
#[test]
fn greedy_generation_with_carried_state_equals_full_recomputation() {
    use kiln::infer::{GenerateOptions, Generator, Strategy};
    for name in ["tiny-lstm-uni", "tiny-lstm-bi"] {
        let p = checkpoint::load(&fixture(name)).unwrap();
        let prompt = [5u32, 9, 14];
        let opts = GenerateOptions {
            max_new_tokens: 6,
            strategy: Strategy::Greedy,
            seed: 0,
        };
        let got = Generator::new(&p)
            .unwrap()
            .generate(&prompt, &opts, |_| {})
            .unwrap();
        let mut seq = prompt.to_vec();
        let word = p.model.embeddings.word.weight.clone();
        for _ in 0..got.len() {
            let b = Batch::packed(&[(&seq[..], None)]).unwrap();
            let h = p.model.forward(&b, MaskKind::Causal, None).unwrap();
            let last = h.row(seq.len() - 1);
            let next = (0..word.rows())
                .map(|v| {
                    (
                        v,
                        word.row(v)
                            .iter()
                            .zip(last)
                            .map(|(a, b)| a * b)
                            .sum::<f32>(),
                    )
                })
                .fold((0, f32::MIN), |m, c| if c.1 > m.1 { c } else { m })
                .0 as u32;
            seq.push(next);
        }
        assert_eq!(&seq[prompt.len()..], &got[..], "{name}");
        assert!(!got.is_empty());
    }
}
