//! `kiln finetune`, and the data, QA, generation and PEFT flags it shares with `eval` and
//! `predict`.

use super::train_args::{stop_on_ctrl_c, TrainArgs};
use crate::progress::Reporter;
use anyhow::{Context, Result};
use kiln::train::{finetune, FinetuneConfig};
use std::path::PathBuf;

/// Which fields of the data hold the inputs and the label.
#[derive(clap::Args, Clone)]
pub struct DataArgs {
    /// Field of the text [default: text, or text_a when the data has that].
    #[arg(long)]
    text_field: Option<String>,
    /// Field of the second text of a sentence pair [default: text_b when the data has it].
    #[arg(long)]
    text_b_field: Option<String>,
    /// Field of the label [default: label].
    #[arg(long)]
    label_field: Option<String>,
    /// Tagging: field holding the list of words [default: tokens].
    #[arg(long)]
    tokens_field: Option<String>,
    /// Tagging: field holding the list of tags, e.g. ner or pos [default: tags].
    #[arg(long)]
    tag_field: Option<String>,
    /// Tokens per example (QA: per window); longer inputs are truncated [default: 128; qa: 384].
    #[arg(long)]
    max_length: Option<usize>,
    /// Count and skip malformed lines instead of stopping at the first.
    #[arg(long)]
    skip_invalid: bool,
}

impl DataArgs {
    /// Writes the flags given over `c` (`--max-length` is the caller's: its default depends on
    /// the task).
    pub fn apply(&self, c: &mut FinetuneConfig) {
        if self.text_field.is_some() {
            c.text_field = self.text_field.clone();
        }
        if self.text_b_field.is_some() {
            c.text_b_field = self.text_b_field.clone();
        }
        if let Some(l) = &self.label_field {
            c.label_field = l.clone();
        }
        if let Some(f) = &self.tokens_field {
            c.tokens_field = f.clone();
        }
        if let Some(f) = &self.tag_field {
            c.tag_field = f.clone();
        }
        c.skip_invalid |= self.skip_invalid;
    }

    /// `--text-field`, if given.
    pub fn text_field(&self) -> Option<&str> {
        self.text_field.as_deref()
    }

    /// `--max-length`, if given.
    pub fn max_length(&self) -> Option<usize> {
        self.max_length
    }

    /// `--skip-invalid`.
    pub fn skip_invalid(&self) -> bool {
        self.skip_invalid
    }
}

/// Extractive QA settings.
#[derive(clap::Args, Clone)]
pub struct QaArgs {
    /// QA: tokens shared by neighbouring windows of a long context [default: 128].
    #[arg(long)]
    doc_stride: Option<usize>,
    /// QA: longest answer in tokens [default: 30].
    #[arg(long)]
    max_answer_length: Option<usize>,
    /// QA: allow "no answer" (SQuAD 2.0), predicted when the [CLS] score beats the best span by
    /// more than this.
    #[arg(long)]
    null_threshold: Option<f32>,
}

impl QaArgs {
    /// Writes the flags given over `c`.
    pub fn apply(&self, c: &mut FinetuneConfig) {
        if let Some(v) = self.doc_stride {
            c.doc_stride = v;
        }
        if let Some(v) = self.max_answer_length {
            c.max_answer_length = v;
        }
        if self.null_threshold.is_some() {
            c.null_threshold = self.null_threshold;
        }
    }
}

/// Sequence-generation settings.
#[derive(clap::Args, Clone)]
pub struct GenArgs {
    /// seq2seq: target tokens kept in training, and most tokens generated [default: 64].
    #[arg(long)]
    max_target_length: Option<usize>,
    /// seq2seq: beam search with this many beams (1: greedy) [default: 1].
    #[arg(long)]
    num_beams: Option<usize>,
    /// seq2seq: beam scores are divided by length^PENALTY [default: 1.0].
    #[arg(long)]
    length_penalty: Option<f32>,
}

impl GenArgs {
    /// Writes the flags given over `c`.
    pub fn apply(&self, c: &mut FinetuneConfig) {
        if let Some(v) = self.max_target_length {
            c.max_target_length = v;
        }
        if let Some(v) = self.num_beams {
            c.num_beams = v;
        }
        if let Some(v) = self.length_penalty {
            c.length_penalty = v;
        }
    }
}

/// Parameter-efficient fine-tuning: LoRA or bottleneck adapters on a frozen base model.
#[derive(clap::Args, Clone)]
pub struct PeftArgs {
    /// full (every weight), lora, or adapter [default: full].
    #[arg(long, value_parser = ["full", "lora", "adapter"])]
    method: Option<String>,
    /// LoRA rank r [default: 8].
    #[arg(long)]
    lora_r: Option<usize>,
    /// LoRA alpha; the bypass is scaled by alpha / r [default: 8].
    #[arg(long)]
    lora_alpha: Option<f32>,
    /// Dropout on the LoRA input in training [default: 0].
    #[arg(long)]
    lora_dropout: Option<f32>,
    /// Comma-separated module names LoRA adapts, matched as PEFT's target_modules (a name
    /// selects every module whose full name equals it or ends with .name; all-linear: all)
    /// [default: query,value for BERT, c_attn for GPT-2].
    #[arg(long, value_delimiter = ',')]
    lora_targets: Option<Vec<String>>,
    /// Bottleneck width of adapters [default: 64].
    #[arg(long)]
    adapter_size: Option<usize>,
    /// houlsby (after attention and feed-forward outputs) or pfeiffer (after feed-forward only)
    /// [default: houlsby].
    #[arg(long, value_parser = ["houlsby", "pfeiffer"])]
    adapter_placement: Option<String>,
    /// Adapter nonlinearity: relu, gelu or gelu_new [default: relu].
    #[arg(long)]
    adapter_activation: Option<String>,
    /// Comma-separated base tensors to train as well: bias, layernorm, pooler.
    #[arg(long, value_delimiter = ',')]
    train_extra: Option<Vec<String>>,
}

impl PeftArgs {
    fn apply(&self, c: &mut kiln::peft::PeftConfig) {
        use kiln::peft::{Method, Placement};
        match self.method.as_deref() {
            Some("lora") => c.method = Method::Lora,
            Some("adapter") => c.method = Method::Adapter,
            Some("full") => c.method = Method::Full,
            _ => {}
        }
        if let Some(v) = self.lora_r {
            c.lora_r = v;
        }
        if let Some(v) = self.lora_alpha {
            c.lora_alpha = v;
        }
        if let Some(v) = self.lora_dropout {
            c.lora_dropout = v;
        }
        if let Some(v) = &self.lora_targets {
            c.lora_targets = v.iter().map(|s| s.trim().to_string()).collect();
        }
        if let Some(v) = self.adapter_size {
            c.adapter_size = v;
        }
        match self.adapter_placement.as_deref() {
            Some("pfeiffer") => c.adapter_placement = Placement::Pfeiffer,
            Some("houlsby") => c.adapter_placement = Placement::Houlsby,
            _ => {}
        }
        if let Some(v) = &self.adapter_activation {
            c.adapter_activation = v.clone();
        }
        if let Some(v) = &self.train_extra {
            c.train_extra = v.iter().map(|s| s.trim().to_lowercase()).collect();
        }
    }
}

/// Fine-tune a pretrained model on labelled data (JSONL, CSV, TSV or CoNLL; .gz accepted).
/// --task classify: one label per text or text pair, cross-entropy, or mean squared error
/// with --regression. --task tag: a tag per word (--tokens-field / --tag-field lists; CoNLL
/// files give `tokens`, `tags` = last column, `col1`, `col2`, …), the first piece of each word
/// carrying its tag. With --valid the output directory holds the best model by --metric;
/// checkpoints go to OUT/checkpoint-STEP/, metrics to OUT/metrics.jsonl. With --method lora or
/// adapter the base stays frozen and OUT holds only the adapter (adapter_config.json +
/// adapter_model.safetensors, PEFT's layout); use it with --model BASE --adapter OUT.
#[derive(clap::Args)]
pub struct Args {
    /// The pretrained model directory, or a hub id (org/name: from the hub cache or downloaded).
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    run: RunArgs,
}

/// Every flag of a fine-tuning run but the model it starts from (`kiln distill` shares them).
#[derive(clap::Args)]
pub struct RunArgs {
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Settings from a TOML file (keys = flag names with `_`; `train_file`, `valid_file`);
    /// flags given here override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The task form: classify, tag, qa or seq2seq.
    #[arg(long)]
    task: Option<String>,
    /// Training data.
    #[arg(long)]
    train: Option<PathBuf>,
    /// Validation data (evaluated every --eval-every steps and at the end).
    #[arg(long)]
    valid: Option<PathBuf>,
    #[command(flatten)]
    data: DataArgs,
    /// Label names in id order, a JSON list or {"label": [...]} [default: those in the data].
    #[arg(long)]
    labels: Option<PathBuf>,
    /// The label is a real value (one output, mean squared error).
    #[arg(long)]
    regression: bool,
    /// Tagging: train every word piece on its word's tag, not only the first.
    #[arg(long)]
    label_all_pieces: bool,
    /// Validation metric that picks the best model [default: accuracy; pearson for regression].
    #[arg(long)]
    metric: Option<String>,
    /// Stop after this many evaluations without a better metric.
    #[arg(long)]
    patience: Option<u64>,
    /// Evaluate during training on only the first N validation examples (a large seq2seq set
    /// is decoded in full at every evaluation otherwise).
    #[arg(long, value_name = "N")]
    max_eval_samples: Option<usize>,
    /// Add the training texts' words that the tokenizer only knows as its unknown token (e.g.
    /// Chinese characters for an English vocabulary) as new tokens, with new embedding rows.
    #[arg(long)]
    extend_vocab: bool,
    #[command(flatten)]
    qa: QaArgs,
    #[command(flatten)]
    gen: GenArgs,
    #[command(flatten)]
    peft: PeftArgs,
    #[command(flatten)]
    train_args: TrainArgs,
    /// Continue from the latest checkpoint in --out.
    #[arg(long)]
    resume: bool,
}

pub fn run(a: Args) -> Result<()> {
    let c = a.run.config()?;
    a.run.execute(&super::resolve(&a.model)?, c)
}

impl RunArgs {
    /// The run's settings: the TOML file's, with the flags given over them.
    pub fn config(&self) -> Result<FinetuneConfig> {
        let a = self;
        let mut c = match &a.config {
            Some(path) => FinetuneConfig::from_toml(path)?,
            None => FinetuneConfig::default(),
        };
        a.train_args.apply(&mut c.train);
        a.peft.apply(&mut c.peft);
        a.qa.apply(&mut c);
        a.gen.apply(&mut c);
        if let Some(t) = &a.task {
            c.task = t.clone();
        }
        if let Some(t) = &a.train {
            c.train_file = t.clone();
        }
        if a.valid.is_some() {
            c.valid_file = a.valid.clone();
        }
        let d = &a.data;
        d.apply(&mut c);
        if let Some(m) = d.max_length {
            c.max_length = m;
        } else if c.task == "qa" && c.max_length == FinetuneConfig::default().max_length {
            // QA windows hold a question and a long context: transformers' run_qa.py uses 384.
            c.max_length = 384;
        }
        c.label_all_pieces |= a.label_all_pieces;
        if a.labels.is_some() {
            c.labels = a.labels.clone();
        }
        c.regression |= a.regression;
        c.extend_vocab |= a.extend_vocab;
        if a.metric.is_some() {
            c.metric = a.metric.clone();
        }
        if a.patience.is_some() {
            c.patience = a.patience;
        }
        if a.max_eval_samples.is_some() {
            c.max_eval_samples = a.max_eval_samples;
        }
        Ok(c)
    }

    /// `--out`.
    pub fn out(&self) -> &std::path::Path {
        &self.out
    }

    /// `--resume`.
    pub fn resume(&self) -> bool {
        self.resume
    }

    /// `--text-field`, if given.
    pub fn text_field(&self) -> Option<&str> {
        self.data.text_field()
    }

    /// Runs fine-tuning (or distillation, when `c.distill` is set) from `model` with `c`.
    pub fn execute(&self, model: &std::path::Path, c: FinetuneConfig) -> Result<()> {
        let a = self;
        let stop = stop_on_ctrl_c();
        let mut progress = Reporter::new();
        let summary = finetune(
            model,
            &a.out,
            &c,
            a.resume,
            &stop,
            super::train_args::report_started,
            |p| progress.step(p),
        )
        .with_context(|| format!("fine-tuning into {}", a.out.display()))?;
        progress.finish(&summary, &a.out);
        if !kiln::train::distributed::world().is_root() {
            if summary.interrupted {
                kiln::train::distributed::finish();
                std::process::exit(130);
            }
            return Ok(());
        }
        let adapter = a.out.join(kiln::peft::files::WEIGHTS);
        if let Ok(m) = std::fs::metadata(&adapter) {
            eprintln!(
                "adapter {} on disk: {:.1} KiB",
                adapter.display(),
                m.len() as f64 / 1024.0
            );
        }
        if let Some((step, v)) = summary.best {
            eprintln!(
                "best {} {v:.4} at step {step}{}",
                summary.metric.as_deref().unwrap_or("metric"),
                if summary.early_stopped {
                    " (stopped early)"
                } else {
                    ""
                }
            );
        }
        if summary.interrupted {
            kiln::train::distributed::finish();
            std::process::exit(130);
        }
        Ok(())
    }
}
