//! The pre-training loop on tiny models: it learns, accumulation averages, and a run that is
//! interrupted after a checkpoint and resumed ends with bit-identical weights.

mod common;

use common::*;
use kiln::checkpoint;
use kiln::train::{pretrain, Objective, PretrainConfig, TrainConfig};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-pt-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn config(objective: Objective, steps: u64) -> PretrainConfig {
    PretrainConfig {
        objective,
        corpus: vec![fixture("apple_sentences.txt")],
        valid: vec![fixture("apple_sentences.txt")],
        seq_len: 16,
        eval_sequences: 8,
        train: TrainConfig {
            batch_size: 4,
            max_steps: Some(steps),
            lr: 3e-3,
            warmup_steps: 2,
            log_every: 1,
            eval_every: 0,
            seed: 5,
            ..TrainConfig::default()
        },
        ..PretrainConfig::default()
    }
}

fn losses(out: &std::path::Path) -> Vec<f32> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap() as f32
        })
        .collect()
}

#[test]
fn mlm_and_clm_pretraining_learn() {
    for (model, objective) in [("tiny-bert", Objective::Mlm), ("tiny-gpt2", Objective::Clm)] {
        let out = scratch(&format!("learn-{model}"));
        let never = AtomicBool::new(false);
        let s = pretrain(
            &fixture(model),
            &out,
            &config(objective, 25),
            false,
            &never,
            |_| {},
            |_| {},
        )
        .unwrap();
        assert_eq!(s.step, 25);
        let l = losses(&out);
        let (first, last) = (
            l[..3].iter().sum::<f32>() / 3.0,
            l[l.len() - 3..].iter().sum::<f32>() / 3.0,
        );
        assert!(last < 0.8 * first, "{model}: loss {first} -> {last}");
        assert!(s.valid_loss.is_some());
        // The output directory is a loadable model, and checkpoints hold the trainer state.
        let p = checkpoint::load(&out).unwrap();
        assert_eq!(
            p.config().arch,
            checkpoint::load(&fixture(model)).unwrap().config().arch
        );
        assert!(out.join("checkpoint-25/trainer_state.json").exists());
        assert!(out.join("checkpoint-25/optimizer.safetensors").exists());
        std::fs::remove_dir_all(out).unwrap();
    }
}

#[test]
fn whole_word_masking_trains() {
    let out = scratch("wwm");
    let cfg = PretrainConfig {
        whole_word_mask: true,
        ..config(Objective::Mlm, 4)
    };
    let s = pretrain(
        &fixture("tiny-bert"),
        &out,
        &cfg,
        false,
        &AtomicBool::new(false),
        |_| {},
        |_| {},
    )
    .unwrap();
    assert_eq!(s.step, 4);
    assert!(s.loss.is_finite());
    std::fs::remove_dir_all(out).unwrap();
}

#[test]
fn resumed_run_is_bit_identical_to_uninterrupted() {
    for (model, objective) in [("tiny-bert", Objective::Mlm), ("tiny-gpt2", Objective::Clm)] {
        let mut cfg = config(objective, 7);
        cfg.train.save_every = 3;
        cfg.train.grad_accum = 2;
        let full = scratch(&format!("full-{model}"));
        pretrain(
            &fixture(model),
            &full,
            &cfg,
            false,
            &AtomicBool::new(false),
            |_| {},
            |_| {},
        )
        .unwrap();

        let part = scratch(&format!("part-{model}"));
        stopped_at(&fixture(model), &part, &cfg, 4); // as Ctrl-C would
        let s = pretrain(
            &fixture(model),
            &part,
            &cfg,
            true,
            &AtomicBool::new(false),
            |_| {},
            |_| {},
        )
        .unwrap();
        assert_eq!(s.step, 7);
        let a = checkpoint::save::named_tensors(&checkpoint::load(&full).unwrap()).unwrap();
        let b = checkpoint::save::named_tensors(&checkpoint::load(&part).unwrap()).unwrap();
        assert_eq!(
            a, b,
            "{model}: resumed weights differ from the uninterrupted run"
        );
        assert_eq!(losses(&full), losses(&part), "{model}: metrics differ");
        // keep_last = 2
        assert_eq!(kiln::train::state::checkpoints(&full).len(), 2);
        std::fs::remove_dir_all(full).unwrap();
        std::fs::remove_dir_all(part).unwrap();
    }
}

#[test]
fn accumulation_averages_like_one_big_batch() {
    // Two micro-batches, each weighted by its share of the targets (as the trainer does), give
    // the gradient of one batch holding all their sequences. (The 1e-6 floor covers the
    // attention key bias, whose gradient is exactly zero up to rounding.)
    use kiln::model::Batch;
    use kiln::train::backprop::{clm_loss, mlm_loss, zeros_like};
    let p = checkpoint::load(&fixture("tiny-gpt2")).unwrap();
    let seqs: Vec<Vec<u32>> = (0..4)
        .map(|k| {
            (0..9 + 2 * k)
                .map(|i| ((i * 37 + k * 11) % 399) as u32 + 1)
                .collect()
        })
        .collect();
    let refs: Vec<(&[u32], Option<&[u32]>)> = seqs.iter().map(|s| (&s[..], None)).collect();
    let mut whole = zeros_like(&p);
    let loss = clm_loss(&p, &Batch::packed(&refs).unwrap(), &mut whole, 1.0, None).unwrap();
    let counts = [
        seqs[0].len() + seqs[1].len() - 2,
        seqs[2].len() + seqs[3].len() - 2,
    ];
    let total = (counts[0] + counts[1]) as f32;
    let mut acc = zeros_like(&p);
    let mut acc_loss = 0.0;
    for (k, part) in refs.chunks(2).enumerate() {
        let share = counts[k] as f32 / total;
        acc_loss +=
            share * clm_loss(&p, &Batch::packed(part).unwrap(), &mut acc, share, None).unwrap();
    }
    assert!((loss - acc_loss).abs() < 1e-5, "{loss} vs {acc_loss}");
    let (a, b) = (
        checkpoint::save::named_tensors(&whole).unwrap(),
        checkpoint::save::named_tensors(&acc).unwrap(),
    );
    for (n, t) in &a {
        let scale = t.data().iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        assert!(
            max_diff(t.data(), b[n].data()) <= (1e-4 * scale).max(1e-6),
            "{n}"
        );
    }
    // MLM: the same with masked positions.
    let p = checkpoint::load(&fixture("tiny-bert")).unwrap();
    let seqs: Vec<Vec<u32>> = (0..4)
        .map(|k| {
            (0..12)
                .map(|i| ((i * 31 + k * 7) % 240) as u32 + 5)
                .collect()
        })
        .collect();
    let refs: Vec<(&[u32], Option<&[u32]>)> = seqs.iter().map(|s| (&s[..], None)).collect();
    let pos = [1usize, 5, 14, 20, 30, 33, 40, 47];
    let tg: Vec<i64> = pos.iter().map(|&r| ((r * 13) % 200) as i64 + 5).collect();
    let mut whole = zeros_like(&p);
    let loss = mlm_loss(
        &p,
        &Batch::packed(&refs).unwrap(),
        &pos,
        &tg,
        &mut whole,
        1.0,
        None,
    )
    .unwrap();
    let mut acc = zeros_like(&p);
    let first: Vec<usize> = pos.iter().cloned().filter(|&r| r < 24).collect();
    let second: Vec<usize> = pos.iter().filter(|&&r| r >= 24).map(|r| r - 24).collect();
    let share = first.len() as f32 / pos.len() as f32;
    let l1 = mlm_loss(
        &p,
        &Batch::packed(&refs[..2]).unwrap(),
        &first,
        &tg[..first.len()],
        &mut acc,
        share,
        None,
    )
    .unwrap();
    let l2 = mlm_loss(
        &p,
        &Batch::packed(&refs[2..]).unwrap(),
        &second,
        &tg[first.len()..],
        &mut acc,
        1.0 - share,
        None,
    )
    .unwrap();
    assert!((loss - (share * l1 + (1.0 - share) * l2)).abs() < 1e-5);
    let (a, b) = (
        checkpoint::save::named_tensors(&whole).unwrap(),
        checkpoint::save::named_tensors(&acc).unwrap(),
    );
    for (n, t) in &a {
        let scale = t.data().iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        assert!(
            max_diff(t.data(), b[n].data()) <= (1e-4 * scale).max(1e-6),
            "{n}"
        );
    }
}

#[test]
fn bad_settings_name_the_flag() {
    let never = AtomicBool::new(false);
    let out = scratch("bad");
    let err = pretrain(
        &fixture("tiny-gpt2"),
        &out,
        &{
            let mut c = config(Objective::Clm, 1);
            c.train.max_steps = None;
            c
        },
        false,
        &never,
        |_| {},
        |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("--max-steps"), "{err}");
    let err = pretrain(
        &fixture("tiny-gpt2"),
        &out,
        &config(Objective::Mlm, 1),
        false,
        &never,
        |_| {},
        |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("MLM head"), "{err}");
    let err = pretrain(
        &fixture("tiny-gpt2"),
        &out,
        &config(Objective::Clm, 1),
        true,
        &never,
        |_| {},
        |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("--resume"), "{err}");
    let _ = std::fs::remove_dir_all(out);
}

#[test]
fn valid_fraction_conflicts_with_valid() {
    let out = scratch("vf");
    let err = pretrain(
        &fixture("tiny-gpt2"),
        &out,
        &PretrainConfig {
            valid_fraction: Some(0.1),
            ..config(Objective::Clm, 1)
        },
        false,
        &AtomicBool::new(false),
        |_| {},
        |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("--valid-fraction"), "{err}");
    let _ = std::fs::remove_dir_all(out);
}

#[test]
fn valid_fraction_evaluates_on_held_out_texts() {
    let out = scratch("vf-ok");
    let mut cfg = PretrainConfig {
        valid: Vec::new(),
        valid_fraction: Some(0.25),
        ..config(Objective::Clm, 4)
    };
    cfg.train.eval_every = 2;
    let s = pretrain(
        &fixture("tiny-gpt2"),
        &out,
        &cfg,
        false,
        &AtomicBool::new(false),
        |_| {},
        |_| {},
    )
    .unwrap();
    assert!(s.valid_loss.is_some_and(f32::is_finite));
    let _ = std::fs::remove_dir_all(out);
}

#[test]
fn non_finite_loss_stops_with_the_last_good_checkpoint() {
    let out = scratch("nan");
    // An absurd learning rate blows the weights up within a few steps.
    let mut cfg = config(Objective::Clm, 40);
    cfg.train = TrainConfig {
        lr: 1e12,
        warmup_steps: 0,
        clip_norm: 0.0,
        save_every: 1,
        keep_last: 50,
        ..cfg.train
    };
    let mut seen = Vec::new();
    let err = pretrain(
        &fixture("tiny-gpt2"),
        &out,
        &cfg,
        false,
        &AtomicBool::new(false),
        |_| {},
        |p| seen.push(p.step),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("the loss is") && err.contains("last good checkpoint"),
        "{err}"
    );
    // Every checkpoint on disk is a complete, loadable model with finite weights.
    let last = *seen.last().expect("at least one good step");
    let ck = out.join(format!("checkpoint-{last}"));
    let p = checkpoint::load(&ck).unwrap();
    let _ = p;
    assert!(err.contains(&format!("checkpoint-{last}")), "{err}");
    let _ = std::fs::remove_dir_all(out);
}

#[test]
fn toml_settings_fill_both_levels_and_unknown_keys_are_named() {
    let dir = scratch("toml");
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("run.toml");
    std::fs::write(
        &f,
        "objective = \"clm\"\ncorpus = [\"a.txt\"]\nlr = 0.001\nmax_steps = 9\nseq_len = 32\n",
    )
    .unwrap();
    let c = PretrainConfig::from_toml(&f).unwrap();
    assert_eq!(c.objective, Objective::Clm);
    assert_eq!(
        (c.train.lr, c.train.max_steps, c.seq_len),
        (1e-3, Some(9), 32)
    );
    assert_eq!(c.train.batch_size, TrainConfig::default().batch_size);
    std::fs::write(&f, "lr = 0.001\n\nlearning_rate = 0.1\n").unwrap();
    let err = PretrainConfig::from_toml(&f).unwrap_err().to_string();
    assert!(
        err.contains("run.toml") && err.contains("line 3") && err.contains("learning_rate"),
        "{err}"
    );
    // A value of the wrong type names its key and line (also inside the flattened loop
    // settings).
    std::fs::write(&f, "seq_len = 32\n# speed\nlr = \"fast\"\n").unwrap();
    let err = PretrainConfig::from_toml(&f).unwrap_err().to_string();
    assert!(
        err.contains("run.toml") && err.contains("lr (line 3)") && err.contains("fast"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// Runs `pretrain` to the end (or its error) with no reports.
fn run_pt(
    model: &std::path::Path,
    out: &std::path::Path,
    cfg: &PretrainConfig,
    resume: bool,
) -> kiln::Result<kiln::train::Summary> {
    pretrain(
        model,
        out,
        cfg,
        resume,
        &AtomicBool::new(false),
        |_| {},
        |_| {},
    )
}

/// A new run stopped (as by Ctrl-C) after `step` steps.
fn stopped_at(
    model: &std::path::Path,
    out: &std::path::Path,
    cfg: &PretrainConfig,
    step: u64,
) -> kiln::train::Summary {
    let stop = AtomicBool::new(false);
    let s = pretrain(
        model,
        out,
        cfg,
        false,
        &stop,
        |_| {},
        |p| {
            if p.step == step {
                stop.store(true, Ordering::SeqCst);
            }
        },
    )
    .unwrap();
    assert!(s.interrupted && s.step == step);
    s
}

/// The notes a run reports before its first step (or its error).
fn notes_of(
    model: &std::path::Path,
    out: &std::path::Path,
    cfg: &PretrainConfig,
    resume: bool,
) -> kiln::Result<Vec<String>> {
    let mut notes = Vec::new();
    pretrain(
        model,
        out,
        cfg,
        resume,
        &AtomicBool::new(false),
        |s| notes = s.notes.clone(),
        |_| {},
    )?;
    Ok(notes)
}

fn weights(dir: &std::path::Path) -> std::collections::BTreeMap<String, kiln::engine::Tensor> {
    checkpoint::save::named_tensors(&checkpoint::load(dir).unwrap()).unwrap()
}

#[test]
fn a_new_run_refuses_an_output_directory_holding_another_run() {
    let out = scratch("reuse");
    let bert = fixture("tiny-bert");
    let cfg = config(Objective::Mlm, 3);
    run_pt(&bert, &out, &cfg, false).unwrap();
    let first = weights(&out);
    // A second run into the same directory would have deleted this run's checkpoints.
    let mut other = config(Objective::Mlm, 2);
    other.train.lr = 1e-3;
    let err = run_pt(&bert, &out, &other, false).unwrap_err().to_string();
    assert!(
        err.contains("checkpoint-3") && err.contains("--resume") && err.contains("--overwrite"),
        "{err}"
    );
    assert_eq!(weights(&out), first, "the refused run changed the model");
    assert!(out.join("checkpoint-3").exists());
    // A directory with other files is refused too, naming them.
    let busy = scratch("busy");
    std::fs::create_dir_all(&busy).unwrap();
    std::fs::write(busy.join("notes.txt"), "mine").unwrap();
    let err = run_pt(&bert, &busy, &cfg, false).unwrap_err().to_string();
    assert!(
        err.contains("notes.txt") && err.contains("--overwrite"),
        "{err}"
    );
    // --overwrite starts over: the old run's checkpoints and metrics are gone.
    other.train.overwrite = true;
    let notes = notes_of(&bert, &out, &other, false).unwrap();
    assert!(notes.iter().any(|n| n.contains("--overwrite")), "{notes:?}");
    assert!(!out.join("checkpoint-3").exists());
    assert!(out.join("checkpoint-2").exists());
    assert_eq!(losses(&out).len(), 2, "metrics of the old run kept");
    // --resume and --overwrite together make no sense.
    let err = run_pt(&bert, &out, &other, true).unwrap_err().to_string();
    assert!(
        err.contains("--resume") && err.contains("--overwrite"),
        "{err}"
    );
    std::fs::remove_dir_all(out).unwrap();
    std::fs::remove_dir_all(busy).unwrap();
}

#[test]
fn the_output_directory_cannot_be_the_model() {
    let dir = scratch("same");
    copy_dir(&fixture("tiny-bert"), &dir);
    let before = weights(&dir);
    let mut cfg = config(Objective::Mlm, 2);
    cfg.train.overwrite = true;
    let err = run_pt(&dir, &dir, &cfg, false).unwrap_err().to_string();
    assert!(err.contains("--model"), "{err}");
    assert_eq!(weights(&dir), before);
    // Nor may --overwrite delete a model that lies inside --out.
    let out = scratch("outer");
    copy_dir(&fixture("tiny-bert"), &out.join("base"));
    let err = run_pt(&out.join("base"), &out, &cfg, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("inside --out"), "{err}");
    assert!(out.join("base/model.safetensors").exists());
    std::fs::remove_dir_all(dir).unwrap();
    std::fs::remove_dir_all(out).unwrap();
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn resume_checks_the_model_and_the_settings() {
    let out = scratch("resume-check");
    let model = scratch("resume-model");
    copy_dir(&fixture("tiny-bert"), &model);
    let mut cfg = config(Objective::Mlm, 6);
    cfg.train.save_every = 2;
    stopped_at(&model, &out, &cfg, 2);
    // Another model (same shapes, other weights) under the same path: refused.
    let moved = scratch("resume-model-moved");
    std::fs::rename(&model, &moved).unwrap();
    copy_dir(&fixture("tiny-gpt2"), &model);
    let err = run_pt(&model, &out, &cfg, true).unwrap_err().to_string();
    assert!(err.contains("another model"), "{err}");
    // Settings that change the result are refused, each named.
    let mut changed = cfg.clone();
    changed.train.lr = 1e-3;
    changed.seq_len = 12;
    changed.shuffle_buffer = 3;
    let err = run_pt(&moved, &out, &changed, true)
        .unwrap_err()
        .to_string();
    for flag in ["--lr", "--seq-len", "--shuffle-buffer"] {
        assert!(err.contains(flag), "{flag} not named: {err}");
    }
    assert!(!err.contains("--max-steps"), "{err}");
    // The same model at another path, and a longer run: allowed, and said.
    let mut longer = cfg.clone();
    longer.train.max_steps = Some(8);
    let notes = notes_of(&moved, &out, &longer, true).unwrap();
    assert!(
        notes.iter().any(|n| n.contains("--max-steps 8")),
        "{notes:?}"
    );
    assert!(out.join("checkpoint-8").exists());
    // Resuming a finished run trains nothing and says so.
    let before = weights(&out);
    let s = run_pt(&moved, &out, &longer, true).unwrap();
    assert!(s.already_finished && s.step == 8, "{s:?}");
    assert_eq!(weights(&out), before);
    // Fewer steps than the checkpoint has taken: refused.
    let err = run_pt(&moved, &out, &cfg, true).unwrap_err().to_string();
    assert!(err.contains("past the 6 steps"), "{err}");
    for d in [out, model, moved] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn a_run_removes_the_temporaries_a_killed_run_left() {
    let out = scratch("leftovers");
    let mut cfg = config(Objective::Clm, 4);
    cfg.train.save_every = 2;
    stopped_at(&fixture("tiny-gpt2"), &out, &cfg, 2);
    // What kill -9 during a save leaves: a temporary checkpoint and a half-written file.
    std::fs::create_dir_all(out.join(".tmp-checkpoint-3-4242")).unwrap();
    std::fs::write(
        out.join(".tmp-checkpoint-3-4242/model.safetensors"),
        b"half",
    )
    .unwrap();
    std::fs::write(out.join(".model.safetensors.tmp-4242"), b"half").unwrap();
    let notes = notes_of(&fixture("tiny-gpt2"), &out, &cfg, true).unwrap();
    assert!(notes.iter().any(|n| n.contains("removed 2")), "{notes:?}");
    let left: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    std::fs::remove_dir_all(out).unwrap();
}

#[test]
fn the_epoch_counts_passes_over_the_corpus_not_shuffle_pool_refills() {
    // The default pool (10,000 sequences) reads this small corpus hundreds of times over
    // before the first step; the epoch must follow the sequences trained on.
    let out = scratch("epochs");
    let cfg = config(Objective::Mlm, 10);
    assert!(cfg.shuffle_buffer >= 10_000);
    run_pt(&fixture("tiny-bert"), &out, &cfg, false).unwrap();
    let tok = kiln::tokenize::Tokenizer::from_dir(&fixture("tiny-bert"))
        .unwrap()
        .unwrap();
    let corpus = kiln::data::Corpus::new(cfg.corpus.clone(), "text").unwrap();
    let framing = kiln::data::Framing::Bert {
        cls: tok.token_to_id("[CLS]").unwrap(),
        sep: tok.token_to_id("[SEP]").unwrap(),
    };
    let mut packer = kiln::data::Packer::new(&corpus, &tok, framing, cfg.seq_len);
    while packer.epoch == 0 {
        packer.next_sequence().unwrap();
    }
    let per_pass = packer.per_pass.unwrap();
    let last: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(out.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(last["epoch"].as_u64(), Some(10 * 4 / per_pass), "{last}");
    std::fs::remove_dir_all(out).unwrap();
}
