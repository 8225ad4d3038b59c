//! The training-loop flags shared by `kiln pretrain` and `kiln finetune`, and Ctrl-C handling.

use kiln::train::{Started, TrainConfig};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Optimizer, schedule, batching, evaluation and checkpoint flags (each overrides `--config`).
#[derive(clap::Args)]
pub struct TrainArgs {
    /// Sequences (examples) per micro-batch [default: 16 pre-training, 32 fine-tuning].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Micro-batches per optimizer step [default: 1].
    #[arg(long)]
    pub grad_accum: Option<usize>,
    /// Peak learning rate [default: 5e-4 pre-training, 5e-5 fine-tuning].
    #[arg(long)]
    pub lr: Option<f32>,
    /// Linear warmup steps [default: 0].
    #[arg(long)]
    pub warmup_steps: Option<u64>,
    /// linear, cosine or constant [default: linear].
    #[arg(long)]
    pub schedule: Option<String>,
    /// Final learning rate as a fraction of the peak [default: 0].
    #[arg(long)]
    pub min_lr_ratio: Option<f32>,
    /// Optimizer steps.
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Passes over the corpus (when --max-steps is not given).
    #[arg(long)]
    pub epochs: Option<f64>,
    /// AdamW weight decay (not on biases and LayerNorm weights) [default: 0.01].
    #[arg(long)]
    pub weight_decay: Option<f32>,
    /// Global gradient-norm clipping, 0 to disable [default: 1.0].
    #[arg(long)]
    pub clip_norm: Option<f32>,
    /// Random seed [default: 42].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Evaluate every N steps (0: at the end only) [default: 0].
    #[arg(long)]
    pub eval_every: Option<u64>,
    /// Save a checkpoint every N steps, 0 for none by steps [default: 500].
    #[arg(long)]
    pub save_every: Option<u64>,
    /// Save a checkpoint once this many minutes have passed since the last, 0 for none by time
    /// [default: 10]; with --save-every, whichever comes first. The end of a run (and Ctrl-C or
    /// SIGTERM) always saves one.
    #[arg(long)]
    pub save_minutes: Option<f64>,
    /// Checkpoints to keep [default: 2].
    #[arg(long)]
    pub keep_last: Option<usize>,
    /// Log a metrics line every N steps [default: 10].
    #[arg(long)]
    pub log_every: Option<u64>,
    /// Under mpirun: check every N steps that all ranks hold the same parameters (a checksum),
    /// stopping the run if not; 0 checks only at the start [default: 50].
    #[arg(long, value_name = "N")]
    pub sync_check: Option<u64>,
    /// Start over when --out holds another run: its checkpoints, metrics and model files are
    /// deleted (without it such a run is refused).
    #[arg(long)]
    pub overwrite: bool,
    /// Unstructured pruning: zero this fraction of the blocks' linear weights by the end of
    /// --prune-end, on a cubic schedule (Zhu & Gupta 2017); the zeros are saved in place.
    #[arg(long, value_name = "SPARSITY")]
    pub prune_to: Option<f32>,
    /// magnitude (smallest |w| first) or movement (weights moving to zero first, Sanh et al.
    /// 2020) [default: magnitude].
    #[arg(long, value_parser = ["magnitude", "movement"])]
    pub prune_method: Option<String>,
    /// Step pruning starts at [default: 0 for magnitude; a sixth of the run for movement,
    /// whose scores need steps to form].
    #[arg(long)]
    pub prune_start: Option<u64>,
    /// Step the final sparsity is reached at [default: two thirds of the run].
    #[arg(long)]
    pub prune_end: Option<u64>,
    /// global (one threshold across layers) or layer (each layer to the same sparsity)
    /// [default: global].
    #[arg(long, value_parser = ["global", "layer"])]
    pub prune_scope: Option<String>,
}

impl TrainArgs {
    /// Writes the flags given over `c` (a TOML file's or the defaults).
    pub fn apply(&self, c: &mut TrainConfig) {
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f.clone() { c.$f = v; } )* };
        }
        set!(
            batch_size,
            grad_accum,
            lr,
            warmup_steps,
            schedule,
            min_lr_ratio,
            weight_decay,
            clip_norm,
            seed,
            eval_every,
            save_every,
            save_minutes,
            keep_last,
            log_every,
            sync_check
        );
        if self.max_steps.is_some() {
            c.max_steps = self.max_steps;
        }
        if self.epochs.is_some() {
            c.epochs = self.epochs;
        }
        c.overwrite |= self.overwrite;
        let sp = &mut c.sparsity;
        if self.prune_to.is_some() {
            sp.prune_to = self.prune_to;
        }
        if let Some(m) = &self.prune_method {
            sp.prune_method = m.clone();
        }
        if let Some(v) = self.prune_start {
            sp.prune_start = Some(v);
        }
        if self.prune_end.is_some() {
            sp.prune_end = self.prune_end;
        }
        if let Some(v) = &self.prune_scope {
            sp.prune_scope = v.clone();
        }
    }
}

/// Prints what a run trains and the notices from opening its output directory.
pub fn report_started(s: &Started) {
    if !kiln::train::distributed::world().is_root() {
        return;
    }
    for n in &s.notes {
        eprintln!("{n}");
    }
    for (file, n) in &s.skipped_lines {
        eprintln!("{}: skipped {n} malformed line(s)", file.display());
    }
    if s.added_tokens > 0 {
        eprintln!(
            "added {} words of the training data to the vocabulary as new tokens",
            s.added_tokens
        );
    }
    eprintln!(
        "method {:?}: trainable params {} || all params {} || trainable% {:.4}{}",
        s.method,
        s.trainable,
        s.total,
        100.0 * s.trainable as f64 / s.total.max(1) as f64,
        if s.train_extra.is_empty() {
            String::new()
        } else {
            format!(" (also trained: {})", s.train_extra.join(", "))
        }
    )
}

/// A flag that Ctrl-C, SIGTERM or SIGHUP raises (a terminal, `timeout`, a scheduler or a
/// container stopping the run): the trainer then writes a checkpoint and returns. A second
/// signal ends the process at once.
pub fn stop_on_ctrl_c() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\ninterrupted: writing a checkpoint (interrupt again to quit now)");
    });
    stop
}
