//! The training loop every task shares: gather micro-batches, accumulate their gradients
//! (weighted by their share of the step's targets), stop on a non-finite loss, clip, step AdamW
//! on the schedule, log, evaluate, keep the best model, checkpoint, stop on request, resume.
//! What differs between tasks (data, loss, evaluation) is behind [`Task`].

use super::backprop::{parameters, zeros_like};
use super::config::TrainConfig;
use super::optim::{clip_grad_norm, AdamW, Param};
use super::schedule::Schedule;
use super::state::{checkpoints, load_checkpoint, save_checkpoint, TrainerState};
use crate::checkpoint::{self, Pretrained, SaveDtype};
use crate::engine::dropout::mix;
use crate::error::{Error, Result};
use rand::SeedableRng;
use std::io::Write;
use std::path::Path;
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
    /// The next micro-batch of up to `n` examples; `rng` is a fixed stream per (step, micro).
    fn next_micro(&mut self, n: usize, rng: &mut rand::rngs::StdRng) -> Result<Self::Micro>;
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
    /// The metric that picks the best model and whether higher is better; `None` keeps the
    /// last model (pre-training).
    fn selection(&self) -> Option<(&str, bool)> {
        None
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

/// The model, optimizer and state a run starts from: `model_dir` for a new run, or with
/// `resume` the latest complete checkpoint in `out`, whose saved settings must agree with
/// `config` on the keys in `must_match` (settings that change the data stream).
pub fn start(
    model_dir: &Path,
    out: &Path,
    config: serde_json::Value,
    must_match: &[&str],
    weight_decay: f32,
    resume: bool,
) -> Result<(Pretrained, AdamW, TrainerState)> {
    std::fs::create_dir_all(out).map_err(|e| Error::io("create directory", out, e))?;
    match (resume, checkpoints(out).pop()) {
        (true, Some(dir)) => {
            let (p, mut opt, mut st) = load_checkpoint(&dir)?;
            for key in must_match {
                if st.config.get(*key) != config.get(*key) {
                    return Err(Error::Input(format!(
                        "{} was made with another --{}; resume with the same settings",
                        dir.display(),
                        key.replace('_', "-")
                    )));
                }
            }
            st.config = config;
            opt.weight_decay = weight_decay;
            Ok((p, opt, st))
        }
        (true, None) => Err(Error::Input(format!(
            "--resume: no checkpoint-* directory in {}",
            out.display()
        ))),
        (false, _) => {
            let p = checkpoint::load(model_dir)?;
            Ok((p, AdamW::new(weight_decay), TrainerState::new(config)))
        }
    }
}

/// Runs the loop from `state` to the planned number of steps (or an early stop), writing
/// checkpoints, `metrics.jsonl` and the final (or best) model into `out`. `stop` requests a
/// checkpoint and a clean exit (Ctrl-C); `report` sees every step. `patience`: stop after this
/// many evaluations without a better selection metric.
#[allow(clippy::too_many_arguments)]
pub fn run<T: Task>(
    mut p: Pretrained,
    mut opt: AdamW,
    mut state: TrainerState,
    task: &mut T,
    cfg: &TrainConfig,
    patience: Option<u64>,
    out: &Path,
    stop: &AtomicBool,
    mut report: impl FnMut(&Progress),
) -> Result<Summary> {
    let kind = cfg.validate()?;
    let resumed = state.step > 0;
    // The output directory is the final model: its tokenizer files are there from the start.
    checkpoint::save(&p, out, SaveDtype::F32)?;
    p.dir = out.to_path_buf();
    let total = match cfg.max_steps {
        Some(s) => s,
        None => {
            let n = task.examples_per_epoch()?;
            let per_step = (cfg.batch_size * cfg.grad_accum) as f64;
            ((cfg.epochs.unwrap_or(1.0) * n as f64) / per_step)
                .ceil()
                .max(1.0) as u64
        }
    };
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
    if resumed {
        truncate_metrics(&metrics, state.step)?;
    } else {
        let _ = std::fs::remove_file(&metrics);
    }
    let selection = task.selection().map(|(n, hi)| (n.to_string(), hi));

    let mut grads = zeros_like(&p);
    let mut last_loss = f32::NAN;
    let (mut tokens_since, mut since) = (0usize, Instant::now());
    let (mut interrupted, mut early_stopped) = (false, false);
    while state.step < total {
        if stop.load(Ordering::SeqCst) {
            interrupted = true;
            break;
        }
        let step = state.step;
        let lr = sched.lr(step);
        // Gather the micro-batches first: their target counts weight the accumulation, so N
        // micro-batches of b equal one batch of N·b.
        let mut micros = Vec::with_capacity(cfg.grad_accum);
        for k in 0..cfg.grad_accum {
            let mut rng = rng_for(cfg.seed, step, k as u64);
            micros.push(task.next_micro(cfg.batch_size, &mut rng)?);
        }
        let total_targets: usize = micros.iter().map(|m| task.targets(m)).sum::<usize>().max(1);
        for (_, t, _) in parameters(&mut grads) {
            t.data_mut().fill(0.0);
        }
        let mut loss = 0.0f32;
        let step_tokens: usize = micros.iter().map(|m| task.tokens(m)).sum();
        for (k, m) in micros.iter().enumerate() {
            let share = task.targets(m) as f32 / total_targets as f32;
            // Dropout masks are a function of (seed, step, micro-batch): exact on resume.
            let drop_seed = Some(mix(cfg.seed ^ mix(step * 1024 + k as u64)));
            loss += task.loss(&p, m, &mut grads, share, drop_seed)? * share;
        }
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
        let mut gparams = parameters(&mut grads);
        let grad_norm = {
            let mut slices: Vec<&mut [f32]> =
                gparams.iter_mut().map(|(_, t, _)| t.data_mut()).collect();
            let limit = if cfg.clip_norm > 0.0 {
                cfg.clip_norm
            } else {
                f32::INFINITY
            };
            clip_grad_norm(&mut slices, limit)
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
        drop(gparams);
        last_loss = loss;
        state.step += 1;
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
        }
        let mut improved = false;
        if (cfg.eval_every > 0 && state.step.is_multiple_of(cfg.eval_every)) || last {
            if let Some(ev) = task.evaluate(&p)? {
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
        if let Some(l) = &line {
            append_metrics(&metrics, l)?;
        }
        if improved {
            // The best model so far is the output directory's model.
            checkpoint::save(&p, out, SaveDtype::F32)?;
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
        if cfg.save_every > 0 && state.step.is_multiple_of(cfg.save_every) && !last {
            save_checkpoint(out, &mut p, &opt, &state, cfg.keep_last)?;
        }
    }
    save_checkpoint(out, &mut p, &opt, &state, cfg.keep_last)?;
    if !interrupted && state.best.is_none() {
        checkpoint::save(&p, out, SaveDtype::F32)?;
    }
    Ok(Summary {
        step: state.step,
        total_steps: total,
        loss: last_loss,
        valid_loss: state.valid_loss,
        best: state.best,
        metric: selection.map(|(n, _)| n),
        interrupted,
        early_stopped,
    })
}
