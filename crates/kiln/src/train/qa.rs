//! Extractive question answering: question and context as a sentence pair
//! (`[CLS] question [SEP] context [SEP]`), contexts longer than the window split into
//! overlapping windows (`doc_stride` tokens shared by neighbours, as transformers' `run_qa.py`
//! does), answers located through the tokens' offsets into the context, start/end logits
//! trained with cross-entropy over each window's tokens, and SQuAD exact match / F1 on the
//! decoded answers.

use super::backprop::{backward_with, forward};
use super::classify::read_data;
use super::config::FinetuneConfig;
use super::finetune::{hidden_term, pick_metric, Criterion, ExampleTask, HiddenTerm, Order};
use crate::checkpoint::Pretrained;
use crate::data::records::{DataFile, Record};
use crate::engine::dropout::mix;
use crate::engine::grad::linear_backward;
use crate::error::{Error, Result};
use crate::heads::{HeadKind, Labels};
use crate::infer::qa::{decode, span_head, span_logits, Answer, Decode, WindowLogits};
use crate::model::init::Init;
use crate::model::Batch;
use crate::peft::bottleneck::non_empty;
use crate::tokenize::Tokenizer;
use std::path::Path;
use std::sync::Arc;

/// A gold answer: its text and where it starts in the context (a byte offset).
#[derive(Clone, Debug, PartialEq)]
pub struct GoldAnswer {
    /// The answer text.
    pub text: String,
    /// Byte offset of its first character in the context.
    pub start: usize,
}

/// One question about one context.
#[derive(Clone, Debug, PartialEq)]
pub struct QaExample {
    /// The question id (`id` field; else the record's position).
    pub id: serde_json::Value,
    /// The question.
    pub question: String,
    /// The context the answer is copied from.
    pub context: String,
    /// Gold answers (empty: unanswerable, or unknown at prediction time).
    pub answers: Vec<GoldAnswer>,
}

impl QaExample {
    /// The character offset (Unicode scalar values) of a byte offset in the context.
    pub fn char_offset(&self, byte: usize) -> usize {
        self.context[..byte.min(self.context.len())].chars().count()
    }
}

/// One window of one question: model input, where its context tokens are, and the target.
#[derive(Clone, Debug)]
pub struct QaFeature {
    /// The question.
    pub example: Arc<QaExample>,
    /// Token ids, `[CLS] question [SEP] context-part [SEP]`.
    pub ids: Vec<u32>,
    /// Segment ids (0 for the question part, 1 for the context part).
    pub type_ids: Vec<u32>,
    /// Byte span in the context of each token; `None` outside the context.
    pub spans: Vec<Option<(usize, usize)>>,
    /// Start and end token of the first answer when it lies wholly in this window, else (0, 0)
    /// (the [CLS] token: "not here").
    pub target: (usize, usize),
}

/// How questions and contexts become windows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Windows {
    /// Tokens per window.
    pub max_length: usize,
    /// Tokens shared by neighbouring windows.
    pub doc_stride: usize,
    /// Question tokens kept (longer questions are cut), as BERT's `max_query_length`.
    pub max_question: usize,
}

/// Reads QA records: `context`, `question`, `answers` (a list of `{"text", "answer_start"}`
/// with character offsets, or the Hugging Face datasets form `{"text": [...], "answer_start":
/// [...]}`; absent or empty: no answer) and an optional `id`. An answer that is not at its
/// offset is an error naming the file and line.
pub fn read_examples(records: &[Record]) -> Result<Vec<QaExample>> {
    records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let context = r.text("context")?.to_string();
            let question = r.text("question")?.to_string();
            let id = r
                .fields
                .get("id")
                .cloned()
                .unwrap_or_else(|| serde_json::Value::from(i));
            let mut answers = Vec::new();
            let pairs: Vec<(serde_json::Value, serde_json::Value)> = match r.fields.get("answers")
            {
                None | Some(serde_json::Value::Null) => Vec::new(),
                Some(serde_json::Value::Array(list)) => list
                    .iter()
                    .map(|a| (a["text"].clone(), a["answer_start"].clone()))
                    .collect(),
                Some(serde_json::Value::Object(o)) => {
                    let texts = o.get("text").and_then(|v| v.as_array()).cloned();
                    let starts = o.get("answer_start").and_then(|v| v.as_array()).cloned();
                    match (texts, starts) {
                        (Some(t), Some(s)) if t.len() == s.len() => t.into_iter().zip(s).collect(),
                        _ => {
                            return Err(r.error(
                                "field \"answers\": expected lists \"text\" and \"answer_start\" of equal length",
                            ))
                        }
                    }
                }
                Some(_) => {
                    return Err(r.error(
                        "field \"answers\": expected a list of {\"text\", \"answer_start\"}",
                    ))
                }
            };
            for (k, (text, start)) in pairs.into_iter().enumerate() {
                let (Some(text), Some(start)) = (text.as_str(), start.as_u64()) else {
                    return Err(r.error(format!(
                        "answer {}: needs a string \"text\" and an integer \"answer_start\"",
                        k + 1
                    )));
                };
                let byte = context
                    .char_indices()
                    .nth(start as usize)
                    .map(|(b, _)| b)
                    .filter(|&b| context[b..].starts_with(text));
                let Some(byte) = byte else {
                    return Err(r.error(format!(
                        "answer {} \"{text}\" is not at character {start} of the context",
                        k + 1
                    )));
                };
                answers.push(GoldAnswer {
                    text: text.to_string(),
                    start: byte,
                });
            }
            Ok(QaExample {
                id,
                question,
                context,
                answers,
            })
        })
        .collect()
}

/// Reads QA data: JSONL/CSV/TSV records, or a SQuAD JSON file (`{"data": [{"paragraphs":
/// [{"context", "qas": [...]}]}]}`).
pub fn read_qa_data(path: &Path, skip_invalid: bool) -> Result<DataFile> {
    let name = path.to_string_lossy().to_lowercase();
    if name.ends_with(".json") || name.ends_with(".json.gz") {
        let mut text = String::new();
        let f = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
        let mut r: Box<dyn std::io::Read> = if name.ends_with(".gz") {
            Box::new(flate2::read::MultiGzDecoder::new(f))
        } else {
            Box::new(f)
        };
        std::io::Read::read_to_string(&mut r, &mut text).map_err(|e| Error::io("read", path, e))?;
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
            if let Some(data) = v.get("data").and_then(|d| d.as_array()) {
                let records = squad_records(path, data)?;
                return Ok(DataFile {
                    records,
                    invalid: Vec::new(),
                });
            }
        }
    }
    read_data(path, skip_invalid)
}

fn squad_records(path: &Path, data: &[serde_json::Value]) -> Result<Vec<Record>> {
    let bad = |what: String| Error::Input(format!("{}: {what}", path.display()));
    let mut out = Vec::new();
    for (a, article) in data.iter().enumerate() {
        let paragraphs = article["paragraphs"]
            .as_array()
            .ok_or_else(|| bad(format!("article {} has no \"paragraphs\" list", a + 1)))?;
        for (pi, para) in paragraphs.iter().enumerate() {
            let context = para["context"].clone();
            let qas = para["qas"].as_array().ok_or_else(|| {
                bad(format!(
                    "article {} paragraph {} has no \"qas\" list",
                    a + 1,
                    pi + 1
                ))
            })?;
            for qa in qas {
                let mut fields = serde_json::Map::new();
                fields.insert("context".into(), context.clone());
                for k in ["id", "question", "answers"] {
                    if let Some(v) = qa.get(k) {
                        fields.insert(k.into(), v.clone());
                    }
                }
                out.push(Record {
                    fields,
                    path: path.to_path_buf(),
                    line: out.len() + 1,
                });
            }
        }
    }
    if out.is_empty() {
        return Err(bad("holds no questions".into()));
    }
    Ok(out)
}

/// Splits each question's context into windows, framed as the tokenizer frames a pair:
/// `[CLS] question [SEP] context [SEP]` (segments 0 and 1), or RoBERTa's
/// `<s> question </s></s> context </s>` (one segment).
pub fn encode_features(
    tok: &Tokenizer,
    examples: &[Arc<QaExample>],
    w: &Windows,
) -> Result<Vec<QaFeature>> {
    let Some(frame) = tok.frame() else {
        return Err(Error::Input(
            "extractive QA needs a tokenizer with [CLS] and [SEP] (or <s> and </s>) tokens".into(),
        ));
    };
    let (cls, sep, between) = (frame.cls, frame.sep, frame.between());
    let second_segment = u32::from(!frame.double_sep);
    let mut out = Vec::new();
    for ex in examples {
        let mut q = tok.encode_plain(&ex.question)?.ids;
        q.truncate(w.max_question);
        let c = tok.encode_plain(&ex.context)?;
        let room = w.max_length.saturating_sub(q.len() + 2 + between.len());
        if room == 0 {
            return Err(Error::Input(format!(
                "--max-length {} leaves no room for the context after a {}-token question",
                w.max_length,
                q.len()
            )));
        }
        let step = room.saturating_sub(w.doc_stride).max(1);
        let answer = ex
            .answers
            .first()
            .map(|a| (a.start, a.start + a.text.len()));
        let n = c.ids.len();
        let mut start = 0;
        loop {
            let end = (start + room).min(n);
            let mut ids = Vec::with_capacity(q.len() + end - start + 4);
            ids.push(cls);
            ids.extend_from_slice(&q);
            ids.extend_from_slice(&between);
            let ctx0 = ids.len();
            ids.extend_from_slice(&c.ids[start..end]);
            ids.push(sep);
            let mut type_ids = vec![0u32; ctx0];
            type_ids.resize(ids.len(), second_segment);
            let mut spans = vec![None; ids.len()];
            for (k, t) in (start..end).enumerate() {
                spans[ctx0 + k] = Some(c.offsets[t]);
            }
            let target = match answer {
                Some((a, b))
                    if end > start && c.offsets[start].0 <= a && c.offsets[end - 1].1 >= b =>
                {
                    // The last token starting at or before the answer, the first ending at or
                    // after it (transformers' search).
                    let s = (start..end)
                        .rev()
                        .find(|&t| c.offsets[t].0 <= a)
                        .unwrap_or(start);
                    let e = (start..end)
                        .find(|&t| c.offsets[t].1 >= b)
                        .unwrap_or(end - 1);
                    (ctx0 + s - start, ctx0 + e.max(s) - start)
                }
                _ => (0, 0),
            };
            out.push(QaFeature {
                example: ex.clone(),
                ids,
                type_ids,
                spans,
                target,
            });
            if end >= n {
                break;
            }
            start += step;
        }
    }
    Ok(out)
}

/// A packed batch of windows.
pub fn qa_batch(features: &[&QaFeature]) -> Result<Batch> {
    let seqs: Vec<(&[u32], Option<&[u32]>)> = features
        .iter()
        .map(|f| (&f.ids[..], Some(&f.type_ids[..])))
        .collect();
    Batch::packed(&seqs)
}

/// Mean over the windows of (start cross-entropy + end cross-entropy) / 2, each a softmax over
/// the window's own tokens (transformers' `*ForQuestionAnswering` loss), and its gradients
/// (scaled by `grad_scale`) added into `grads`.
pub fn span_loss(
    p: &Pretrained,
    batch: &Batch,
    targets: &[(usize, usize)],
    grads: &mut Pretrained,
    grad_scale: f32,
    dropout_seed: Option<u64>,
) -> Result<f32> {
    let n = batch.seq_lens.len();
    if targets.len() != n {
        return Err(Error::shape("span_loss", "one target per window"));
    }
    span_loss_with(
        p,
        batch,
        grads,
        grad_scale,
        dropout_seed,
        &|logits, dlogits| {
            let loss = span_ce(logits, batch, targets, Some(&mut *dlogits))?;
            let mean = 1.0 / (2 * n) as f32;
            dlogits.iter_mut().for_each(|g| *g *= mean);
            Ok(loss)
        },
        None,
    )
}

/// The span head's forward and backward around `criterion`, which turns the `[tokens, 2]`
/// logits (start, end) into the mean loss and writes its gradient (see [`Criterion`]).
pub(crate) fn span_loss_with(
    p: &Pretrained,
    batch: &Batch,
    grads: &mut Pretrained,
    grad_scale: f32,
    dropout_seed: Option<u64>,
    criterion: Criterion,
    states: Option<HiddenTerm>,
) -> Result<f32> {
    let head = span_head(p)?;
    let (t, h) = (batch.tokens(), p.config().hidden_size);
    let mask = p.model.default_mask();
    let (hidden, acts) = forward(&p.model, batch, mask, dropout_seed)?;
    let (hidden_loss, layer_grads) = hidden_term(states, &acts, grad_scale)?;
    let logits = head.linear.forward(&hidden, t)?;
    let mut dlogits = vec![0.0; t * 2];
    let loss = criterion(&logits, &mut dlogits)?;
    dlogits.iter_mut().for_each(|g| *g *= grad_scale);
    let gt = grads
        .task
        .as_mut()
        .ok_or_else(|| Error::Input("gradient buffers lack the task head".into()))?;
    let mut dhidden = vec![0.0; t * h];
    linear_backward(
        &hidden,
        &head.linear.weight,
        &dlogits,
        t,
        Some(&mut dhidden),
        non_empty(&mut gt.linear.weight),
        gt.linear.bias.as_mut().and_then(non_empty),
    )?;
    backward_with(
        &p.model,
        batch,
        mask,
        &acts,
        dhidden,
        &mut grads.model,
        dropout_seed,
        &layer_grads,
    )?;
    Ok(loss + hidden_loss)
}

/// The span loss of `[tokens, 2]` logits; with `dlogits`, the unscaled gradient of the summed
/// cross-entropies (softmax minus one-hot, per window and column).
pub(crate) fn span_ce(
    logits: &[f32],
    batch: &Batch,
    targets: &[(usize, usize)],
    mut dlogits: Option<&mut [f32]>,
) -> Result<f32> {
    let mut total = 0.0f64;
    for ((&o, &l), &(ts, te)) in batch.offsets().iter().zip(&batch.seq_lens).zip(targets) {
        if ts >= l || te >= l {
            return Err(Error::shape("span_loss", "target outside its window"));
        }
        for (col, target) in [(0usize, ts), (1, te)] {
            let z = |i: usize| logits[(o + i) * 2 + col];
            let max = (0..l).map(z).fold(f32::NEG_INFINITY, f32::max);
            let sum: f64 = (0..l).map(|i| ((z(i) - max) as f64).exp()).sum();
            total += sum.ln() + (max - z(target)) as f64;
            if let Some(d) = dlogits.as_deref_mut() {
                for i in 0..l {
                    let p = (((z(i) - max) as f64).exp() / sum) as f32;
                    d[(o + i) * 2 + col] = p - f32::from(u8::from(i == target));
                }
            }
        }
    }
    Ok((total / (2 * targets.len().max(1)) as f64) as f32)
}

/// Each question with its decoded answer.
pub type Answered = Vec<(Arc<QaExample>, Answer)>;

/// Answers for the questions of `features` (windows of the same question adjacent), in order,
/// and the mean span loss of the windows.
pub fn answer_questions(
    p: &Pretrained,
    features: &[QaFeature],
    d: &Decode,
) -> Result<(Answered, f32)> {
    answer_questions_with(p, features, d, &|_, _| {})
}

/// [`answer_questions`], calling `progress(done, total)` (in windows) as it goes.
pub fn answer_questions_with(
    p: &Pretrained,
    features: &[QaFeature],
    d: &Decode,
    progress: &dyn Fn(usize, usize),
) -> Result<(Answered, f32)> {
    let mut logits: Vec<Vec<f32>> = Vec::with_capacity(features.len());
    let (mut loss, mut windows) = (0.0f64, 0usize);
    for chunk in features.chunks(32) {
        progress(windows, features.len());
        let refs: Vec<&QaFeature> = chunk.iter().collect();
        let batch = qa_batch(&refs)?;
        let l = span_logits(p, &batch)?;
        let targets: Vec<(usize, usize)> = chunk.iter().map(|f| f.target).collect();
        loss += span_ce(&l, &batch, &targets, None)? as f64 * chunk.len() as f64;
        windows += chunk.len();
        for (&o, &n) in batch.offsets().iter().zip(&batch.seq_lens) {
            logits.push(l[o * 2..(o + n) * 2].to_vec());
        }
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < features.len() {
        let ex = &features[i].example;
        let mut j = i;
        while j < features.len() && Arc::ptr_eq(&features[j].example, ex) {
            j += 1;
        }
        let ws: Vec<WindowLogits> = (i..j)
            .map(|k| WindowLogits {
                logits: &logits[k],
                spans: &features[k].spans,
            })
            .collect();
        out.push((ex.clone(), decode(&ws, d)));
        i = j;
    }
    Ok((out, (loss / windows.max(1) as f64) as f32))
}

/// The answer text of a decoded answer ("" for no answer).
pub fn answer_text<'a>(ex: &'a QaExample, a: &Answer) -> &'a str {
    a.span.map_or("", |(s, e)| &ex.context[s..e])
}

/// Held-out metrics: `valid_loss` (span loss), `exact_match` and `f1` (SQuAD, 0–100).
pub fn evaluate_qa(
    p: &Pretrained,
    features: &[QaFeature],
    d: &Decode,
) -> Result<serde_json::Value> {
    evaluate_qa_with(p, features, d, &|_, _| {})
}

/// [`evaluate_qa`], calling `progress(done, total)` (in windows) as it goes.
pub fn evaluate_qa_with(
    p: &Pretrained,
    features: &[QaFeature],
    d: &Decode,
    progress: &dyn Fn(usize, usize),
) -> Result<serde_json::Value> {
    let (answers, loss) = answer_questions_with(p, features, d, progress)?;
    let golds: Vec<Vec<String>> = answers
        .iter()
        .map(|(ex, _)| ex.answers.iter().map(|a| a.text.clone()).collect())
        .collect();
    let (em, f1) = crate::metrics::squad::corpus_scores(
        answers
            .iter()
            .zip(&golds)
            .map(|((ex, a), g)| (answer_text(ex, a), &g[..])),
    );
    Ok(serde_json::json!({ "valid_loss": loss, "exact_match": em, "f1": f1 }))
}

/// A new span head (`qa_outputs`, two outputs) with transformers' initialization.
pub fn new_span_head(p: &mut Pretrained, seed: u64) -> Result<()> {
    let cfg = p.config().clone();
    let std = cfg.initializer_range as f32;
    let mut init = Init::new(mix(seed ^ 0x05BA_11ED), std);
    let labels = Labels {
        names: vec!["start".into(), "end".into()],
        regression: false,
        integer: false,
    };
    p.set_task_head(HeadKind::Span, init.linear(2, cfg.hidden_size, std), labels);
    Ok(())
}

/// Decoding settings of a fine-tuning config.
pub fn decode_of(cfg: &FinetuneConfig) -> Decode {
    Decode {
        max_answer_length: cfg.max_answer_length,
        n_best: 20,
        null_threshold: cfg.null_threshold,
    }
}

/// Windowing settings of a fine-tuning config for model `p`.
pub fn windows_of(cfg: &FinetuneConfig, p: &Pretrained) -> Windows {
    Windows {
        max_length: cfg.max_length.min(p.config().max_positions),
        doc_stride: cfg.doc_stride,
        max_question: 64,
    }
}

/// The windows of QA records for `p`.
pub fn features_of(p: &Pretrained, records: &[Record], w: &Windows) -> Result<Vec<QaFeature>> {
    let examples: Vec<Arc<QaExample>> = read_examples(records)?.into_iter().map(Arc::new).collect();
    encode_features(p.tokenizer()?, &examples, w)
}

/// Prepares extractive QA: the span head (new unless the model has one) and the windows.
pub(crate) fn prepare(
    p: &mut Pretrained,
    cfg: &FinetuneConfig,
    records: &[Record],
    valid: &[Record],
    resume: bool,
) -> Result<ExampleTask<QaFeature, (usize, usize)>> {
    if p.task.as_ref().map(|t| t.kind) != Some(HeadKind::Span) {
        if resume {
            return Err(Error::Input(
                "the checkpoint has no question-answering head; resume with the same task".into(),
            ));
        }
        new_span_head(p, cfg.train.seed)?;
    }
    let w = windows_of(cfg, p);
    let examples: Vec<Arc<QaExample>> = read_examples(records)?.into_iter().map(Arc::new).collect();
    if let Some(ex) = examples.iter().find(|e| e.answers.is_empty()) {
        if cfg.null_threshold.is_none() {
            return Err(Error::Input(format!(
                "{}: question {} has no answer; train on unanswerable questions with --null-threshold (SQuAD 2.0)",
                cfg.train_file.display(),
                ex.id
            )));
        }
    }
    let train = encode_features(p.tokenizer()?, &examples, &w)?;
    let valid = features_of(p, valid, &w)?;
    let metric = pick_metric(
        cfg.metric.as_deref(),
        &["f1", "exact_match"],
        &["valid_loss"],
        "f1",
    )?;
    let d = decode_of(cfg);
    Ok(ExampleTask {
        order: Order::new(train.len(), cfg.train.seed),
        train,
        valid,
        metric,
        micro: Box::new(|refs| {
            let targets = refs.iter().map(|f| f.target).collect();
            Ok((qa_batch(refs)?, targets))
        }),
        count: Box::new(|targets| targets.len()),
        loss: Box::new(span_loss),
        evaluate: Box::new(move |p, f| evaluate_qa(p, f, &d)),
        aux: None,
        sharded_eval: false,
    })
}
