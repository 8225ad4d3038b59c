//! ELECTRA pre-training (`--objective electra`) on tiny models: it learns, writes a
//! discriminator and a generator that share their tables, logs each part's figures, and a run
//! interrupted after a checkpoint and resumed ends bit-identical (both models).

mod common;

use common::*;
use kiln::checkpoint;
use kiln::model::Arch;
use kiln::train::{pretrain, Objective, PretrainConfig, TrainConfig};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-electra-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn config(steps: u64) -> PretrainConfig {
    PretrainConfig {
        objective: Objective::Electra,
        corpus: vec![fixture("apple_sentences.txt")],
        valid: vec![fixture("apple_sentences.txt")],
        seq_len: 16,
        eval_sequences: 8,
        mask_prob: 0.25,
        generator_scale: 0.5,
        train: TrainConfig {
            batch_size: 4,
            max_steps: Some(steps),
            lr: 2e-3,
            warmup_steps: 2,
            log_every: 1,
            eval_every: 0,
            seed: 11,
            ..TrainConfig::default()
        },
        ..PretrainConfig::default()
    }
}

fn lines(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn weights(dir: &Path) -> std::collections::BTreeMap<String, kiln::engine::Tensor> {
    checkpoint::save::named_tensors(&checkpoint::load(dir).unwrap()).unwrap()
}

fn run(model: &Path, out: &Path, cfg: &PretrainConfig, resume: bool) -> kiln::train::Summary {
    pretrain(
        model,
        out,
        cfg,
        resume,
        &AtomicBool::new(false),
        |_| {},
        |_| {},
    )
    .unwrap()
}

#[test]
fn electra_pretraining_learns_and_writes_both_models() {
    let dir = scratch("learn");
    // A new ELECTRA (masked-LM head, as `kiln init` makes it): the run gives it a
    // discriminator head in place of that.
    let model = fresh_tiny_model(Arch::Electra, &dir.join("init"));
    let out = dir.join("out");
    let cfg = config(40);
    let s = run(&model, &out, &cfg, false);
    assert_eq!(s.step, 40);
    let l = lines(&out);
    for line in &l {
        for k in [
            "loss",
            "gen_loss",
            "gen_accuracy",
            "disc_loss",
            "disc_accuracy",
            "replaced_fraction",
        ] {
            assert!(line[k].as_f64().is_some_and(f64::is_finite), "{k}: {line}");
        }
        // The logged loss is the joint one.
        let (g, d, t) = (
            line["gen_loss"].as_f64().unwrap(),
            line["disc_loss"].as_f64().unwrap(),
            line["loss"].as_f64().unwrap(),
        );
        assert!((g + 50.0 * d - t).abs() < 1e-3 * t.abs().max(1.0), "{line}");
        let r = line["replaced_fraction"].as_f64().unwrap();
        assert!(r > 0.0 && r < 0.3, "replaced fraction {r}");
    }
    let mean = |k: &str, from: usize, to: usize| {
        l[from..to]
            .iter()
            .map(|x| x[k].as_f64().unwrap())
            .sum::<f64>()
            / (to - from) as f64
    };
    let n = l.len();
    for k in ["loss", "gen_loss", "disc_loss"] {
        let (first, last) = (mean(k, 0, 5), mean(k, n - 5, n));
        assert!(last < 0.9 * first, "{k}: {first} -> {last}");
    }
    let last = l.last().unwrap();
    for k in [
        "valid_loss",
        "valid_gen_loss",
        "valid_gen_accuracy",
        "valid_disc_loss",
        "valid_disc_accuracy",
        "valid_replaced_fraction",
    ] {
        assert!(last[k].as_f64().is_some_and(f64::is_finite), "{k}: {last}");
    }
    // Two complete model directories; the generator is narrower and shares the tables.
    let disc = checkpoint::load(&out.join("discriminator")).unwrap();
    let generator = checkpoint::load(&out.join("generator")).unwrap();
    assert!(disc.rtd_head.is_some() && disc.mlm_head.is_none());
    assert!(generator.mlm_head.is_some() && generator.rtd_head.is_none());
    assert!(disc.tokenizer.is_some() && generator.tokenizer.is_some());
    let (dc, gc) = (disc.config(), generator.config());
    assert_eq!(gc.hidden_size, dc.hidden_size / 2);
    assert_eq!(gc.num_heads, dc.num_heads / 2);
    assert_eq!(gc.embedding_size, dc.embedding_size);
    assert_eq!(gc.num_layers, dc.num_layers);
    let (de, ge) = (&disc.model.embeddings, &generator.model.embeddings);
    assert_eq!(de.word.weight, ge.word.weight);
    assert_eq!(de.position, ge.position);
    assert_eq!(de.token_type, ge.token_type);
    assert_eq!(
        de.norm.as_ref().map(|n| &n.weight),
        ge.norm.as_ref().map(|n| &n.weight)
    );
    assert!(
        ge.project.is_some(),
        "the generator projects the tables to its width"
    );
    let raw = json(&out.join("discriminator/config.json"));
    assert_eq!(raw["architectures"][0], "ElectraForPreTraining");
    let raw = json(&out.join("generator/config.json"));
    assert_eq!(raw["architectures"][0], "ElectraForMaskedLM");
    // The generator fills masks like any masked LM.
    let tok = generator.tokenizer().unwrap();
    let filled =
        kiln::infer::fill_mask::fill_mask(&generator, tok, "the [MASK] fell from the tree", 3)
            .unwrap();
    assert_eq!(filled.len(), 1);
    assert_eq!(filled[0].len(), 3);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn interrupted_electra_run_resumes_bit_identically() {
    // The parity fixture: odd sizes (tables 20 wide, hidden 36, 3 heads), dropout 0.1.
    let model = fixture("tiny-electra-disc");
    let mut cfg = config(7);
    cfg.train.save_every = 3;
    cfg.train.grad_accum = 2;
    let full = scratch("full");
    run(&model, &full, &cfg, false);
    let part = scratch("part");
    let stop = AtomicBool::new(false);
    let s = pretrain(
        &model,
        &part,
        &cfg,
        false,
        &stop,
        |_| {},
        |p| {
            if p.step == 4 {
                stop.store(true, Ordering::SeqCst);
            }
        },
    )
    .unwrap();
    assert!(s.interrupted && s.step == 4);
    // The generator lives in the checkpoint's optimizer state: a fresh one (not restored)
    // would make both models differ below.
    let s = run(&model, &part, &cfg, true);
    assert_eq!(s.step, 7);
    for sub in ["discriminator", "generator"] {
        let (a, b) = (weights(&full.join(sub)), weights(&part.join(sub)));
        assert_eq!(a.len(), b.len());
        for (name, t) in &a {
            assert_eq!(
                t.data(),
                b[name].data(),
                "{sub}: {name} differs after resuming"
            );
        }
    }
    // Every figure of every step, timing aside.
    let figures = |out: &Path| {
        let mut l = lines(out);
        l.iter_mut().for_each(|x| {
            x.as_object_mut().unwrap().remove("tokens_per_s");
        });
        l
    };
    assert_eq!(
        figures(&full),
        figures(&part),
        "metrics differ after resuming"
    );
    std::fs::remove_dir_all(full).unwrap();
    std::fs::remove_dir_all(part).unwrap();
}

#[test]
fn electra_needs_an_electra_model() {
    let out = scratch("bert");
    let err = pretrain(
        &fixture("tiny-bert"),
        &out,
        &config(2),
        false,
        &AtomicBool::new(false),
        |_| {},
        |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("--arch electra"), "{err}");
    let mut bad = config(2);
    bad.generator_scale = 1.5;
    let err = pretrain(
        &fixture("tiny-electra-disc"),
        &out,
        &bad,
        false,
        &AtomicBool::new(false),
        |_| {},
        |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("--generator-scale"), "{err}");
    let _ = std::fs::remove_dir_all(out);
}
