//! `finetune`: the entry that reads the data of the chosen task form, prepares the model's
//! head and runs the shared training loop; and the epoch-shuffled example order every task
//! form uses.

use super::config::FinetuneConfig;
use super::trainer::{run, start, Progress, Summary};
use super::{classify, tag};
use crate::engine::dropout::mix;
use crate::error::{Error, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::path::Path;
use std::sync::atomic::AtomicBool;

/// Examples visited in a fresh seeded order every epoch; the position (examples consumed) is
/// all a resumed run needs to continue the same order.
pub(crate) struct Order {
    n: usize,
    seed: u64,
    /// Examples consumed so far.
    pub consumed: u64,
    order: Vec<usize>,
    epoch: Option<u64>,
}

impl Order {
    /// An order over `n` examples.
    pub fn new(n: usize, seed: u64) -> Self {
        Order {
            n,
            seed,
            consumed: 0,
            order: Vec::new(),
            epoch: None,
        }
    }

    /// The next `k` example indices.
    pub fn take(&mut self, k: usize) -> Vec<usize> {
        (0..k)
            .map(|_| {
                let i = self.consumed;
                self.consumed += 1;
                let epoch = i / self.n as u64;
                if self.epoch != Some(epoch) {
                    self.order = (0..self.n).collect();
                    let mut rng =
                        rand::rngs::StdRng::seed_from_u64(mix(self.seed ^ mix(epoch + 1)));
                    self.order.shuffle(&mut rng);
                    self.epoch = Some(epoch);
                }
                self.order[(i % self.n as u64) as usize]
            })
            .collect()
    }

    /// (examples consumed, completed epochs)
    pub fn position(&self) -> (u64, u64) {
        (self.consumed, self.consumed / self.n.max(1) as u64)
    }
}

/// The selection metric: the one asked for (checked against the task's metrics) or the
/// task's main one. Returns (name, higher is better).
pub(crate) fn pick_metric(
    asked: Option<&str>,
    higher: &[&str],
    lower: &[&str],
    default: &str,
) -> Result<(String, bool)> {
    match asked {
        None => Ok((default.to_string(), !lower.contains(&default))),
        Some(m) if higher.contains(&m) => Ok((m.to_string(), true)),
        Some(m) if lower.contains(&m) => Ok((m.to_string(), false)),
        Some(m) => Err(Error::Input(format!(
            "--metric: \"{m}\" is not a metric of this task ({})",
            higher
                .iter()
                .chain(lower)
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Fine-tunes (or, with `resume`, continues fine-tuning) the model in `model_dir` for the task
/// form `cfg.task` (classify, tag), writing checkpoints, `metrics.jsonl` and the best (with
/// validation data) or final model into `out`.
pub fn finetune(
    model_dir: &Path,
    out: &Path,
    cfg: &FinetuneConfig,
    resume: bool,
    stop: &AtomicBool,
    report: impl FnMut(&Progress),
) -> Result<Summary> {
    cfg.validate()?;
    let records = classify::read_data(&cfg.train_file, cfg.skip_invalid)?;
    let config = serde_json::to_value(cfg).map_err(|e| Error::Input(e.to_string()))?;
    let (mut p, opt, state) = start(
        model_dir,
        out,
        config,
        &["task", "train_file", "batch_size", "seed", "max_length"],
        cfg.train.weight_decay,
        resume,
    )?;
    match cfg.task.as_str() {
        "classify" => {
            let mut task = classify::prepare(&mut p, cfg, &records, resume)?;
            run(
                p,
                opt,
                state,
                &mut task,
                &cfg.train,
                cfg.patience,
                out,
                stop,
                report,
            )
        }
        "tag" => {
            let mut task = tag::prepare(&mut p, cfg, &records, resume)?;
            run(
                p,
                opt,
                state,
                &mut task,
                &cfg.train,
                cfg.patience,
                out,
                stop,
                report,
            )
        }
        other => Err(Error::Input(format!(
            "--task: \"{other}\" is not available"
        ))),
    }
}
