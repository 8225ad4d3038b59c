//! Data-parallel training under `mpirun` (the `mpi` feature): two ranks at batch B give the
//! weights one process gives at batch 2B, resume is bit-identical (and may change the number
//! of ranks when the global batch stays), a killed rank ends the run with the last checkpoint
//! intact, and ranks holding different weights are stopped.
#![cfg(feature = "mpi")]

mod common;

use common::{fixture, scratch};
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn kiln() -> &'static str {
    env!("CARGO_BIN_EXE_kiln")
}

/// `mpirun -np N kiln ARGS` on loopback (shared memory only), with a time limit so a hang
/// fails the test instead of the whole run.
fn mpirun_cmd(np: usize, args: &[&str]) -> Command {
    let mut c = mpirun_base();
    c.args(["-np", &np.to_string(), kiln()]).args(args);
    c
}

/// `mpirun` with this suite's options, before the program(s) it launches.
fn mpirun_base() -> Command {
    let mut c = Command::new("mpirun");
    c.args([
        "--allow-run-as-root",
        "--oversubscribe",
        "--timeout",
        "300",
        "--mca",
        "btl",
        "self,vader",
    ])
    .stdin(Stdio::null());
    c
}

fn output_text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn mpirun(np: usize, args: &[&str]) -> String {
    let o = mpirun_cmd(np, args).output().expect("run mpirun");
    let t = output_text(&o);
    assert!(o.status.success(), "mpirun -np {np} kiln {args:?}:\n{t}");
    t
}

fn alone(args: &[&str]) -> Output {
    Command::new(kiln())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run kiln")
}

fn single(args: &[&str]) -> String {
    let o = alone(args);
    let t = output_text(&o);
    assert!(o.status.success(), "kiln {args:?}:\n{t}");
    t
}

/// A copy of a fixture model without dropout, so runs can be compared weight by weight.
fn no_dropout(name: &str, into: &Path) -> String {
    let to = into.join(name);
    std::fs::create_dir_all(&to).unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
    let path = to.join("config.json");
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for (k, v) in c.as_object_mut().unwrap() {
        if k.contains("drop") && v.is_number() {
            *v = 0.0.into();
        }
    }
    std::fs::write(&path, c.to_string()).unwrap();
    to.to_string_lossy().into_owned()
}

/// The values of a tensor that training determines. The attention keys' bias is left out: its
/// gradient is zero in exact arithmetic (softmax ignores a shift shared by a query's scores),
/// so it holds rounding noise that AdamW scales up to steps of ±lr, and it does not change
/// any output. In GPT-2 it is the middle third of `c_attn.bias`.
fn determined<'a>(name: &str, v: &'a [f32]) -> Vec<&'a [f32]> {
    if name.ends_with("attention.self.key.bias") {
        return Vec::new();
    }
    if name.ends_with("attn.c_attn.bias") {
        let h = v.len() / 3;
        return vec![&v[..h], &v[2 * h..]];
    }
    vec![v]
}

/// The largest difference between two saved models' tensors (which must have the same names),
/// over the values training determines.
fn max_diff(a: &Path, b: &Path) -> f32 {
    let read = |d: &Path| std::fs::read(d.join("model.safetensors")).unwrap();
    let (ba, bb) = (read(a), read(b));
    let (ta, tb) = (
        safetensors::SafeTensors::deserialize(&ba).unwrap(),
        safetensors::SafeTensors::deserialize(&bb).unwrap(),
    );
    let floats = |t: safetensors::tensor::TensorView| -> Vec<f32> {
        t.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    let mut names = ta.names();
    names.sort();
    let mut other = tb.names();
    other.sort();
    assert_eq!(names, other);
    let mut worst = 0.0f32;
    for name in names {
        let (x, y) = (
            floats(ta.tensor(name).unwrap()),
            floats(tb.tensor(name).unwrap()),
        );
        assert_eq!(x.len(), y.len(), "{name}");
        for (u, v) in determined(name, &x)
            .iter()
            .zip(determined(name, &y))
            .flat_map(|(u, v)| u.iter().zip(v))
        {
            worst = worst.max((u - v).abs());
        }
    }
    worst
}

fn corpus() -> String {
    fixture("apple_sentences.txt")
        .to_string_lossy()
        .into_owned()
}

fn path(dir: &Path, name: &str) -> String {
    dir.join(name).to_string_lossy().into_owned()
}

fn pretrain_args<'a>(
    model: &'a str,
    corpus: &'a str,
    objective: &'a str,
    batch: &'a str,
    out: &'a str,
) -> Vec<&'a str> {
    vec![
        "pretrain",
        "--model",
        model,
        "--objective",
        objective,
        "--corpus",
        corpus,
        "--seq-len",
        "24",
        "--batch-size",
        batch,
        "--max-steps",
        "6",
        "--lr",
        "3e-3",
        "--warmup-steps",
        "2",
        "--log-every",
        "1",
        "--save-every",
        "3",
        "--valid-fraction",
        "0.3",
        "--eval-every",
        "3",
        "--threads",
        "1",
        "--out",
        out,
    ]
}

#[test]
fn two_ranks_at_batch_b_train_the_weights_of_one_process_at_batch_2b() {
    let dir = scratch("mpi-equal");
    let text = corpus();
    for (name, objective) in [("tiny-bert", "mlm"), ("tiny-gpt2", "clm")] {
        let model = no_dropout(name, &dir);
        let (one, two) = (
            path(&dir, &format!("{name}-one")),
            path(&dir, &format!("{name}-two")),
        );
        single(&pretrain_args(&model, &text, objective, "8", &one));
        let log = mpirun(2, &pretrain_args(&model, &text, objective, "4", &two));
        let d = max_diff(Path::new(&one), Path::new(&two));
        assert!(d < 1e-5, "{objective}: 2 ranks × 4 vs 1 × 8 differ by {d}");
        // The losses logged are the global batch's, once (rank 0 writes).
        let lines = |o: &str| std::fs::read_to_string(Path::new(o).join("metrics.jsonl")).unwrap();
        let (a, b) = (lines(&one), lines(&two));
        assert_eq!(b.lines().count(), 6, "{b}");
        assert_eq!(b.matches("\"valid_loss\"").count(), 2, "{b}");
        for (x, y) in a.lines().zip(b.lines()) {
            let (x, y): (serde_json::Value, serde_json::Value) = (
                serde_json::from_str(x).unwrap(),
                serde_json::from_str(y).unwrap(),
            );
            for key in ["loss", "valid_loss"] {
                let (lx, ly) = (x[key].as_f64(), y[key].as_f64());
                assert_eq!(lx.is_some(), ly.is_some(), "{key}: {x} vs {y}");
                if let (Some(lx), Some(ly)) = (lx, ly) {
                    assert!((lx - ly).abs() < 1e-5 * lx.abs(), "{key}: {x} vs {y}");
                }
            }
        }
        // One progress summary, from rank 0.
        assert_eq!(log.matches("done at step 6/6").count(), 1, "{log}");
    }

    // Fine-tuning: a classifier on labelled examples, evaluated (by rank 0) as it trains.
    let examples = |n: usize| -> String {
        (0..n)
            .map(|i| {
                let (t, label) = match i % 3 {
                    0 => ("open water with rain", 1),
                    1 => ("every small cafe", 0),
                    _ => ("rain over the water", 1),
                };
                format!("{{\"text\": \"{t} {i}\", \"label\": {label}}}\n")
            })
            .collect()
    };
    std::fs::write(dir.join("train.jsonl"), examples(48)).unwrap();
    // Three chunks of 64 to score: both ranks evaluate a share.
    std::fs::write(dir.join("valid.jsonl"), examples(150)).unwrap();
    std::fs::write(dir.join("labels.json"), "{\"label\": [\"no\", \"yes\"]}").unwrap();
    let model = no_dropout("tiny-bert", &dir.join("cls"));
    let tune = |batch: &'static str, out: &str| -> Vec<String> {
        [
            "finetune",
            "--model",
            &model,
            "--task",
            "classify",
            "--train",
            &path(&dir, "train.jsonl"),
            "--valid",
            &path(&dir, "valid.jsonl"),
            "--labels",
            &path(&dir, "labels.json"),
            "--batch-size",
            batch,
            "--max-steps",
            "5",
            "--lr",
            "1e-3",
            "--eval-every",
            "5",
            "--threads",
            "1",
            "--out",
            out,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let (one, two) = (path(&dir, "cls-one"), path(&dir, "cls-two"));
    let a = tune("8", &one);
    single(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let b = tune("4", &two);
    mpirun(2, &b.iter().map(String::as_str).collect::<Vec<_>>());
    let d = max_diff(Path::new(&one), Path::new(&two));
    assert!(d < 1e-5, "finetune: 2 ranks × 4 vs 1 × 8 differ by {d}");
    // The evaluation, split over the ranks, scores as one process does.
    let last = |o: &str| -> serde_json::Value {
        let text = std::fs::read_to_string(Path::new(o).join("metrics.jsonl")).unwrap();
        serde_json::from_str(text.lines().last().unwrap()).unwrap()
    };
    let (x, y) = (last(&one), last(&two));
    assert_eq!(x["accuracy"], y["accuracy"], "{x} vs {y}");
    let (lx, ly) = (
        x["valid_loss"].as_f64().unwrap(),
        y["valid_loss"].as_f64().unwrap(),
    );
    assert!((lx - ly).abs() < 1e-5 * lx.abs(), "{x} vs {y}");
    std::fs::remove_dir_all(dir).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// A copy of a finished run cut back to its checkpoint at step 3 (the later one and the final
/// model removed), ready for `--resume`.
fn cut_back(run: &Path, to: &Path) -> String {
    copy_dir(run, to);
    std::fs::remove_dir_all(to.join("checkpoint-6")).unwrap();
    std::fs::remove_file(to.join("model.safetensors")).unwrap();
    to.to_string_lossy().into_owned()
}

#[test]
fn resume_under_mpi_is_bit_identical_and_may_change_the_ranks_but_not_the_global_batch() {
    let dir = scratch("mpi-resume");
    let text = corpus();
    let model = no_dropout("tiny-bert", &dir);
    let full = path(&dir, "full");
    mpirun(2, &pretrain_args(&model, &text, "mlm", "4", &full));
    let saved = std::fs::read(Path::new(&full).join("model.safetensors")).unwrap();

    let again = cut_back(Path::new(&full), &dir.join("again"));
    let mut args = pretrain_args(&model, &text, "mlm", "4", &again);
    args.push("--resume");
    mpirun(2, &args);
    let resumed = std::fs::read(Path::new(&again).join("model.safetensors")).unwrap();
    assert!(saved == resumed, "resumed under mpirun: not bit-identical");
    // The same lines but for the measured speed.
    let lines = |o: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(Path::new(o).join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                let o = v.as_object_mut().unwrap();
                o.remove("tokens_per_s");
                o.remove("allreduce_ms");
                o.remove("rank_wait_ms");
                v
            })
            .collect()
    };
    assert_eq!(lines(&full), lines(&again));

    // One process continues the 2 × 4 run at batch 8: the same global batch.
    let alone_run = cut_back(Path::new(&full), &dir.join("alone"));
    let mut args = pretrain_args(&model, &text, "mlm", "8", &alone_run);
    args.push("--resume");
    let log = single(&args);
    assert!(
        log.contains("resuming on 1 rank(s) × --batch-size 8"),
        "{log}"
    );
    let d = max_diff(Path::new(&full), Path::new(&alone_run));
    assert!(d < 1e-5, "re-sharded resume differs by {d}");

    // Another global batch is refused, saying which --batch-size keeps it.
    let other = cut_back(Path::new(&full), &dir.join("other"));
    let mut args = pretrain_args(&model, &text, "mlm", "4", &other);
    args.push("--resume");
    let o = alone(&args);
    let t = output_text(&o);
    assert!(
        !o.status.success() && t.contains("global batch of 8") && t.contains("--batch-size 8"),
        "{t}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// The PID of the `kiln` process of rank `rank` whose arguments hold `marker`.
fn rank_pid(rank: usize, marker: &str) -> Option<u32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let env = std::fs::read(e.path().join("environ")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd);
        let is_kiln = cmd.split('\0').next().is_some_and(|a| a.ends_with("/kiln"));
        let env = String::from_utf8_lossy(&env);
        if is_kiln
            && cmd.contains(marker)
            && env
                .split('\0')
                .any(|v| v == format!("OMPI_COMM_WORLD_RANK={rank}"))
        {
            return Some(pid);
        }
    }
    None
}

#[test]
fn a_killed_rank_ends_every_rank_and_the_last_checkpoint_resumes() {
    let dir = scratch("mpi-kill");
    let text = corpus();
    let model = no_dropout("tiny-bert", &dir);
    let out = path(&dir, "run");
    let mut args = pretrain_args(&model, &text, "mlm", "4", &out);
    let steps = args.iter().position(|a| *a == "--max-steps").unwrap() + 1;
    args[steps] = "100000";
    let save = args.iter().position(|a| *a == "--save-every").unwrap() + 1;
    args[save] = "2";
    let child = mpirun_cmd(2, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let first = Path::new(&out).join("checkpoint-2");
    let t0 = std::time::Instant::now();
    while !first.exists() {
        assert!(
            t0.elapsed().as_secs() < 120,
            "no checkpoint after 2 minutes"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let pid = rank_pid(1, &out).expect("rank 1's process");
    // SAFETY: a signal to a process this test started (through mpirun).
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
    let o = child.wait_with_output().unwrap();
    let t = output_text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("rank 1"), "mpirun names the dead rank:\n{t}");
    // No half-written checkpoint is left under a final name: the newest resumes.
    let last: u64 = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_string_lossy()
                .strip_prefix("checkpoint-")?
                .parse()
                .ok()
        })
        .max()
        .unwrap();
    let until = (last + 2).to_string();
    let mut args = pretrain_args(&model, &text, "mlm", "4", &out);
    args[steps] = &until;
    args[save] = "2";
    args.push("--resume");
    let log = mpirun(2, &args);
    assert!(
        log.contains(&format!("done at step {until}/{until}")),
        "{log}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn ranks_holding_different_weights_are_stopped_at_the_start() {
    let dir = scratch("mpi-diverge");
    let text = corpus();
    let a = no_dropout("tiny-bert", &dir.join("a"));
    let b = no_dropout("tiny-bert", &dir.join("b"));
    // Rank 1's copy of the model differs in one weight (a host with another copy).
    let mut p = kiln::checkpoint::load(Path::new(&b)).unwrap();
    kiln::train::backprop::parameters(&mut p)[0].1.data_mut()[0] += 1.0;
    kiln::checkpoint::save(&p, Path::new(&b), kiln::checkpoint::SaveDtype::F32).unwrap();
    let out = path(&dir, "run");
    let mut cmd = mpirun_base();
    cmd.args(["-np", "1", kiln()])
        .args(pretrain_args(&a, &text, "mlm", "4", &out))
        .args([":", "-np", "1", kiln()])
        .args(pretrain_args(&b, &text, "mlm", "4", &out));
    let o = cmd.output().unwrap();
    let t = output_text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains("step 0: the ranks' parameters diverged") && t.contains("rank 1"),
        "{t}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
