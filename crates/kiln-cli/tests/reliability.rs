//! Faults a training run must survive without losing work: two runs on one output directory,
//! SIGTERM, a full disk, and SIGKILL at random moments during checkpoint saves.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../kiln/tests/fixtures")
        .join(name)
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-rel-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// `kiln pretrain` of the tiny BERT into `out`, one thread, `steps` steps, plus `extra` flags.
fn pretrain_cmd(out: &Path, steps: u64, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.args(["pretrain", "--model"])
        .arg(fixture("tiny-bert"))
        .arg("--out")
        .arg(out)
        .args(["--objective", "mlm", "--corpus"])
        .arg(fixture("apple_sentences.txt"))
        .args(["--seq-len", "16", "--batch-size", "4", "--lr", "3e-3"])
        .args(["--seed", "5", "--log-every", "1", "--threads", "1"])
        .args(["--max-steps", &steps.to_string()])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// A child process killed when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Running {
    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's PID.
        assert_eq!(unsafe { libc::kill(self.0.id() as i32, sig) }, 0);
    }

    /// Waits for the exit; returns (exit code or None when killed by a signal, stderr).
    fn finish(mut self) -> (Option<i32>, String) {
        let status = self.0.wait().unwrap();
        let mut err = String::new();
        if let Some(mut e) = self.0.stderr.take() {
            use std::io::Read;
            e.read_to_string(&mut err).unwrap();
        }
        (status.code(), err)
    }
}

fn spawn(mut c: Command) -> Running {
    Running(c.spawn().unwrap())
}

/// Polls until `cond` holds (panics after 60 s).
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < Duration::from_secs(60), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn temporaries(dir: &Path) -> Vec<String> {
    names(dir)
        .into_iter()
        .filter(|n| n.contains(".tmp"))
        .collect()
}

fn checkpoint_steps(dir: &Path) -> Vec<u64> {
    let mut v: Vec<u64> = names(dir)
        .iter()
        .filter_map(|n| n.strip_prefix("checkpoint-")?.parse().ok())
        .collect();
    v.sort();
    v
}

fn metrics_lines(out: &Path) -> usize {
    std::fs::read_to_string(out.join("metrics.jsonl")).map_or(0, |t| t.lines().count())
}

fn weights(dir: &Path) -> std::collections::BTreeMap<String, kiln::engine::Tensor> {
    let p = kiln::checkpoint::load(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    kiln::checkpoint::save::named_tensors(&p).unwrap()
}

/// Every checkpoint directory is complete: the model loads, the trainer state parses, and the
/// optimizer moments are readable.
fn assert_checkpoints_complete(out: &Path) {
    for step in checkpoint_steps(out) {
        let dir = out.join(format!("checkpoint-{step}"));
        weights(&dir);
        let st: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("trainer_state.json")).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        assert_eq!(st["step"].as_u64(), Some(step), "{}", dir.display());
        kiln::checkpoint::WeightStore::open_files(&[dir.join("optimizer.safetensors")])
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    }
}

#[test]
fn a_second_run_on_a_busy_directory_is_refused_with_the_first_ones_pid() {
    let out = scratch("busy");
    let first = spawn(pretrain_cmd(&out, 1_000_000, &["--save-every", "0"]));
    wait_for("the first run's first step", || metrics_lines(&out) > 0);
    let pid = first.0.id();
    let (code, err) = spawn(pretrain_cmd(&out, 5, &["--resume"])).finish();
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&format!("PID {pid}")), "{err}");
    let (code, err) = spawn(pretrain_cmd(&out, 5, &["--overwrite"])).finish();
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&format!("PID {pid}")), "{err}");
    // A lock dies with its process, however it ends: after kill -9 the directory is free.
    first.signal(libc::SIGKILL);
    let _ = first.finish();
    let (code, err) = spawn(pretrain_cmd(&out, 3, &["--overwrite"])).finish();
    assert_eq!(code, Some(0), "{err}");
    std::fs::remove_dir_all(out).unwrap();
}

#[test]
fn sigterm_saves_a_checkpoint_like_ctrl_c_and_the_run_resumes() {
    let out = scratch("sigterm");
    // No periodic saves: whatever is on disk afterwards came from the signal.
    let run = spawn(pretrain_cmd(
        &out,
        1_000_000,
        &["--save-every", "0", "--save-minutes", "0"],
    ));
    wait_for("a few steps", || metrics_lines(&out) >= 3);
    run.signal(libc::SIGTERM);
    let (code, err) = run.finish();
    assert_eq!(code, Some(130), "{err}");
    assert!(err.contains("--resume"), "{err}");
    let steps = checkpoint_steps(&out);
    assert_eq!(steps.len(), 1, "{:?}", names(&out));
    assert!(steps[0] >= 3);
    assert_checkpoints_complete(&out);
    let (code, err) = spawn(pretrain_cmd(&out, steps[0] + 2, &["--resume"])).finish();
    assert_eq!(code, Some(0), "{err}");
    assert!(checkpoint_steps(&out).contains(&(steps[0] + 2)));
    std::fs::remove_dir_all(out).unwrap();
}

#[test]
fn runs_save_periodically_by_default() {
    // No checkpoint flags: the default saves at step 500 (every 500 steps or 10 minutes), as
    // well as at the end.
    let out = scratch("default-save");
    let (code, err) = spawn(pretrain_cmd(&out, 501, &[])).finish();
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(checkpoint_steps(&out), vec![500, 501]);
    std::fs::remove_dir_all(out).unwrap();
}

/// A small private file system (tmpfs in a new mount namespace) for `script`, run by sh with
/// KILN and FIX set; None where namespaces or tmpfs are not available to this user.
fn in_small_filesystem(size: &str, script: &str) -> Option<(i32, String, String)> {
    let probe = Command::new("unshare")
        .args(["-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"])
        .output()
        .ok()?;
    if !probe.status.success() {
        eprintln!(
            "skipped: no private tmpfs here ({})",
            String::from_utf8_lossy(&probe.stderr).trim()
        );
        return None;
    }
    let mnt = scratch("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let full = format!(
        "mount -t tmpfs -o size={size} tmpfs '{}' && cd '{}' && {script}",
        mnt.display(),
        mnt.display()
    );
    let o = Command::new("unshare")
        .args(["-rm", "sh", "-c", &full])
        .env("KILN", env!("CARGO_BIN_EXE_kiln"))
        .env("FIX", fixture(""))
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&mnt);
    Some((
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    ))
}

#[test]
fn a_full_disk_names_the_directory_the_space_and_the_last_good_checkpoint() {
    // The tiny model is 1.1 MB; a checkpoint (model + two AdamW moments) 3.3 MB. In 6 MB the
    // output model and the first checkpoint fit, the second does not.
    let script = "$KILN pretrain --model $FIX/tiny-bert --out run --objective mlm \
        --corpus $FIX/apple_sentences.txt --seq-len 16 --batch-size 4 --max-steps 4 \
        --save-every 1 --keep-last 3 --threads 1; echo exit=$?; ls -a run";
    let Some((_, out, err)) = in_small_filesystem("6m", script) else {
        return;
    };
    assert!(out.contains("exit=1"), "{out}\n{err}");
    assert!(err.contains("no space left"), "{err}");
    assert!(err.contains("run") && err.contains("MB"), "{err}");
    assert!(err.contains("checkpoint-1"), "{err}");
    assert!(!err.contains(" 0 MB free"), "{err}");
    // The failed save cleaned up after itself: no temporaries fill the disk for the resume.
    assert!(!out.contains(".tmp"), "{out}");
    assert!(out.contains("checkpoint-1"), "{out}");
}

/// A splitmix64 stream: the kill moments are random but the same on every run of the test.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }
}

#[test]
fn killed_during_saves_then_resumed_equals_the_uninterrupted_run() {
    const STEPS: u64 = 30;
    let flags = ["--save-every", "1", "--keep-last", "2"];
    let full = scratch("kill-full");
    let (code, err) = spawn(pretrain_cmd(&full, STEPS, &flags)).finish();
    assert_eq!(code, Some(0), "{err}");

    let out = scratch("kill-part");
    let mut rng = Rng(2026);
    let mut caught_mid_save = 0;
    for round in 0..12 {
        let done = checkpoint_steps(&out).last().copied().unwrap_or(0);
        if done >= STEPS - 2 {
            break;
        }
        let mode = if done > 0 { "--resume" } else { "--overwrite" };
        let run = spawn(pretrain_cmd(
            &out,
            STEPS,
            &[flags[0], flags[1], flags[2], flags[3], mode],
        ));
        // Kill while the k-th save of this run is being written (or, every third round, at a
        // random moment), a few hundred microseconds into it.
        if round % 3 == 2 && done + 12 < STEPS {
            std::thread::sleep(Duration::from_millis(20 + rng.below(200)));
        } else {
            let k = 1 + rng.below(3);
            wait_for("a save in progress", || {
                names(&out).iter().any(|n| {
                    n.strip_prefix(".tmp-checkpoint-")
                        .and_then(|r| r.split('-').next()?.parse::<u64>().ok())
                        .is_some_and(|s| s >= done + k)
                }) || run_ended(&out, STEPS)
            });
            std::thread::sleep(Duration::from_micros(rng.below(800)));
        }
        run.signal(libc::SIGKILL);
        let (code, _) = run.finish();
        assert_eq!(code, None, "round {round}: the run ended before the kill");
        if !temporaries(&out).is_empty() {
            caught_mid_save += 1;
        }
        // No half-written checkpoint under a final name, whatever the moment.
        assert_checkpoints_complete(&out);
    }
    eprintln!("{caught_mid_save} kills left a save half-written");
    assert!(
        caught_mid_save > 0,
        "no kill landed during a save; the test proves nothing"
    );
    let (code, err) = spawn(pretrain_cmd(&out, STEPS, &[flags[0], flags[1], "--resume"])).finish();
    assert_eq!(code, Some(0), "{err}");
    assert!(temporaries(&out).is_empty(), "{:?}", names(&out));
    assert_checkpoints_complete(&out);
    assert_eq!(
        weights(&out),
        weights(&full),
        "resumed weights differ from the uninterrupted run"
    );
    std::fs::remove_dir_all(full).unwrap();
    std::fs::remove_dir_all(out).unwrap();
}

/// Whether the run in `out` reached its last step (so no further save will come).
fn run_ended(out: &Path, steps: u64) -> bool {
    checkpoint_steps(out).last() == Some(&steps)
}
