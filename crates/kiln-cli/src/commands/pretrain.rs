//! `kiln pretrain`.

use crate::progress::Reporter;
use anyhow::{Context, Result};
use kiln::train::{pretrain, Objective, PretrainConfig};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Pre-train (or continue pre-training) a model on raw text: masked LM (BERT) or next-token
/// prediction (GPT). Documents are packed into --seq-len sequences; the final model is written
/// to --out itself, checkpoints to OUT/checkpoint-STEP/, metrics to OUT/metrics.jsonl.
/// Ctrl-C writes a checkpoint and exits; --resume continues from the latest one.
#[derive(clap::Args)]
pub struct Args {
    /// The model directory to start from (e.g. from `kiln init`).
    #[arg(long)]
    model: PathBuf,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Settings from a TOML file (keys = flag names with `_`); flags given here override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// mlm (masked LM) or clm (next token).
    #[arg(long, value_parser = ["mlm", "clm"])]
    objective: Option<String>,
    /// Training text: plain text (one text per line) or JSONL, optionally .gz.
    #[arg(long, num_args = 1..)]
    corpus: Vec<PathBuf>,
    /// Held-out text for evaluation.
    #[arg(long, num_args = 1..)]
    valid: Vec<PathBuf>,
    /// Hold out this fraction of the corpus' texts (lines) for evaluation instead of --valid.
    #[arg(long)]
    valid_fraction: Option<f64>,
    /// Held-out sequences scored at each evaluation [default: 64].
    #[arg(long)]
    eval_sequences: Option<usize>,
    /// JSONL field holding the text [default: text].
    #[arg(long)]
    text_field: Option<String>,
    /// Tokens per sequence [default: 128].
    #[arg(long)]
    seq_len: Option<usize>,
    /// Sequences per micro-batch [default: 16].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Micro-batches per optimizer step [default: 1].
    #[arg(long)]
    grad_accum: Option<usize>,
    /// Peak learning rate [default: 5e-4].
    #[arg(long)]
    lr: Option<f32>,
    /// Linear warmup steps [default: 0].
    #[arg(long)]
    warmup_steps: Option<u64>,
    /// linear, cosine or constant [default: linear].
    #[arg(long)]
    schedule: Option<String>,
    /// Final learning rate as a fraction of the peak [default: 0].
    #[arg(long)]
    min_lr_ratio: Option<f32>,
    /// Optimizer steps.
    #[arg(long)]
    max_steps: Option<u64>,
    /// Passes over the corpus (when --max-steps is not given).
    #[arg(long)]
    epochs: Option<f64>,
    /// AdamW weight decay (not on biases and LayerNorm weights) [default: 0.01].
    #[arg(long)]
    weight_decay: Option<f32>,
    /// Global gradient-norm clipping, 0 to disable [default: 1.0].
    #[arg(long)]
    clip_norm: Option<f32>,
    /// Random seed [default: 42].
    #[arg(long)]
    seed: Option<u64>,
    /// Evaluate every N steps (0: at the end only) [default: 0].
    #[arg(long)]
    eval_every: Option<u64>,
    /// Save a checkpoint every N steps (0: at the end only) [default: 0].
    #[arg(long)]
    save_every: Option<u64>,
    /// Checkpoints to keep [default: 2].
    #[arg(long)]
    keep_last: Option<usize>,
    /// Log a metrics line every N steps [default: 10].
    #[arg(long)]
    log_every: Option<u64>,
    /// MLM: fraction of tokens to mask [default: 0.15].
    #[arg(long)]
    mask_prob: Option<f32>,
    /// MLM: mask whole words (every piece of a selected word) instead of single tokens.
    #[arg(long)]
    whole_word_mask: bool,
    /// Continue from the latest checkpoint in --out.
    #[arg(long)]
    resume: bool,
}

pub fn run(a: Args) -> Result<()> {
    let mut c = match &a.config {
        Some(path) => PretrainConfig::from_toml(path)?,
        None => PretrainConfig::default(),
    };
    macro_rules! set {
        ($($f:ident),*) => { $( if let Some(v) = a.$f.clone() { c.$f = v; } )* };
    }
    set!(
        text_field,
        seq_len,
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
        keep_last,
        log_every,
        mask_prob,
        eval_sequences
    );
    if a.valid_fraction.is_some() {
        c.valid_fraction = a.valid_fraction;
    }
    if let Some(o) = &a.objective {
        c.objective = if o == "clm" {
            Objective::Clm
        } else {
            Objective::Mlm
        };
    }
    if a.whole_word_mask {
        c.whole_word_mask = true;
    }
    if a.max_steps.is_some() {
        c.max_steps = a.max_steps;
    }
    if a.epochs.is_some() {
        c.epochs = a.epochs;
    }
    if !a.corpus.is_empty() {
        c.corpus = a.corpus.clone();
    }
    if !a.valid.is_empty() {
        c.valid = a.valid.clone();
    }
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // A second Ctrl-C ends the process at once.
        let _ = ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!("\ninterrupted: writing a checkpoint (Ctrl-C again to quit now)");
        });
    }
    let mut progress = Reporter::new();
    let summary = pretrain(&a.model, &a.out, &c, a.resume, &stop, |p| progress.step(p))
        .with_context(|| format!("pre-training into {}", a.out.display()))?;
    progress.finish(&summary, &a.out);
    if summary.interrupted {
        std::process::exit(130);
    }
    Ok(())
}
