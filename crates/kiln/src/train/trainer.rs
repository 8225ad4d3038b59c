//! The training loop every task shares: gather micro-batches, accumulate their gradients
//! (weighted by their share of the step's targets), stop on a non-finite loss, clip, step AdamW
//! on the schedule, log, evaluate, keep the best model, checkpoint, stop on request, resume.
//! What differs between tasks (data, loss, evaluation) is behind [`Task`].

use super::backprop::{parameters, zeros_like};
use super::config::TrainConfig;
use super::optim::{clip_grad_norm, AdamW, Param};
use super::outdir::OutDir;
use super::schedule::Schedule;
use super::state::{checkpoints, load_checkpoint, save_checkpoint, TrainerState};
use crate::checkpoint::{self, Pretrained, SaveDtype};
use crate::engine::dropout::mix;
use crate::error::{Error, Result};
use crate::peft::Method;
use rand::SeedableRng;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// Steps completed.
    pub step: u64,
    /// Planned steps.
    pub total_steps: u64,
    /// Last training loss.
    pub loss: f32,
    /// Last held-out loss.
    pub valid_loss: Option<f32>,
    /// The best value of the selection metric and its step, when the task has one.
    pub best: Option<(u64, f64)>,
    /// The name of the selection metric.
    pub metric: Option<String>,
    /// Whether the run stopped early on request (a checkpoint was written).
    pub interrupted: bool,
    /// Whether early stopping (`patience`) ended the run.
    pub early_stopped: bool,
    /// Whether `--resume` found the run already finished (nothing was trained).
    pub already_finished: bool,
}

/// What a run trains, known once the model is set up, and what the user should know before
/// the first step.
#[derive(Clone, Debug, PartialEq)]
pub struct Started {
    /// Parameters the optimizer updates.
    pub trainable: usize,
    /// All parameters (base, additions and head).
    pub total: usize,
    /// Full, LoRA or adapters.
    pub method: Method,
    /// Base tensors trained besides the additions (`train_extra`, plus a pooler the base model
    /// lacked, which is new and so must be trained).
    pub train_extra: Vec<String>,
    /// Tokens added to the vocabulary from the training data (`extend_vocab`).
    pub added_tokens: usize,
    /// Malformed lines skipped in each data file (`skip_invalid`); files with none left out.
    pub skipped_lines: Vec<(PathBuf, usize)>,
    /// Notices from opening the output directory (see [`Start::notes`]).
    pub notes: Vec<String>,
}

impl Started {
    /// A run that trains every parameter of `p` (pre-training).
    pub fn full(p: &mut Pretrained, notes: Vec<String>) -> Self {
        let (trainable, total) = crate::peft::parameter_counts(p);
        Started {
            trainable,
            total,
            method: Method::Full,
            train_extra: Vec::new(),
            added_tokens: 0,
            skipped_lines: Vec::new(),
            notes,
        }
    }
}

/// What the trainer reports after every optimizer step (for progress bars and logs).
#[derive(Clone, Copy, Debug)]
pub struct Progress<'a> {
    /// Steps completed.
    pub step: u64,
    /// Planned steps.
    pub total_steps: u64,
    /// Training loss of this step.
    pub loss: f32,
    /// Learning rate used in this step.
    pub lr: f32,
    /// Tokens processed in this step.
    pub tokens: usize,
    /// The line appended to `metrics.jsonl` at this step, if any (log or evaluation step).
    pub metrics: Option<&'a serde_json::Value>,
}

/// One kind of training: where the examples come from, the loss, and the evaluation.
pub trait Task {
    /// A micro-batch ready for the loss.
    type Micro;
    /// Examples in one pass over the training data (for `--epochs`).
    fn examples_per_epoch(&mut self) -> Result<u64>;
    /// Moves the data position past `consumed` examples (resume).
    fn seek(&mut self, consumed: u64) -> Result<()>;
    /// Reads the next `n` examples and makes the micro-batch of those at `keep` (this rank's
    /// share, see [`crate::train::distributed`]; `0..n` in one process). Random draws (masking)
    /// are made for all `n` in order, so a share holds what the whole batch would; `rng` is a
    /// fixed stream per (step, micro).
    fn next_micro(
        &mut self,
        n: usize,
        keep: std::ops::Range<usize>,
        rng: &mut rand::rngs::StdRng,
    ) -> Result<Self::Micro>;
    /// Targets in a micro-batch (its weight in the accumulated step).
    fn targets(&self, m: &Self::Micro) -> usize;
    /// Tokens in a micro-batch (for tokens/s).
    fn tokens(&self, m: &Self::Micro) -> usize;
    /// The mean loss over the micro-batch's targets; adds `grad_scale` × its gradients into
    /// `grads`. Dropout is on (seeded) when `dropout_seed` is given.
    fn loss(
        &self,
        p: &Pretrained,
        m: &Self::Micro,
        grads: &mut Pretrained,
        grad_scale: f32,
        dropout_seed: Option<u64>,
    ) -> Result<f32>;
    /// Examples consumed so far and completed passes.
    fn position(&self) -> (u64, u64);
    /// Held-out metrics (`valid_loss` and the task's own), or `None` without held-out data.
    fn evaluate(&mut self, p: &Pretrained) -> Result<Option<serde_json::Value>>;
    /// Whether [`Task::evaluate`] splits its held-out data over the ranks of a distributed run
    /// itself (and adds up their sums); then every rank calls it. Otherwise rank 0 evaluates
    /// alone and sends the figures to the others.
    fn evaluates_sharded(&self) -> bool {
        false
    }
    /// The metric that picks the best model and whether higher is better; `None` keeps the
    /// last model (pre-training).
    fn selection(&self) -> Option<(&str, bool)> {
        None
    }
    /// Parameters the loss trains beside the model's (see [`crate::train::auxiliary`]).
    fn auxiliary(&self) -> Option<&crate::train::auxiliary::Auxiliary> {
        None
    }
    /// Figures of the step just taken beside its loss (e.g. ELECTRA's generator and
    /// discriminator losses), for the metrics line; taking them resets them.
    fn step_metrics(&self) -> Option<serde_json::Value> {
        None
    }
    /// Where the trained model is written in the output directory `out` (its `config.json`
    /// there means a model was saved).
    fn model_dir(&self, out: &Path) -> PathBuf {
        out.to_path_buf()
    }
    /// Writes the trained model(s) into the output directory `out`: `p` at [`Task::model_dir`],
    /// and whatever else the task trains (ELECTRA's generator).
    fn save_model(&self, p: &Pretrained, out: &Path) -> Result<()> {
        checkpoint::save(p, &self.model_dir(out), SaveDtype::F32)
    }
}

/// A random stream for one (step, micro-batch): reproducible without saving RNG state, so a
/// resumed run draws exactly what the uninterrupted one did.
pub(crate) fn rng_for(seed: u64, step: u64, micro: u64) -> rand::rngs::StdRng {
    // splitmix64 of the three numbers
    let mut z =
        seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ micro.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    rand::rngs::StdRng::seed_from_u64(z ^ (z >> 31))
}

fn append_metrics(path: &Path, line: &serde_json::Value) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io("open", path, e))?;
    writeln!(f, "{line}").map_err(|e| Error::io("write", path, e))
}

/// Keeps the metrics lines up to `step` (a resumed run rewrites what came after).
fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    checkpoint::atomic_write(path, kept.as_bytes())
}

/// Settings every task lets a resumed run change: how long it runs and how often it evaluates,
/// saves and logs, none of which changes the arithmetic of a step.
pub const MAY_CHANGE_ON_RESUME: &[&str] = &[
    "max_steps",
    "epochs",
    "eval_every",
    "save_every",
    "save_minutes",
    "keep_last",
    "log_every",
    "overwrite",
    "sync_check",
];

/// Settings holding file paths: compared by the file they name, not by spelling.
const PATH_SETTINGS: &[&str] = &["corpus", "valid", "train_file", "valid_file", "labels"];

/// What a run starts from: the model, optimizer and state, in its locked output directory.
pub struct Start {
    /// The model (with its checkpoint's weights when resumed).
    pub p: Pretrained,
    /// The optimizer.
    pub opt: AdamW,
    /// Where the run stands.
    pub state: TrainerState,
    /// The output directory, locked for the run.
    pub out: OutDir,
    /// What the user should know before the first step (temporaries of a crashed run removed,
    /// settings a resumed run changed).
    pub notes: Vec<String>,
}

/// The flag a setting comes from.
fn flag_of(key: &str) -> String {
    match key {
        "train_file" => "--train".into(),
        "valid_file" => "--valid".into(),
        k => format!("--{}", k.replace('_', "-")),
    }
}

/// A setting's value as compared: paths by the file they name.
fn comparable(key: &str, v: &serde_json::Value) -> serde_json::Value {
    let canon = |s: &str| {
        std::fs::canonicalize(s).map_or(s.to_string(), |p| p.to_string_lossy().into_owned())
    };
    match v {
        serde_json::Value::String(s) if PATH_SETTINGS.contains(&key) => canon(s).into(),
        serde_json::Value::Array(a) if PATH_SETTINGS.contains(&key) => a
            .iter()
            .map(|x| x.as_str().map_or(x.clone(), |s| canon(s).into()))
            .collect(),
        _ => v.clone(),
    }
}

/// The settings that differ between a checkpoint's run (`saved`) and this one (`now`): those
/// outside `may_change` (which stop the resume), and the allowed ones (said, not refused).
/// A setting the checkpoint does not record (an older Kiln) is not compared.
fn changed_settings(
    saved: &serde_json::Value,
    now: &serde_json::Value,
    may_change: &[&str],
) -> (Vec<String>, Vec<String>) {
    let (mut refused, mut allowed) = (Vec::new(), Vec::new());
    let Some(now) = now.as_object() else {
        return (refused, allowed);
    };
    for (key, v) in now {
        let Some(old) = saved.get(key) else { continue };
        if comparable(key, old) == comparable(key, v) {
            continue;
        }
        let text = format!("{} {v} (the checkpoint's run: {old})", flag_of(key));
        if may_change.contains(&key.as_str()) || MAY_CHANGE_ON_RESUME.contains(&key.as_str()) {
            allowed.push(text);
        } else {
            refused.push(text);
        }
    }
    (refused, allowed)
}

/// Opens a run in `out` (locked for the run; a crashed run's temporaries removed). A new run
/// loads `model_dir` and needs an empty `out`, or `train.overwrite` to delete the run that is
/// there. With `resume` the run continues from the latest complete checkpoint in `out`, which
/// must come from the same model and the same settings — except those in `may_change` (and
/// [`MAY_CHANGE_ON_RESUME`]), which are reported in [`Start::notes`].
pub fn start(
    model_dir: &Path,
    out: &Path,
    mut config: serde_json::Value,
    may_change: &[&str],
    train: &TrainConfig,
    resume: bool,
) -> Result<Start> {
    let world = super::distributed::world();
    if let Some(o) = config.as_object_mut() {
        o.insert("world_size".into(), world.size().into());
    }
    if !world.is_root() {
        return follow(model_dir, out, config, train, resume);
    }
    if resume && train.overwrite {
        return Err(Error::Input(
            "--resume continues the run in --out and --overwrite deletes it: give one of them"
                .into(),
        ));
    }
    let canon_model = std::fs::canonicalize(model_dir).ok();
    if out.exists() && canon_model.is_some() && std::fs::canonicalize(out).ok() == canon_model {
        return Err(Error::Input(format!(
            "--out {} is the --model directory: the run would replace the model it starts from; choose another --out",
            out.display()
        )));
    }
    let out = OutDir::lock(out)?;
    let mut notes = Vec::new();
    let removed = out.remove_temps()?;
    if !removed.is_empty() {
        notes.push(format!(
            "removed {} temporary file(s) a stopped run left in {}: {}",
            removed.len(),
            out.display(),
            removed.join(", ")
        ));
    }
    if resume {
        let Some(dir) = checkpoints(&out).pop() else {
            return Err(Error::Input(format!(
                "--resume: no checkpoint-* directory in {}; start a new run without --resume (with --overwrite if it is not empty)",
                out.display()
            )));
        };
        let (p, mut opt, mut st) = load_checkpoint(&dir)?;
        if let Some(note) = resharded(&mut st.config, &config, &dir)? {
            notes.push(note);
        }
        if let Some(made_from) = &st.model {
            let now = checkpoint::fingerprint(model_dir).map_err(|e| {
                Error::Input(format!(
                    "--resume: cannot read --model {} to check that {} was made from it: {e}",
                    model_dir.display(),
                    dir.display()
                ))
            })?;
            if &now != made_from {
                return Err(Error::Input(format!(
                    "--resume: {} continues a run of another model, not of --model {}; give that run's model, or start over with --overwrite",
                    dir.display(),
                    model_dir.display()
                )));
            }
        }
        let (refused, allowed) = changed_settings(&st.config, &config, may_change);
        if !refused.is_empty() {
            return Err(Error::Input(format!(
                "--resume: {} was made with other settings: {}; resume with the checkpoint's settings, or start over with --overwrite",
                dir.display(),
                refused.join(", ")
            )));
        }
        for a in allowed {
            notes.push(format!("resuming with a changed setting: {a}"));
        }
        st.config = config;
        opt.weight_decay = train.weight_decay;
        // The other ranks read the checkpoint once its directory is checked.
        world.barrier();
        return Ok(Start {
            p,
            opt,
            state: st,
            out,
            notes,
        });
    }
    let held = out.contents()?;
    if !held.is_empty() {
        if !train.overwrite {
            let what = match checkpoints(&out).pop() {
                Some(c) => format!(
                    "holds another run ({}); continue it with --resume, or",
                    c.file_name().unwrap_or_default().to_string_lossy()
                ),
                None => format!("is not empty ({}); choose an empty directory, or", {
                    let mut shown: Vec<String> = held.iter().take(4).cloned().collect();
                    if held.len() > 4 {
                        shown.push(format!("{} more", held.len() - 4));
                    }
                    shown.join(", ")
                }),
            };
            return Err(Error::Input(format!(
                "--out {} {what} give --overwrite to replace it",
                out.display()
            )));
        }
        if let (Some(m), Ok(o)) = (&canon_model, std::fs::canonicalize(&*out)) {
            if m.starts_with(&o) {
                return Err(Error::Input(format!(
                    "--model {} lies inside --out {}, which --overwrite would delete; choose another --out",
                    model_dir.display(),
                    out.display()
                )));
            }
        }
        out.clear_run()?;
        notes.push(format!(
            "--overwrite: removed the previous run's checkpoints, metrics and model files from {}",
            out.display()
        ));
    }
    world.barrier();
    fresh(model_dir, out, config, train, notes)
}

/// A new run: the model from `model_dir`, a fresh optimizer and state.
fn fresh(
    model_dir: &Path,
    out: OutDir,
    config: serde_json::Value,
    train: &TrainConfig,
    notes: Vec<String>,
) -> Result<Start> {
    let p = checkpoint::load(model_dir)?;
    let mut state = TrainerState::new(config);
    state.model = Some(checkpoint::fingerprint(model_dir)?);
    Ok(Start {
        p,
        opt: AdamW::new(train.weight_decay),
        state,
        out,
        notes,
    })
}

/// [`start`] on a rank other than 0 of a distributed run: once rank 0 has checked (and, with
/// `--overwrite`, cleared) the output directory, the same model or latest checkpoint, read
/// only. Rank 0 alone locks and writes the directory.
fn follow(
    model_dir: &Path,
    out: &Path,
    config: serde_json::Value,
    train: &TrainConfig,
    resume: bool,
) -> Result<Start> {
    super::distributed::world().barrier();
    let out = OutDir::follow(out);
    if resume {
        let dir = checkpoints(&out).pop().ok_or_else(|| {
            Error::Input(format!(
                "--resume: rank 0 found a checkpoint in {} that this rank cannot see; --out must be on a file system every rank reads",
                out.display()
            ))
        })?;
        let (p, mut opt, mut st) = load_checkpoint(&dir)?;
        st.config = config;
        opt.weight_decay = train.weight_decay;
        return Ok(Start {
            p,
            opt,
            state: st,
            out,
            notes: Vec::new(),
        });
    }
    fresh(model_dir, out, config, train, Vec::new())
}

/// A resumed run on another number of ranks continues the same run when the global batch
/// (`batch_size` × ranks) is the one the checkpoint's run took: the data position is global and
/// each rank's share is cut from the global batch, so the steps are the same. The checkpoint's
/// settings are then rewritten to this run's, and a note says so; another global batch is
/// refused, with the `--batch-size` that keeps it.
fn resharded(
    saved: &mut serde_json::Value,
    now: &serde_json::Value,
    dir: &Path,
) -> Result<Option<String>> {
    let num =
        |v: &serde_json::Value, k: &str, d: u64| v.get(k).and_then(|x| x.as_u64()).unwrap_or(d);
    let (was_world, was_batch) = (num(saved, "world_size", 1), num(saved, "batch_size", 0));
    let (world, batch) = (num(now, "world_size", 1), num(now, "batch_size", 0));
    if was_world == world {
        return Ok(None);
    }
    let (was, is) = (was_world * was_batch, world * batch);
    if was != is {
        let hint = if was % world == 0 {
            format!("give --batch-size {} to keep it", was / world)
        } else {
            format!("{was} sequences do not split evenly over {world} ranks; resume on a number of ranks that divides it")
        };
        return Err(Error::Input(format!(
            "--resume: {} was trained on {was_world} rank(s) × --batch-size {was_batch} = a global batch of {was}; this run has {world} × {batch} = {is}: {hint}",
            dir.display()
        )));
    }
    if let Some(o) = saved.as_object_mut() {
        o.insert("world_size".into(), world.into());
        o.insert("batch_size".into(), batch.into());
    }
    Ok(Some(format!(
        "resuming on {world} rank(s) × --batch-size {batch} (the checkpoint's run: {was_world} × {was_batch}): the same global batch of {is}"
    )))
}

/// Bytes of one checkpoint of `p`: the model (or only its adapter) and two AdamW moments per
/// trained value.
fn checkpoint_bytes(p: &mut Pretrained) -> u64 {
    let (trainable, total) = crate::peft::parameter_counts(p);
    let model = if p.peft.is_some() { trainable } else { total };
    (model as u64 + 2 * trainable as u64) * 4
}

/// Turns a full disk while saving into an error naming the directory, the space needed and the
/// last good checkpoint.
fn saving<T>(r: Result<T>, out: &OutDir, p: &mut Pretrained) -> Result<T> {
    r.map_err(|e| {
        if !super::outdir::is_disk_full(&e) {
            return e;
        }
        // The half-written save goes first, so the free space reported is what the user has.
        let _ = out.remove_temps();
        Error::DiskFull {
            dir: out.to_path_buf(),
            needed_mb: checkpoint_bytes(p).div_ceil(1 << 20),
            free: super::outdir::free_bytes(out)
                .map_or(String::new(), |b| format!(", {} MB free", b >> 20)),
            last: checkpoints(out)
                .pop()
                .map_or("none (nothing saved yet)".into(), |d| {
                    d.display().to_string()
                }),
        }
    })
}

/// Runs the loop from `start` to the planned number of steps (or an early stop), writing
/// checkpoints, `metrics.jsonl` and the final (or best) model into its output directory. `stop`
/// requests a checkpoint and a clean exit (Ctrl-C, SIGTERM); `report` sees every step.
/// `patience`: stop after this many evaluations without a better selection metric. A run that
/// fails removes the temporary files it was writing; a full disk is named as such.
pub fn run<T: Task>(
    start: Start,
    task: &mut T,
    cfg: &TrainConfig,
    patience: Option<u64>,
    stop: &AtomicBool,
    report: impl FnMut(&Progress),
) -> Result<Summary> {
    let Start {
        p, opt, state, out, ..
    } = start;
    let r = run_locked(p, opt, state, task, cfg, patience, &out, stop, report);
    if r.is_err() && super::distributed::world().is_root() {
        // Best effort: the error that stopped the run is what the user needs to see.
        let _ = out.remove_temps();
    }
    r
}

#[allow(clippy::too_many_arguments)]
fn run_locked<T: Task>(
    mut p: Pretrained,
    mut opt: AdamW,
    mut state: TrainerState,
    task: &mut T,
    cfg: &TrainConfig,
    patience: Option<u64>,
    out: &OutDir,
    stop: &AtomicBool,
    mut report: impl FnMut(&Progress),
) -> Result<Summary> {
    let kind = cfg.validate()?;
    let world = super::distributed::world();
    // Rank 0 alone writes the output directory.
    let root = world.is_root();
    let resumed = state.step > 0;
    // The output directory is the final model: its tokenizer files are there from the start.
    // A resumed run keeps the model already there (the best so far, when a metric selects).
    if root && (!resumed || !task.model_dir(out).join("config.json").exists()) {
        saving(task.save_model(&p, out), out, &mut p)?;
    }
    p.dir = task.model_dir(out);
    let total = match cfg.max_steps {
        Some(s) => s,
        None => {
            let n = task.examples_per_epoch()?;
            let per_step = (cfg.batch_size * cfg.grad_accum * world.size()) as f64;
            ((cfg.epochs.unwrap_or(1.0) * n as f64) / per_step)
                .ceil()
                .max(1.0) as u64
        }
    };
    // A resumed run's mask is its zero weights.
    let mut sparsifier = crate::compress::sparsity::Sparsifier::new(&mut p, &cfg.sparsity)?;
    if resumed && state.step >= total {
        if state.step > total {
            return Err(Error::Input(format!(
                "--resume: the checkpoint is at step {}, past the {total} steps now planned; raise --max-steps (or --epochs)",
                state.step
            )));
        }
        return Ok(Summary {
            step: state.step,
            total_steps: total,
            loss: f32::NAN,
            valid_loss: state.valid_loss,
            best: state.best,
            metric: task.selection().map(|(n, _)| n.to_string()),
            interrupted: false,
            early_stopped: false,
            already_finished: true,
        });
    }
    state.total_steps = total;
    let sched = Schedule {
        peak: cfg.lr,
        warmup_steps: cfg.warmup_steps,
        total_steps: total,
        kind,
        floor_ratio: cfg.min_lr_ratio,
    };
    task.seek(state.sequences)?;
    let metrics = out.join("metrics.jsonl");
    if root && resumed {
        truncate_metrics(&metrics, state.step)?;
    } else if root {
        let _ = std::fs::remove_file(&metrics);
    }
    let selection = task.selection().map(|(n, hi)| (n.to_string(), hi));

    if let Some(aux) = task.auxiliary() {
        aux.restore(&opt)?;
    }
    let mut grads = zeros_like(&p);
    if world.is_distributed() {
        super::distributed::check_in_sync(world, param_checksum(&mut p), state.step)?;
    }
    let mut last_loss = f32::NAN;
    let (mut tokens_since, mut since) = (0usize, Instant::now());
    // Distributed runs: time spent summing gradients since the last metrics line, and steps.
    let (mut reduce_secs, mut wait_secs, mut reduce_steps) = (0.0f64, 0.0f64, 0u64);
    let mut reduce_scratch = Vec::new();
    let (mut interrupted, mut early_stopped) = (false, false);
    let mut last_save = Instant::now();
    while state.step < total {
        let step = state.step;
        let lr = sched.lr(step);
        // Gather the micro-batches first: their target counts weight the accumulation, so N
        // micro-batches of b equal one batch of N·b (and N ranks' shares one batch).
        let mut micros = Vec::with_capacity(cfg.grad_accum);
        for k in 0..cfg.grad_accum {
            let mut rng = rng_for(cfg.seed, step, k as u64);
            micros.push(task.next_micro(
                cfg.batch_size * world.size(),
                world.shard(cfg.batch_size),
                &mut rng,
            )?);
        }
        let local_targets: usize = micros.iter().map(|m| task.targets(m)).sum();
        // Every rank stops at the same step, however the signal reached them.
        let mut agreed = [
            local_targets as f64,
            stop.load(Ordering::SeqCst) as u8 as f64,
        ];
        world.sum_f64(&mut agreed);
        if agreed[1] > 0.0 {
            interrupted = true;
            break;
        }
        let total_targets = (agreed[0] as usize).max(1);
        for (_, t, _) in parameters(&mut grads) {
            t.data_mut().fill(0.0);
        }
        if let Some(aux) = task.auxiliary() {
            aux.zero_grad();
        }
        let mut loss = 0.0f32;
        let step_tokens: usize = micros.iter().map(|m| task.tokens(m)).sum();
        for (k, m) in micros.iter().enumerate() {
            let share = task.targets(m) as f32 / total_targets as f32;
            // Dropout masks are a function of (seed, step, micro-batch, rank): exact on resume,
            // and independent between the ranks' slices.
            let mut drop_seed = mix(cfg.seed ^ mix(step * 1024 + k as u64));
            if world.rank() > 0 {
                drop_seed ^= mix(0xD0_0000 + world.rank() as u64);
            }
            let drop_seed = Some(drop_seed);
            loss += task.loss(&p, m, &mut grads, share, drop_seed)? * share;
        }
        let step_tokens = if world.is_distributed() {
            let mut sums = [loss as f64, step_tokens as f64];
            world.sum_f64(&mut sums);
            loss = sums[0] as f32;
            // The barrier splits the ranks' waiting for the slowest (uneven work) from the
            // transfer itself, so the two are reported apart.
            let t = Instant::now();
            world.barrier();
            wait_secs += t.elapsed().as_secs_f64();
            let t = Instant::now();
            sum_grads(world, &mut grads, task.auxiliary(), &mut reduce_scratch);
            reduce_secs += t.elapsed().as_secs_f64();
            reduce_steps += 1;
            sums[1] as usize
        } else {
            step_tokens
        };
        tokens_since += step_tokens;
        // Checked before the update, so the weights (and every checkpoint on disk) stay those of
        // the last good step.
        if !loss.is_finite() {
            let last = checkpoints(out)
                .pop()
                .map_or("none saved yet".into(), |d| d.display().to_string());
            return Err(Error::Input(format!(
                "step {}: the loss is {loss}; stopped (last good checkpoint: {last}); lower --lr or raise --warmup-steps, then --resume",
                step + 1
            )));
        }
        sparsifier.observe(&mut p, &mut grads, &mut opt.extra);
        let mut gparams = parameters(&mut grads);
        let grad_norm = {
            let mut slices: Vec<&mut [f32]> =
                gparams.iter_mut().map(|(_, t, _)| t.data_mut()).collect();
            let limit = if cfg.clip_norm > 0.0 {
                cfg.clip_norm
            } else {
                f32::INFINITY
            };
            match task.auxiliary() {
                None => clip_grad_norm(&mut slices, limit),
                // Auxiliary gradients count in the global norm and are clipped with it.
                Some(aux) => aux.clip(&mut slices, limit),
            }
        };
        {
            // Frozen parameters have empty gradients: the optimizer never sees them.
            let mut params: Vec<Param> = parameters(&mut p)
                .into_iter()
                .zip(gparams.iter())
                .filter(|(_, (_, g, _))| g.numel() > 0)
                .map(|((_, t, decay), (_, g, _))| Param {
                    value: t.data_mut(),
                    grad: g.data(),
                    decay,
                })
                .collect();
            opt.update(&mut params, lr)?;
        }
        if let Some(aux) = task.auxiliary() {
            aux.step(&mut opt, lr)?;
        }
        drop(gparams);
        last_loss = loss;
        state.step += 1;
        sparsifier.apply(&mut p, state.step, total, &opt.extra)?;
        (state.sequences, state.epoch) = task.position();
        let last = state.step == total;
        let mut line = None;
        if state.step.is_multiple_of(cfg.log_every.max(1)) || last {
            let secs = since.elapsed().as_secs_f64().max(1e-9);
            line = Some(serde_json::json!({
                "step": state.step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                "tokens_per_s": (tokens_since as f64 / secs).round(), "epoch": state.epoch,
            }));
            tokens_since = 0;
            since = Instant::now();
            if let (Some(o), true) = (
                line.as_mut().and_then(|l| l.as_object_mut()),
                reduce_steps > 0,
            ) {
                // What the ranks spend exchanging gradients (docs/distributed.md).
                o.insert("ranks".into(), world.size().into());
                o.insert(
                    "allreduce_ms".into(),
                    (1e3 * reduce_secs / reduce_steps as f64).into(),
                );
                o.insert(
                    "rank_wait_ms".into(),
                    (1e3 * wait_secs / reduce_steps as f64).into(),
                );
                o.insert(
                    "allreduce_mb".into(),
                    (grad_bytes(&mut grads, task.auxiliary()) as f64 / 1e6).into(),
                );
                (reduce_secs, wait_secs, reduce_steps) = (0.0, 0.0, 0);
            }
        }
        // Taken every step (they are this step's), shown on the lines that are written.
        let mut step_metrics = task.step_metrics();
        if line.is_some() {
            if let Some(m) = step_metrics.as_mut() {
                mean_over_ranks(world, m);
            }
        }
        if let (Some(l), Some(extra)) = (line.as_mut(), step_metrics) {
            if let (Some(o), Some(e)) = (l.as_object_mut(), extra.as_object()) {
                o.extend(e.clone());
            }
        }
        let mut improved = false;
        if (cfg.eval_every > 0 && state.step.is_multiple_of(cfg.eval_every)) || last {
            let ev = if task.evaluates_sharded() {
                task.evaluate(&p)?
            } else {
                let ev = if root { task.evaluate(&p)? } else { None };
                world.broadcast_json(ev)?
            };
            if let Some(ev) = ev {
                state.valid_loss = ev["valid_loss"].as_f64().map(|v| v as f32);
                if let Some((name, higher)) = &selection {
                    if let Some(v) = ev[name.as_str()].as_f64() {
                        let better = match state.best {
                            None => true,
                            Some((_, b)) => (*higher && v > b) || (!*higher && v < b),
                        };
                        if better {
                            state.best = Some((state.step, v));
                            state.evals_since_best = 0;
                            improved = true;
                        } else {
                            state.evals_since_best += 1;
                        }
                    }
                }
                let l = line.get_or_insert_with(
                    || serde_json::json!({ "step": state.step, "loss": loss, "lr": lr }),
                );
                if let (Some(o), Some(e)) = (l.as_object_mut(), ev.as_object()) {
                    o.extend(e.clone());
                }
            }
        }
        if let (Some(l), true) = (&line, root) {
            append_metrics(&metrics, l)?;
        }
        if improved && root {
            // The best model so far is the output directory's model.
            saving(task.save_model(&p, out), out, &mut p)?;
        }
        report(&Progress {
            step: state.step,
            total_steps: total,
            loss,
            lr,
            tokens: step_tokens,
            metrics: line.as_ref(),
        });
        if patience.is_some_and(|n| state.evals_since_best >= n) && !last {
            early_stopped = true;
            break;
        }
        let due = (cfg.save_every > 0 && state.step.is_multiple_of(cfg.save_every))
            || (cfg.save_minutes > 0.0
                && last_save.elapsed().as_secs_f64() >= 60.0 * cfg.save_minutes);
        if due && !last && root {
            let r = save_checkpoint(out, &mut p, &opt, &state, cfg.keep_last);
            saving(r, out, &mut p)?;
            last_save = Instant::now();
        }
        if world.is_distributed() && cfg.sync_check > 0 && state.step.is_multiple_of(cfg.sync_check)
        {
            super::distributed::check_in_sync(world, param_checksum(&mut p), state.step)?;
        }
    }
    if root {
        let r = save_checkpoint(out, &mut p, &opt, &state, cfg.keep_last);
        saving(r, out, &mut p)?;
        if !interrupted && state.best.is_none() {
            saving(task.save_model(&p, out), out, &mut p)?;
        }
    }
    // No rank leaves before the files are written (a launcher may end the others' machines).
    world.barrier();
    Ok(Summary {
        step: state.step,
        total_steps: total,
        loss: last_loss,
        valid_loss: state.valid_loss,
        best: state.best,
        metric: selection.map(|(n, _)| n),
        interrupted,
        early_stopped,
        already_finished: false,
    })
}

/// The checksum of every parameter value of `p` (see [`super::distributed::check_in_sync`]).
fn param_checksum(p: &mut Pretrained) -> u64 {
    let params = parameters(p);
    let values: Vec<&[f32]> = params.iter().map(|(_, t, _)| t.data()).collect();
    super::distributed::checksum(&values)
}

/// Sums the step's gradients (the model's and the task's auxiliary ones) over the ranks.
fn sum_grads(
    world: super::distributed::World,
    grads: &mut Pretrained,
    aux: Option<&crate::train::auxiliary::Auxiliary>,
    scratch: &mut Vec<f32>,
) {
    let mut gp = parameters(grads);
    let model = gp.iter_mut().map(|(_, t, _)| t.data_mut());
    match aux {
        None => world.sum_f32(&mut model.collect::<Vec<_>>(), scratch),
        Some(a) => a.with_grads(|extra| {
            let mut all: Vec<&mut [f32]> = model.collect();
            all.extend(extra);
            world.sum_f32(&mut all, scratch)
        }),
    }
}

/// Bytes of the gradients summed over the ranks each step.
fn grad_bytes(grads: &mut Pretrained, aux: Option<&crate::train::auxiliary::Auxiliary>) -> usize {
    let model: usize = parameters(grads).iter().map(|(_, t, _)| t.numel()).sum();
    let extra = aux.map_or(0, |a| a.with_grads(|g| g.iter().map(|x| x.len()).sum()));
    4 * (model + extra)
}

/// The mean over the ranks of each number in a step's task figures: each rank measured its
/// own share of the step, of equal size.
fn mean_over_ranks(world: super::distributed::World, m: &mut serde_json::Value) {
    if !world.is_distributed() {
        return;
    }
    let Some(o) = m.as_object_mut() else { return };
    let keys: Vec<String> = o
        .iter()
        .filter(|(_, v)| v.is_number())
        .map(|(k, _)| k.clone())
        .collect();
    let mut v: Vec<f64> = keys.iter().map(|k| o[k].as_f64().unwrap_or(0.0)).collect();
    world.sum_f64(&mut v);
    for (k, x) in keys.iter().zip(v) {
        o.insert(k.clone(), (x / world.size() as f64).into());
    }
}
