//! `kiln pretrain`.

use super::train_args::TrainArgs;
use crate::progress::Reporter;
use anyhow::{Context, Result};
use kiln::train::{pretrain, Objective, PretrainConfig};
use std::path::PathBuf;

/// Pre-train (or continue pre-training) a model on raw text: masked LM (BERT), next-token
/// prediction (GPT) or ELECTRA's replaced-token detection. Documents are packed into --seq-len
/// sequences; the final model is written to --out itself (ELECTRA: OUT/discriminator/ and
/// OUT/generator/), checkpoints to OUT/checkpoint-STEP/, metrics to OUT/metrics.jsonl.
/// Ctrl-C writes a checkpoint and exits; --resume continues from the latest one.
#[derive(clap::Args)]
pub struct Args {
    /// The model directory to start from (e.g. from `kiln init`), or a hub id.
    #[arg(long)]
    model: PathBuf,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Settings from a TOML file (keys = flag names with `_`); flags given here override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// mlm (masked LM), clm (next token), electra (a generator replaces masked tokens, the
    /// model learns to spot them; needs an ELECTRA model: `kiln init --arch electra`) or bilm
    /// (ELMo's forward and backward LMs; needs `kiln init --arch lstm --bidirectional`).
    #[arg(long, value_parser = ["mlm", "clm", "electra", "bilm"])]
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
    /// Draw training sequences at random from a pool of this many upcoming ones, 0 for stream
    /// order [default: 10000].
    #[arg(long)]
    shuffle_buffer: Option<usize>,
    /// Held-out sequences scored at each evaluation [default: 64].
    #[arg(long)]
    eval_sequences: Option<usize>,
    /// JSONL field holding the text [default: text].
    #[arg(long)]
    text_field: Option<String>,
    /// Tokens per sequence [default: 128].
    #[arg(long)]
    seq_len: Option<usize>,
    #[command(flatten)]
    train: TrainArgs,
    /// MLM: fraction of tokens to mask [default: 0.15].
    #[arg(long)]
    mask_prob: Option<f32>,
    /// MLM: mask whole words (every piece of a selected word) instead of single tokens.
    #[arg(long)]
    whole_word_mask: bool,
    /// ELECTRA: the generator's width as a fraction of the model's [default: 0.25].
    #[arg(long)]
    generator_scale: Option<f32>,
    /// ELECTRA: weight of the discriminator's loss beside the generator's [default: 50].
    #[arg(long)]
    disc_weight: Option<f32>,
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
        ($dst:expr; $($f:ident),*) => { $( if let Some(v) = a.$f.clone() { $dst.$f = v; } )* };
    }
    set!(c; text_field, seq_len, mask_prob, eval_sequences, shuffle_buffer, generator_scale, disc_weight);
    a.train.apply(&mut c.train);
    if a.valid_fraction.is_some() {
        c.valid_fraction = a.valid_fraction;
    }
    if let Some(o) = &a.objective {
        c.objective = match o.as_str() {
            "clm" => Objective::Clm,
            "electra" => Objective::Electra,
            "bilm" => Objective::Bilm,
            _ => Objective::Mlm,
        };
    }
    if a.whole_word_mask {
        c.whole_word_mask = true;
    }
    if !a.corpus.is_empty() {
        c.corpus = a.corpus.clone();
    }
    if !a.valid.is_empty() {
        c.valid = a.valid.clone();
    }
    execute(
        &super::resolve(&a.model)?,
        &a.out,
        &c,
        a.resume,
        "pre-training",
    )
}

/// Runs the pre-training loop (plain, or masked-LM distillation) with progress on the
/// terminal; Ctrl-C / SIGTERM save a checkpoint and exit 130. `what` names the run in errors.
pub fn execute(
    model: &std::path::Path,
    out: &std::path::Path,
    c: &PretrainConfig,
    resume: bool,
    what: &str,
) -> Result<()> {
    let stop = super::train_args::stop_on_ctrl_c();
    let mut progress = Reporter::new();
    let summary = pretrain(
        model,
        out,
        c,
        resume,
        &stop,
        super::train_args::report_started,
        |p| progress.step(p),
    )
    .with_context(|| format!("{what} into {}", out.display()))?;
    progress.finish(&summary, out);
    if summary.interrupted {
        kiln::train::distributed::finish();
        std::process::exit(130);
    }
    Ok(())
}
