//! Predictions and scores of a fine-tuned model on data records, for every task form: one JSON
//! answer per record, in order, carrying the record's `id` when it has one; and the task's
//! metrics on labelled records. `kiln predict` and `kiln eval` are this module over a file.

use crate::checkpoint::Pretrained;
use crate::data::records::Record;
use crate::error::{Error, Result};
use crate::heads::HeadKind;
use crate::train::classify::{encode_examples, evaluate_examples_with, Fields};
use crate::train::tag::{encode_tag_examples, evaluate_tags_with, predict_tags, LongSentences};
use crate::train::{qa, seq2seq, FinetuneConfig};

/// The forms of fine-tuned model Kiln predicts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskForm {
    /// A label (or a value) per text or text pair.
    Classify,
    /// A tag per word.
    Tag,
    /// An answer span in a context.
    Qa,
    /// A generated target text for a source text.
    Seq2seq,
}

impl std::str::FromStr for TaskForm {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "classify" => Ok(TaskForm::Classify),
            "tag" => Ok(TaskForm::Tag),
            "qa" => Ok(TaskForm::Qa),
            "seq2seq" => Ok(TaskForm::Seq2seq),
            _ => Err(Error::Input(format!(
                "--task: \"{s}\" is not a task form (classify, tag, qa, seq2seq)"
            ))),
        }
    }
}

impl TaskForm {
    /// The name `--task` takes.
    pub fn name(self) -> &'static str {
        match self {
            TaskForm::Classify => "classify",
            TaskForm::Tag => "tag",
            TaskForm::Qa => "qa",
            TaskForm::Seq2seq => "seq2seq",
        }
    }

    /// The form a model answers, from its head: a task head's own form, or sequence
    /// generation for a language-model head.
    pub fn of_model(p: &Pretrained) -> Result<TaskForm> {
        match &p.task {
            Some(t) => Ok(match t.kind {
                HeadKind::Sequence => TaskForm::Classify,
                HeadKind::Token => TaskForm::Tag,
                HeadKind::Span => TaskForm::Qa,
            }),
            None if p.lm_head.is_some() || p.mlm_head.is_some() => Ok(TaskForm::Seq2seq),
            None => Err(Error::Input(format!(
                "{} has {}: fine-tune it first (kiln finetune)",
                p.dir.display(),
                p.head_description()
            ))),
        }
    }
}

/// Predicts and scores with one model in one task form.
pub struct Predictor<'a> {
    p: &'a Pretrained,
    form: TaskForm,
    cfg: FinetuneConfig,
}

/// An error at a record: the model's output is not finite.
fn non_finite(r: &Record) -> Error {
    Error::NonFinite(format!(
        "{} line {}: the model's output is not finite (NaN or infinity); its weights overflow on this input",
        r.path.display(),
        r.line
    ))
}

impl<'a> Predictor<'a> {
    /// A predictor for `p` in `form` (default: the form of its head), with the data fields,
    /// lengths and decoding settings of `cfg` (as `kiln finetune` takes them). `max_length`
    /// defaults by form: 128 tokens per example, 384 per QA window, the model's positions for
    /// seq2seq.
    pub fn new(
        p: &'a Pretrained,
        form: Option<TaskForm>,
        mut cfg: FinetuneConfig,
        max_length: Option<usize>,
    ) -> Result<Self> {
        let form = match form {
            Some(f) => f,
            None => TaskForm::of_model(p)?,
        };
        // The head the form needs, named with the head the model has when it is missing.
        match form {
            TaskForm::Classify => {
                crate::infer::classify::sequence_head(p)?;
            }
            TaskForm::Tag => {
                crate::infer::tag::token_head(p)?;
            }
            TaskForm::Qa => {
                crate::infer::qa::span_head(p)?;
            }
            TaskForm::Seq2seq => {
                if p.lm_head.is_none() && p.mlm_head.is_none() {
                    return Err(Error::Input(format!(
                        "{} has no language-model head to generate with; it has {}",
                        p.dir.display(),
                        p.head_description()
                    )));
                }
            }
        }
        cfg.task = form.name().into();
        cfg.max_length = max_length.unwrap_or(match form {
            TaskForm::Qa => 384,
            TaskForm::Seq2seq => p.config().max_positions,
            _ => FinetuneConfig::default().max_length,
        });
        Ok(Predictor { p, form, cfg })
    }

    /// The task form.
    pub fn form(&self) -> TaskForm {
        self.form
    }

    fn max_len(&self) -> usize {
        self.cfg.max_length.min(self.p.config().max_positions)
    }

    fn fields(&self, records: &[Record]) -> Fields {
        Fields::resolve(
            self.cfg.text_field.as_deref(),
            self.cfg.text_b_field.as_deref(),
            &self.cfg.label_field,
            records.first(),
        )
    }

    /// Sentences in windows over every word (with gold tags when `labels` is given).
    fn tag_windows(
        &self,
        records: &[Record],
        labels: Option<&crate::heads::Labels>,
    ) -> Result<Vec<crate::train::tag::TagExample>> {
        encode_tag_examples(
            self.p.tokenizer()?,
            records,
            &self.cfg.tokens_field,
            &self.cfg.tag_field,
            labels,
            self.max_len(),
            false,
            LongSentences::Windows,
        )
    }

    /// One answer per record, in order. An error names the record at fault.
    pub fn predict(&self, records: &[Record]) -> Result<Vec<serde_json::Value>> {
        let p = self.p;
        let mut out = match self.form {
            TaskForm::Classify => {
                let head = crate::infer::classify::sequence_head(p)?;
                let ex = encode_examples(
                    p.tokenizer()?,
                    records,
                    &self.fields(records),
                    None,
                    self.max_len(),
                )?;
                let mut out = Vec::with_capacity(ex.len());
                for (chunk, recs) in ex.chunks(64).zip(records.chunks(64)) {
                    let refs: Vec<_> = chunk.iter().collect();
                    let batch = crate::train::classify::batch_of(&refs)?;
                    let logits = crate::infer::classify::sequence_logits(p, &batch)?;
                    let preds = crate::infer::classify::predictions(head, &logits);
                    for (c, r) in preds.into_iter().zip(recs) {
                        if !c.probabilities.iter().all(|v| v.is_finite()) {
                            return Err(non_finite(r));
                        }
                        out.push(if head.labels.regression {
                            serde_json::json!({ "label": c.score, "score": c.score })
                        } else {
                            serde_json::json!({
                                "label": head.labels.json(c.label),
                                "score": c.score,
                                "probabilities": c.probabilities,
                            })
                        });
                    }
                }
                out
            }
            TaskForm::Tag => {
                let head = crate::infer::tag::token_head(p)?;
                // A sentence without words gets no tags; the others are tagged word by word.
                let empty: Vec<bool> = records
                    .iter()
                    .map(|r| {
                        r.fields
                            .get(&self.cfg.tokens_field)
                            .and_then(|v| v.as_array())
                            .is_some_and(|a| a.is_empty())
                    })
                    .collect();
                let words: Vec<Record> = records
                    .iter()
                    .zip(&empty)
                    .filter(|(_, e)| !**e)
                    .map(|(r, _)| r.clone())
                    .collect();
                let ex = self.tag_windows(&words, None)?;
                let mut tagged = predict_tags(p, &ex)?.into_iter();
                let mut out = Vec::with_capacity(records.len());
                for e in empty {
                    let tags: Vec<&str> = if e {
                        Vec::new()
                    } else {
                        tagged
                            .next()
                            .unwrap_or_default()
                            .into_iter()
                            .map(|i| head.labels.names[i].as_str())
                            .collect()
                    };
                    out.push(serde_json::json!({ "tags": tags }));
                }
                out
            }
            TaskForm::Qa => {
                let f = qa::features_of(p, records, &qa::windows_of(&self.cfg, p))?;
                let (answers, _) = qa::answer_questions(p, &f, &qa::decode_of(&self.cfg))?;
                answers
                    .iter()
                    .zip(records)
                    .map(|((ex, ans), r)| {
                        if !ans.probability.is_finite() {
                            return Err(non_finite(r));
                        }
                        // Unicode character offsets into the context, end exclusive; -1 for
                        // no answer.
                        let (start, end) = ans.span.map_or((-1i64, -1i64), |(s, e)| {
                            (ex.char_offset(s) as i64, ex.char_offset(e) as i64)
                        });
                        Ok(serde_json::json!({
                            "answer": qa::answer_text(ex, ans),
                            "start": start,
                            "end": end,
                            "score": ans.probability,
                        }))
                    })
                    .collect::<Result<_>>()?
            }
            TaskForm::Seq2seq => {
                let len = seq2seq::lengths_of(&self.cfg, p);
                let pairs = seq2seq::pairs_of(p, records, false, &len)?;
                seq2seq::generate_targets(
                    p,
                    &pairs,
                    self.cfg.num_beams,
                    self.cfg.length_penalty,
                    self.cfg.max_target_length,
                )?
                .into_iter()
                .map(|t| serde_json::json!({ "prediction": t }))
                .collect()
            }
        };
        for (o, r) in out.iter_mut().zip(records) {
            if let (Some(id), Some(map)) = (r.fields.get("id"), o.as_object_mut()) {
                // The id first, so a reader sees which input a line answers.
                let mut m = serde_json::Map::new();
                m.insert("id".into(), id.clone());
                m.extend(std::mem::take(map));
                *map = m;
            }
        }
        Ok(out)
    }

    /// The task's metrics on labelled records (every metric 0–100), their `loss`, and the
    /// number of `examples` scored (sentences, questions, pairs). `progress(done, total)`
    /// follows the work (in the form's own units: examples, windows or targets).
    pub fn evaluate(
        &self,
        records: &[Record],
        progress: &dyn Fn(usize, usize),
    ) -> Result<serde_json::Value> {
        let p = self.p;
        let (mut m, n) = match self.form {
            TaskForm::Classify => {
                let head = crate::infer::classify::sequence_head(p)?;
                let ex = encode_examples(
                    p.tokenizer()?,
                    records,
                    &self.fields(records),
                    Some(&head.labels),
                    self.max_len(),
                )?;
                (evaluate_examples_with(p, &ex, progress)?, ex.len())
            }
            TaskForm::Tag => {
                let head = crate::infer::tag::token_head(p)?;
                let ex = self.tag_windows(records, Some(&head.labels))?;
                (evaluate_tags_with(p, &ex, progress)?, records.len())
            }
            TaskForm::Qa => {
                let f = qa::features_of(p, records, &qa::windows_of(&self.cfg, p))?;
                (
                    qa::evaluate_qa_with(p, &f, &qa::decode_of(&self.cfg), progress)?,
                    records.len(),
                )
            }
            TaskForm::Seq2seq => {
                let len = seq2seq::lengths_of(&self.cfg, p);
                let pairs = seq2seq::pairs_of(p, records, true, &len)?;
                let decoding = (
                    self.cfg.num_beams,
                    self.cfg.length_penalty,
                    self.cfg.max_target_length,
                );
                let m = seq2seq::evaluate_seq2seq_with(p, &pairs, decoding, progress)?;
                (m, pairs.len())
            }
        };
        if let Some(o) = m.as_object_mut() {
            if o.values()
                .any(|v| v.as_f64().is_some_and(|x| !x.is_finite()))
            {
                return Err(Error::NonFinite(
                    "the model's outputs on this data are not finite (NaN or infinity)".into(),
                ));
            }
            // On its own data the loss is just the loss.
            if let Some(l) = o.remove("valid_loss") {
                o.insert("loss".into(), l);
            }
            o.insert("examples".into(), n.into());
        }
        Ok(m)
    }
}
