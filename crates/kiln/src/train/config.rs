//! Settings of a training run, from flags or a TOML file (`--config`); the field names are the
//! flag names with `_` for `-`. [`TrainConfig`] holds what every run shares (optimizer,
//! schedule, batching, evaluation and checkpoint cadence); [`PretrainConfig`] adds the
//! pre-training data and objective.

use super::schedule::ScheduleKind;
use crate::error::{Error, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The pre-training objective.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    /// Masked language modelling (BERT).
    Mlm,
    /// Next-token prediction (GPT).
    Clm,
    /// ELECTRA's replaced-token detection: a small masked-LM generator fills the masked
    /// positions with its samples and the model (the discriminator) tells, token by token,
    /// which were replaced; both train together.
    Electra,
    /// ELMo's bidirectional language model (a bidirectional LSTM): the forward stack predicts
    /// the next token, the backward stack the previous one, the two losses averaged.
    Bilm,
}

/// The settings of the training loop shared by pre-training and fine-tuning.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    /// Sequences (examples) per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Peak learning rate.
    pub lr: f32,
    /// Linear warmup steps.
    pub warmup_steps: u64,
    /// linear, cosine or constant.
    pub schedule: String,
    /// Final learning rate as a fraction of the peak.
    pub min_lr_ratio: f32,
    /// Optimizer steps to take (or derive from `epochs`).
    pub max_steps: Option<u64>,
    /// Passes over the data (used when `max_steps` is not set).
    pub epochs: Option<f64>,
    /// Decoupled weight decay.
    pub weight_decay: f32,
    /// Global gradient-norm limit (0: off).
    pub clip_norm: f32,
    /// Seed of data order, masking, dropout and new weights.
    pub seed: u64,
    /// Evaluate every N steps (0: only at the end).
    pub eval_every: u64,
    /// Save a checkpoint every N steps (0: not by steps).
    pub save_every: u64,
    /// Save a checkpoint when this many minutes have passed since the last one (0: not by
    /// time); with `save_every`, whichever comes first. A crash loses at most this much work.
    pub save_minutes: f64,
    /// Checkpoints to keep.
    pub keep_last: usize,
    /// Log a metrics line every N steps.
    pub log_every: u64,
    /// Start over in an output directory that holds another run (its checkpoints, metrics
    /// and model files are deleted), as transformers' `overwrite_output_dir`.
    pub overwrite: bool,
    /// Distributed runs: compare the ranks' parameters (a checksum) every N steps, and stop on
    /// a difference (0: only at the start).
    pub sync_check: u64,
    /// Unstructured pruning of the block weights during the run (`--prune-to`).
    #[serde(flatten)]
    pub sparsity: crate::compress::sparsity::SparsityConfig,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            batch_size: 16,
            grad_accum: 1,
            lr: 5e-4,
            warmup_steps: 0,
            schedule: "linear".into(),
            min_lr_ratio: 0.0,
            max_steps: None,
            epochs: None,
            weight_decay: 0.01,
            clip_norm: 1.0,
            seed: 42,
            eval_every: 0,
            save_every: 500,
            save_minutes: 10.0,
            keep_last: 2,
            log_every: 10,
            overwrite: false,
            sync_check: 50,
            sparsity: Default::default(),
        }
    }
}

impl TrainConfig {
    /// Checks values once, naming the flag at fault.
    pub fn validate(&self) -> Result<ScheduleKind> {
        if self.batch_size == 0 || self.grad_accum == 0 {
            return bad("batch-size", "batch size and --grad-accum must be positive");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("lr", "must be positive");
        }
        if self.max_steps.is_none() && self.epochs.is_none() {
            return bad("max-steps", "give --max-steps or --epochs");
        }
        if self.epochs.is_some_and(|e| !(e > 0.0 && e.is_finite())) {
            return bad("epochs", "must be positive");
        }
        if !(self.save_minutes >= 0.0 && self.save_minutes.is_finite()) {
            return bad(
                "save-minutes",
                "must be 0 (off) or a positive number of minutes",
            );
        }
        if self.keep_last == 0 {
            return bad("keep-last", "must keep at least one checkpoint");
        }
        self.schedule.parse()
    }
}

/// An error naming a flag.
pub(crate) fn bad<T>(flag: &str, msg: &str) -> Result<T> {
    Err(Error::Input(format!("--{flag}: {msg}")))
}

/// Reads a flat TOML file into a settings struct; a key no field takes is an error naming the
/// file and line (serde's `deny_unknown_fields` cannot see through the flattened loop settings,
/// so the known keys are those of the serialized defaults).
pub fn read_toml<T: DeserializeOwned + Serialize + Default>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
    let line_of = |at: usize| text[..at.min(text.len())].matches('\n').count() + 1;
    let table: toml::Table = toml::from_str(&text).map_err(|e| Error::Config {
        path: path.to_path_buf(),
        field: e
            .span()
            .map_or("?".into(), |s| format!("line {}", line_of(s.start))),
        msg: e.message().to_string(),
    })?;
    let known = serde_json::to_value(T::default()).map_err(|e| Error::Input(e.to_string()))?;
    for key in table.keys() {
        if known.get(key).is_none() {
            let at = text.find(key.as_str()).unwrap_or(0);
            return Err(Error::Config {
                path: path.to_path_buf(),
                field: format!("line {}", line_of(at)),
                msg: format!("unknown setting `{key}`"),
            });
        }
    }
    T::deserialize(toml::Value::Table(table.clone())).map_err(|e| {
        // serde cannot name a key inside the flattened loop settings: find the culprit by
        // reading the keys one at a time.
        let culprit = table.iter().find_map(|(k, v)| {
            let one: toml::Table = std::iter::once((k.clone(), v.clone())).collect();
            T::deserialize(toml::Value::Table(one))
                .err()
                .map(|e| (k.clone(), e))
        });
        match culprit {
            Some((key, e)) => {
                let at = text
                    .lines()
                    .position(|l| l.trim_start().starts_with(key.as_str()))
                    .map_or(0, |i| i + 1);
                Error::Config {
                    path: path.to_path_buf(),
                    field: format!("{key} (line {at})"),
                    msg: e.to_string(),
                }
            }
            None => Error::Config {
                path: path.to_path_buf(),
                field: "?".into(),
                msg: e.to_string(),
            },
        }
    })
}

/// Every setting of `kiln pretrain`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PretrainConfig {
    /// The loop settings.
    #[serde(flatten)]
    pub train: TrainConfig,
    /// mlm, clm or electra.
    pub objective: Objective,
    /// Training corpus files.
    pub corpus: Vec<PathBuf>,
    /// Held-out corpus files for evaluation.
    pub valid: Vec<PathBuf>,
    /// Instead of `valid`: hold out this fraction of the corpus' texts (chosen by a hash of
    /// file, line and seed).
    pub valid_fraction: Option<f64>,
    /// JSONL field holding the text.
    pub text_field: String,
    /// Tokens per training sequence.
    pub seq_len: usize,
    /// Sequences of the held-out set used per evaluation.
    pub eval_sequences: usize,
    /// Training sequences are drawn at random from a pool of this many upcoming ones (the
    /// corpus streams in file order); 0 or 1 keeps stream order.
    pub shuffle_buffer: usize,
    /// MLM: fraction of tokens selected.
    pub mask_prob: f32,
    /// MLM: select whole words (all their word pieces) rather than single tokens.
    pub whole_word_mask: bool,
    /// ELECTRA: the generator's width (hidden size, heads, feed-forward) as a fraction of the
    /// discriminator's (the paper's best: 1/4 to 1/2).
    pub generator_scale: f32,
    /// ELECTRA: weight of the discriminator's loss beside the generator's (λ = 50 in the paper).
    pub disc_weight: f32,
    /// Task-agnostic distillation (`kiln distill --task mlm`): a teacher's masked-position
    /// distributions as soft targets; `None` for plain pre-training.
    pub distill: Option<crate::compress::distill::DistillConfig>,
}

impl Default for PretrainConfig {
    fn default() -> Self {
        PretrainConfig {
            train: TrainConfig::default(),
            objective: Objective::Mlm,
            corpus: Vec::new(),
            valid: Vec::new(),
            valid_fraction: None,
            text_field: "text".into(),
            seq_len: 128,
            eval_sequences: 64,
            shuffle_buffer: 10_000,
            mask_prob: 0.15,
            whole_word_mask: false,
            generator_scale: 0.25,
            disc_weight: 50.0,
            distill: None,
        }
    }
}

impl PretrainConfig {
    /// Reads a TOML file.
    pub fn from_toml(path: &Path) -> Result<Self> {
        read_toml(path)
    }

    /// Checks values once, naming the flag at fault.
    pub fn validate(&self) -> Result<ScheduleKind> {
        if self.corpus.is_empty() {
            return bad("corpus", "give at least one file");
        }
        if self.seq_len < 4 {
            return bad("seq-len", "must be at least 4");
        }
        if !(self.mask_prob > 0.0 && self.mask_prob < 1.0) {
            return bad("mask-prob", "must be in (0, 1)");
        }
        if let Some(f) = self.valid_fraction {
            if !self.valid.is_empty() {
                return bad(
                    "valid-fraction",
                    "give either --valid or --valid-fraction, not both",
                );
            }
            if !(f > 0.0 && f < 1.0) {
                return bad("valid-fraction", "must be in (0, 1)");
            }
        }
        if self.eval_sequences == 0 {
            return bad("eval-sequences", "must be positive");
        }
        if !(self.generator_scale > 0.0 && self.generator_scale <= 1.0) {
            return bad("generator-scale", "must be in (0, 1]");
        }
        if !(self.disc_weight > 0.0 && self.disc_weight.is_finite()) {
            return bad("disc-weight", "must be positive");
        }
        self.train.validate()
    }
}

/// Every setting of `kiln finetune`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FinetuneConfig {
    /// The loop settings.
    #[serde(flatten)]
    pub train: TrainConfig,
    /// The task form: classify or tag (qa and seq2seq follow).
    pub task: String,
    /// Training data (JSONL, CSV or TSV, optionally .gz).
    pub train_file: PathBuf,
    /// Validation data; with it, the output directory holds the best model by `metric`.
    pub valid_file: Option<PathBuf>,
    /// Field of the (first) text; default `text`, or `text_a` when the data has that.
    pub text_field: Option<String>,
    /// Field of the second text of a pair; default `text_b` when the data has it.
    pub text_b_field: Option<String>,
    /// Field of the label.
    pub label_field: String,
    /// Tagging: field holding the list of words.
    pub tokens_field: String,
    /// Tagging: field holding the list of tags (e.g. `ner`, `pos`).
    pub tag_field: String,
    /// Tagging: label every word piece instead of only the first of each word.
    pub label_all_pieces: bool,
    /// A JSON file naming the labels in id order (`["neg", "pos"]` or `{"label": [...]}`);
    /// default: the labels found in the training data, sorted.
    pub labels: Option<PathBuf>,
    /// Treat the label as a real value (one output, mean squared error).
    pub regression: bool,
    /// Tokens per example (longer inputs are truncated, the longer text of a pair first).
    pub max_length: usize,
    /// Validation metric that picks the best model (default: the task's main metric).
    pub metric: Option<String>,
    /// Stop after this many evaluations without improvement.
    pub patience: Option<u64>,
    /// Evaluate during training on only the first this many validation examples (questions,
    /// sentence pairs, ...), as transformers' example scripts' `--max_eval_samples`: decoding
    /// every pair of a large seq2seq validation set at each evaluation costs more than the
    /// training between them. `kiln eval` still scores the whole file.
    pub max_eval_samples: Option<usize>,
    /// Count and skip malformed lines instead of stopping at the first.
    pub skip_invalid: bool,
    /// QA: tokens shared by neighbouring windows of a long context.
    pub doc_stride: usize,
    /// QA: longest answer, in tokens.
    pub max_answer_length: usize,
    /// QA: allow "no answer" (SQuAD 2.0), predicted when the [CLS] score beats the best span by
    /// more than this.
    pub null_threshold: Option<f32>,
    /// seq2seq: target tokens kept in training and most tokens generated.
    pub max_target_length: usize,
    /// seq2seq: beams of the search that evaluates (1: greedy).
    pub num_beams: usize,
    /// seq2seq: beam scores are divided by length^length_penalty.
    pub length_penalty: f32,
    /// Add the training texts' words that the tokenizer only knows as its unknown token (e.g.
    /// Chinese characters for an English vocabulary) as new tokens, with new embedding rows.
    pub extend_vocab: bool,
    /// Full fine-tuning, LoRA or bottleneck adapters, and their settings.
    #[serde(flatten)]
    pub peft: crate::peft::PeftConfig,
    /// Knowledge distillation (`kiln distill`): the teacher and the loss weights; `None` for a
    /// plain fine-tuning run.
    pub distill: Option<crate::compress::distill::DistillConfig>,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        FinetuneConfig {
            train: TrainConfig {
                lr: 5e-5,
                batch_size: 32,
                epochs: None,
                ..TrainConfig::default()
            },
            task: "classify".into(),
            train_file: PathBuf::new(),
            valid_file: None,
            text_field: None,
            text_b_field: None,
            label_field: "label".into(),
            tokens_field: "tokens".into(),
            tag_field: "tags".into(),
            label_all_pieces: false,
            labels: None,
            regression: false,
            max_length: 128,
            metric: None,
            patience: None,
            max_eval_samples: None,
            skip_invalid: false,
            doc_stride: 128,
            max_answer_length: 30,
            null_threshold: None,
            max_target_length: 64,
            num_beams: 1,
            length_penalty: 1.0,
            extend_vocab: false,
            peft: crate::peft::PeftConfig::default(),
            distill: None,
        }
    }
}

impl FinetuneConfig {
    /// Reads a TOML file.
    pub fn from_toml(path: &Path) -> Result<Self> {
        read_toml(path)
    }

    /// Checks values once, naming the flag at fault.
    pub fn validate(&self) -> Result<ScheduleKind> {
        if self.train_file.as_os_str().is_empty() {
            return bad("train", "give the training data file");
        }
        if !["classify", "tag", "qa", "seq2seq"].contains(&self.task.as_str()) {
            return bad(
                "task",
                &format!(
                    "\"{}\" is not a task form (classify, tag, qa, seq2seq)",
                    self.task
                ),
            );
        }
        if self.num_beams == 0 {
            return bad("num-beams", "must be at least 1");
        }
        if self.max_target_length == 0 {
            return bad("max-target-length", "must be at least 1");
        }
        if self.max_answer_length == 0 {
            return bad("max-answer-length", "must be at least 1");
        }
        if self.max_length < 3 {
            return bad("max-length", "must be at least 3");
        }
        if self.patience.is_some() && self.valid_file.is_none() {
            return bad("patience", "early stopping needs --valid data");
        }
        if self.patience == Some(0) {
            return bad("patience", "must be at least 1");
        }
        if self.max_eval_samples == Some(0) {
            return bad("max-eval-samples", "must be at least 1");
        }
        if self.extend_vocab && self.peft.method != crate::peft::Method::Full {
            return bad(
                "extend-vocab",
                "new tokens need trainable embeddings: use it with full fine-tuning (--method full)",
            );
        }
        self.peft.validate()?;
        self.train.validate()
    }
}
