//! `finetune`: the entry that reads the data of the chosen task form, prepares the model's
//! head and runs the shared training loop; the epoch-shuffled example order and the training
//! task every form of labelled examples shares.

use super::config::FinetuneConfig;
use super::trainer::{run, start, Progress, Started, Summary, Task};
use super::{classify, distill, qa, seq2seq, tag};
use crate::checkpoint::Pretrained;
use crate::data::records::Record;
use crate::engine::dropout::mix;
use crate::error::{Error, Result};
use crate::model::Batch;
use crate::peft::Method;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::path::{Path, PathBuf};
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

/// Builds a packed batch and its targets from examples.
pub(crate) type MicroFn<E, T> = Box<dyn Fn(&[&E]) -> Result<(Batch, Vec<T>)> + Send + Sync>;
/// A head's loss: (model, batch, targets, gradients, grad scale, dropout seed) -> mean loss.
pub(crate) type LossFn<T> = Box<
    dyn Fn(&Pretrained, &Batch, &[T], &mut Pretrained, f32, Option<u64>) -> Result<f32>
        + Send
        + Sync,
>;
/// Targets that count in a micro-batch's loss.
pub(crate) type CountFn<T> = Box<dyn Fn(&[T]) -> usize + Send + Sync>;
/// What a head does with its logits in training: returns the mean loss and writes its gradient
/// with respect to the logits into the second buffer (zeros on entry; the caller scales it).
/// Gold-label cross-entropy and distillation's soft targets are both criteria of one head.
pub(crate) type Criterion<'a> = &'a dyn Fn(&[f32], &mut [f32]) -> Result<f32>;
/// A loss on the student's intermediate states (distillation's hidden-state and attention
/// terms): its value and the gradients it sends into the backward pass, scaled by the given
/// factor (the micro-batch's share of the step), as are the gradients it adds to auxiliary
/// parameters.
pub type HiddenTerm<'a> = &'a dyn Fn(
    &crate::train::backprop::Activations,
    f32,
) -> Result<(f32, crate::train::backprop::LayerGrads)>;

/// Runs a hidden-state term on `acts` (if any): its loss, and its layer gradients scaled by
/// `grad_scale`, for [`crate::train::backprop::backward_with`].
pub(crate) fn hidden_term(
    hidden: Option<HiddenTerm>,
    acts: &crate::train::backprop::Activations,
    grad_scale: f32,
) -> Result<(f32, crate::train::backprop::LayerGrads)> {
    match hidden {
        Some(f) => f(acts, grad_scale),
        None => Ok((0.0, Default::default())),
    }
}

/// Held-out metrics of a model on examples.
pub(crate) type EvalFn<E> = dyn Fn(&Pretrained, &[E]) -> Result<serde_json::Value>;

/// A fine-tuning task over labelled examples, whatever their form: an epoch-shuffled order,
/// packed micro-batches with per-example targets, and the form's loss and evaluation.
pub(crate) struct ExampleTask<E, T> {
    pub train: Vec<E>,
    pub valid: Vec<E>,
    pub order: Order,
    /// Selection metric and whether higher is better.
    pub metric: (String, bool),
    /// A packed batch and its targets from examples.
    pub micro: MicroFn<E, T>,
    /// Targets that count in the loss (the micro-batch's weight in an accumulated step).
    pub count: CountFn<T>,
    /// Mean loss and gradients (see [`Task::loss`]).
    pub loss: LossFn<T>,
    /// Held-out metrics.
    pub evaluate: Box<EvalFn<E>>,
    /// Whether `evaluate` splits its work over the ranks of a distributed run itself
    /// ([`Task::evaluates_sharded`]).
    pub sharded_eval: bool,
    /// Parameters the loss trains beside the model's (a distillation projection), if any.
    pub aux: Option<std::sync::Arc<crate::train::auxiliary::Auxiliary>>,
}

impl<E, T> Task for ExampleTask<E, T> {
    type Micro = (Batch, Vec<T>);

    fn examples_per_epoch(&mut self) -> Result<u64> {
        Ok(self.train.len() as u64)
    }

    fn seek(&mut self, consumed: u64) -> Result<()> {
        self.order.consumed = consumed;
        Ok(())
    }

    fn next_micro(
        &mut self,
        n: usize,
        keep: std::ops::Range<usize>,
        _rng: &mut rand::rngs::StdRng,
    ) -> Result<Self::Micro> {
        let order = self.order.take(n);
        let refs: Vec<&E> = order
            .get(keep.start.min(order.len())..keep.end.min(order.len()))
            .unwrap_or_default()
            .iter()
            .map(|&i| &self.train[i])
            .collect();
        (self.micro)(&refs)
    }

    fn targets(&self, m: &Self::Micro) -> usize {
        (self.count)(&m.1)
    }

    fn tokens(&self, m: &Self::Micro) -> usize {
        m.0.tokens()
    }

    fn loss(
        &self,
        p: &Pretrained,
        m: &Self::Micro,
        grads: &mut Pretrained,
        grad_scale: f32,
        dropout_seed: Option<u64>,
    ) -> Result<f32> {
        (self.loss)(p, &m.0, &m.1, grads, grad_scale, dropout_seed)
    }

    fn position(&self) -> (u64, u64) {
        self.order.position()
    }

    fn evaluate(&mut self, p: &Pretrained) -> Result<Option<serde_json::Value>> {
        if self.valid.is_empty() {
            return Ok(None);
        }
        (self.evaluate)(p, &self.valid).map(Some)
    }

    fn auxiliary(&self) -> Option<&crate::train::auxiliary::Auxiliary> {
        self.aux.as_deref()
    }

    fn evaluates_sharded(&self) -> bool {
        self.sharded_eval
    }

    fn selection(&self) -> Option<(&str, bool)> {
        Some((self.metric.0.as_str(), self.metric.1))
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

/// Adds the parameter-efficient parts (a new run only: a resumed one has them from its
/// checkpoint) and counts what is trained.
fn set_up(
    p: &mut Pretrained,
    cfg: &FinetuneConfig,
    resume: bool,
    had_pooler: bool,
) -> Result<Started> {
    let mut pc = cfg.peft.clone();
    if !resume && pc.method != Method::Full {
        // A pooler the base model lacked is new and must be trained; one that belongs to the
        // classification head (RoBERTa's and ELECTRA's `classifier.dense`, DistilBERT's
        // `pre_classifier`) trains with it, as PEFT's `modules_to_save` trains the head whole.
        let head_owned = p.config().arch.names().pooler.is_some_and(|n| !n.in_base);
        if p.pooler.is_some()
            && (!had_pooler || head_owned)
            && !pc.train_extra.iter().any(|e| e == "pooler")
        {
            pc.train_extra.push("pooler".into());
        }
        crate::peft::apply(p, &pc, cfg.train.seed)?;
    }
    let (trainable, total) = crate::peft::parameter_counts(p);
    Ok(Started {
        trainable,
        total,
        method: p.peft.as_ref().map_or(Method::Full, |s| s.config.method),
        train_extra: p
            .peft
            .as_ref()
            .map_or(Vec::new(), |s| s.config.train_extra.clone()),
        added_tokens: 0,
        skipped_lines: Vec::new(),
        notes: Vec::new(),
    })
}

/// The texts of `records` that `task` tokenizes (what `extend_vocab` scans).
fn task_texts(cfg: &FinetuneConfig, records: &[Record]) -> Vec<String> {
    let fields: Vec<&str> = match cfg.task.as_str() {
        "tag" => vec![cfg.tokens_field.as_str()],
        "qa" => vec!["question", "context"],
        "seq2seq" => vec!["source", "target"],
        _ => {
            let mut f = vec!["text", "text_a", "text_b"];
            for named in [&cfg.text_field, &cfg.text_b_field].into_iter().flatten() {
                if !f.contains(&named.as_str()) {
                    f.push(named);
                }
            }
            f
        }
    };
    let mut out = Vec::new();
    for r in records {
        for f in &fields {
            match r.fields.get(*f) {
                Some(serde_json::Value::String(s)) => out.push(s.clone()),
                Some(serde_json::Value::Array(words)) => {
                    out.extend(words.iter().filter_map(|w| w.as_str().map(str::to_string)))
                }
                _ => {}
            }
        }
    }
    out
}

/// Adds the training texts' unknown words to the tokenizer and grows the model's vocabulary
/// for them (`--extend-vocab`); returns how many tokens were added.
fn extend_vocab(p: &mut Pretrained, cfg: &FinetuneConfig, records: &[Record]) -> Result<usize> {
    let texts = task_texts(cfg, records);
    let tok = p.tokenizer()?;
    let words: Vec<String> = tok
        .unknown_words(texts.iter().map(String::as_str))?
        .into_iter()
        .map(|(w, _)| w)
        .collect();
    if words.is_empty() {
        return Ok(0);
    }
    let mut tok = tok.clone();
    let added = tok.add_tokens(&words);
    let size = tok.vocab_size().max(p.config().vocab_size);
    p.tokenizer = Some(tok);
    crate::model::resize::grow_vocab(p, size, cfg.train.seed)?;
    Ok(added)
}

/// Loads the teacher of a distillation run and checks it fits the student.
fn distill_teacher(
    d: &crate::compress::distill::DistillConfig,
    student: &Pretrained,
    cfg: &FinetuneConfig,
) -> Result<Pretrained> {
    let teacher = crate::checkpoint::load(&d.teacher)?;
    distill::check_teacher(&teacher, student, &cfg.task)?;
    Ok(teacher)
}

/// Fine-tunes (or, with `resume`, continues fine-tuning) the model in `model_dir` for the task
/// form `cfg.task` (classify, tag), fully or with LoRA / adapters (`cfg.peft`), writing
/// checkpoints, `metrics.jsonl` and the best (with validation data) or final model — or
/// adapter — into `out`. `started` sees what is trained before the first step.
#[allow(clippy::too_many_arguments)]
pub fn finetune(
    model_dir: &Path,
    out: &Path,
    cfg: &FinetuneConfig,
    resume: bool,
    stop: &AtomicBool,
    started: impl FnOnce(&Started),
    report: impl FnMut(&Progress),
) -> Result<Summary> {
    cfg.validate()?;
    let read = |path: &Path| {
        if cfg.task == "qa" {
            qa::read_qa_data(path, cfg.skip_invalid)
        } else {
            classify::read_data(path, cfg.skip_invalid)
        }
    };
    let train = read(&cfg.train_file)?;
    let mut valid = cfg.valid_file.as_deref().map(read).transpose()?;
    let skipped_lines: Vec<(PathBuf, usize)> = std::iter::once((&cfg.train_file, &train))
        .chain(cfg.valid_file.iter().zip(&valid))
        .filter(|(_, d)| d.skipped() > 0)
        .map(|(f, d)| (f.clone(), d.skipped()))
        .collect();
    let records = &train.records[..];
    if let (Some(d), Some(n)) = (valid.as_mut(), cfg.max_eval_samples) {
        d.records.truncate(n);
    }
    let valid = valid.as_ref().map_or(&[][..], |d| &d.records[..]);
    let mut cfg_seen = cfg.clone();
    if let Some(d) = cfg_seen.distill.as_mut() {
        d.validate()?;
        // Resuming against another teacher would mix two teachers' targets: the fingerprint
        // is a compared setting.
        d.teacher_fingerprint = crate::checkpoint::fingerprint(&d.teacher)?;
    }
    let config = serde_json::to_value(&cfg_seen).map_err(|e| Error::Input(e.to_string()))?;
    let mut begun = start(
        model_dir,
        out,
        config,
        &["patience", "max_eval_samples", "skip_invalid"],
        &cfg.train,
        resume,
    )?;
    let p = &mut begun.p;
    if cfg.peft.method == Method::Full {
        crate::compress::refuse_training(p, "full fine-tuning")?;
    }
    let had_pooler = p.pooler.is_some();
    let added_tokens = if cfg.extend_vocab {
        extend_vocab(p, cfg, records)?
    } else {
        0
    };
    // Every task form: prepare it, add the parameter-efficient parts, report, then the one loop.
    macro_rules! train {
        ($task:expr) => {{
            let mut task = $task;
            let mut s = set_up(&mut begun.p, cfg, resume, had_pooler)?;
            s.added_tokens = added_tokens;
            s.skipped_lines = skipped_lines;
            s.notes = std::mem::take(&mut begun.notes);
            started(&s);
            run(begun, &mut task, &cfg.train, cfg.patience, stop, report)
        }};
    }
    if let Some(d) = &cfg.distill {
        if !d.student_layers.is_empty() && cfg.peft.method != Method::Full {
            // An adapter names its base model's directory; a cut student has none of its own.
            return Err(Error::Input(
                "--student-layers with --method lora/adapter: the cut student has no base directory for the adapter to name; distil fully, then fine-tune the student with an adapter".into(),
            ));
        }
        let teacher = std::sync::Arc::new(distill_teacher(d, &begun.p, cfg)?);
        if !resume && !d.student_layers.is_empty() {
            distill::cut_layers(&mut begun.p, &d.student_layers)?;
        }
        let p = &mut begun.p;
        return match cfg.task.as_str() {
            "classify" => train!(distill::classify(
                p, &teacher, cfg, d, records, valid, resume
            )?),
            "tag" => train!(distill::tag(p, &teacher, cfg, d, records, valid, resume)?),
            _ => train!(distill::qa(p, &teacher, cfg, d, records, valid, resume)?),
        };
    }
    match cfg.task.as_str() {
        "classify" => train!(classify::prepare(
            &mut begun.p,
            cfg,
            records,
            valid,
            resume,
            None
        )?),
        "tag" => train!(tag::prepare(
            &mut begun.p,
            cfg,
            records,
            valid,
            resume,
            None
        )?),
        "qa" => train!(qa::prepare(&mut begun.p, cfg, records, valid, resume)?),
        "seq2seq" => train!(seq2seq::prepare(&mut begun.p, cfg, records, valid)?),
        other => Err(Error::Input(format!(
            "--task: \"{other}\" is not available"
        ))),
    }
}
