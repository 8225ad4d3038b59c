//! Fine-tuning for sequence classification and regression (one sentence or a pair): reading
//! and encoding labelled examples, the head's loss and its backward pass, evaluation
//! (accuracy and macro-F1; MSE, Pearson and Spearman for regression), and the task run by the
//! shared training loop.

use super::backprop::{backward_with, forward};
use super::config::FinetuneConfig;
use super::finetune::{hidden_term, pick_metric, Criterion, ExampleTask, HiddenTerm, Order};
use crate::checkpoint::Pretrained;
use crate::data::records::{read_records, DataFile, Record};
use crate::engine::dropout::{mix, Dropout};
use crate::engine::grad::{cross_entropy, linear_backward};
use crate::engine::LinearOut;
use crate::error::{Error, Result};
use crate::heads::{HeadKind, Labels, Pooler};
use crate::infer::classify::{predictions, sequence_head, sequence_logits};
use crate::metrics::{accuracy, macro_f1, pearson, spearman};
use crate::model::init::Init;
use crate::model::{Arch, Batch};
use crate::peft::bottleneck::non_empty;
use crate::tokenize::{Tokenizer, Truncation};
use crate::train::backprop::{lin_back, lin_fwd, POOLER_SITE};
use rayon::prelude::*;
use std::path::Path;

/// Which record fields hold the texts and the label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fields {
    /// The (first) text.
    pub text: String,
    /// The second text of a pair.
    pub text_b: Option<String>,
    /// The label.
    pub label: String,
}

impl Fields {
    /// The fields named by flags, or the defaults the first record suggests: `text`, or
    /// `text_a` + `text_b` for sentence pairs.
    pub fn resolve(
        text: Option<&str>,
        text_b: Option<&str>,
        label: &str,
        first: Option<&Record>,
    ) -> Fields {
        let has = |f: &str| first.is_some_and(|r| r.fields.contains_key(f));
        let text = match text {
            Some(t) => t.to_string(),
            None if !has("text") && has("text_a") => "text_a".into(),
            None => "text".into(),
        };
        let text_b = match text_b {
            Some(b) => Some(b.to_string()),
            None if text == "text_a" && has("text_b") => Some("text_b".into()),
            None => None,
        };
        Fields {
            text,
            text_b,
            label: label.to_string(),
        }
    }
}

/// One encoded example.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    /// Token ids with special tokens.
    pub ids: Vec<u32>,
    /// Segment ids.
    pub type_ids: Vec<u32>,
    /// The label id (classification) or value (regression); `None` when the data has none.
    pub label: Option<f32>,
}

/// Reads a label file: `["a", "b"]`, or an object of such lists keyed by field name
/// (`{"label": [...]}`, `{"ner": [...], "pos": [...]}`: the form of the datasets in
/// `shared/data/*/labels.json`), from which the list for `field` (or the only one) is taken.
pub fn read_label_file(path: &Path, field: &str) -> Result<Vec<String>> {
    let v = crate::checkpoint::read_json(path)?;
    let list = match &v {
        serde_json::Value::Array(a) => Some(a),
        serde_json::Value::Object(o) if o.len() == 1 => {
            o.values().next().and_then(|x| x.as_array())
        }
        serde_json::Value::Object(o) => o.get(field).and_then(|x| x.as_array()),
        _ => None,
    }
    .ok_or_else(|| Error::Json {
        path: path.to_path_buf(),
        msg: format!(
            "expected a list of label names, or an object with such a list under \"{field}\""
        ),
    })?;
    let names: Vec<String> = list
        .iter()
        .map(|x| match x {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect();
    if names.is_empty() {
        return Err(Error::Json {
            path: path.to_path_buf(),
            msg: "the label list is empty".into(),
        });
    }
    Ok(names)
}

/// The label set of a training run: from `names` (a label file) or the labels of the data,
/// sorted (numerically when they are integers).
pub fn collect_labels(
    records: &[Record],
    field: &str,
    names: Option<Vec<String>>,
    regression: bool,
) -> Result<Labels> {
    let integer = records.iter().all(|r| {
        r.fields
            .get(field)
            .is_some_and(|v| v.is_i64() || v.is_u64())
    });
    if regression {
        return Ok(Labels {
            names: vec![field.to_string()],
            regression: true,
            integer: false,
        });
    }
    if let Some(names) = names {
        return Ok(Labels {
            names,
            regression: false,
            integer,
        });
    }
    let mut ints = std::collections::BTreeSet::new();
    let mut strs = std::collections::BTreeSet::new();
    for r in records {
        match r.fields.get(field) {
            Some(serde_json::Value::String(s)) => {
                strs.insert(s.clone());
            }
            Some(v) if v.is_i64() || v.is_u64() => {
                ints.insert(v.as_i64().unwrap_or_default());
            }
            Some(v) if v.is_f64() => {
                return Err(r.error(format!(
                    "label {v} is not a class name or an integer (use --regression for real values)"
                )))
            }
            Some(v) => return Err(r.error(format!("label {v} is not a string or a number"))),
            None => return Err(r.error(format!("no field \"{field}\""))),
        }
    }
    let names: Vec<String> = if !ints.is_empty() && strs.is_empty() {
        ints.iter().map(|i| i.to_string()).collect()
    } else {
        ints.iter().map(|i| i.to_string()).chain(strs).collect()
    };
    if names.len() < 2 {
        return Err(Error::Input(format!(
            "the training data has {} distinct label(s) in \"{field}\"; classification needs two or more",
            names.len()
        )));
    }
    Ok(Labels {
        names,
        regression: false,
        integer,
    })
}

/// The label of a record as a class id (or a value, for regression).
pub fn label_of(r: &Record, field: &str, labels: &Labels) -> Result<f32> {
    let v = r
        .fields
        .get(field)
        .ok_or_else(|| r.error(format!("no field \"{field}\"")))?;
    if labels.regression {
        return match v {
            serde_json::Value::Number(n) => n.as_f64().map(|x| x as f32),
            serde_json::Value::String(s) => s.trim().parse::<f32>().ok(),
            _ => None,
        }
        .filter(|x| x.is_finite())
        .ok_or_else(|| r.error(format!("label {v} is not a number")));
    }
    let name = match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
        other => return Err(r.error(format!("label {other} is not a class name or an integer"))),
    };
    if let Some(id) = labels.id(&name) {
        return Ok(id as f32);
    }
    // Integer labels with named classes (a label file): the integer is the id, whether the
    // file wrote it as a number (JSONL) or as text (CSV/TSV).
    let as_int = match v {
        serde_json::Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => v.as_u64(),
    };
    match as_int {
        Some(i)
            if (i as usize) < labels.names.len()
                && labels.names.iter().all(|n| n.parse::<i64>().is_err()) =>
        {
            Ok(i as f32)
        }
        _ => Err(r.error(format!(
            "label {v} is not one of the {} labels ({})",
            labels.names.len(),
            labels.names.join(", ")
        ))),
    }
}

/// Encodes records (truncated to `max_len` tokens, longest text first), with labels when
/// `labels` is given.
pub fn encode_examples(
    tok: &Tokenizer,
    records: &[Record],
    fields: &Fields,
    labels: Option<&Labels>,
    max_len: usize,
) -> Result<Vec<Example>> {
    let mut tok = tok.clone();
    tok.set_truncation(Some(max_len), Truncation::LongestFirst)?;
    records
        .par_iter()
        .map(|r| {
            let a = r.text(&fields.text)?;
            let b = match &fields.text_b {
                Some(f) => Some(r.text(f)?),
                None => None,
            };
            let enc = tok.encode(a, b).map_err(|e| r.error(e))?;
            if enc.ids.is_empty() {
                return Err(r.error("the text encodes to no tokens"));
            }
            let label = match labels {
                Some(l) => Some(label_of(r, &fields.label, l)?),
                None => None,
            };
            Ok(Example {
                ids: enc.ids,
                type_ids: enc.type_ids,
                label,
            })
        })
        .collect()
}

/// A packed batch of examples.
pub fn batch_of(examples: &[&Example]) -> Result<Batch> {
    let seqs: Vec<(&[u32], Option<&[u32]>)> = examples
        .iter()
        .map(|e| (&e.ids[..], Some(&e.type_ids[..])))
        .collect();
    Batch::packed(&seqs)
}

/// Gives `p` a new sequence-classification head for `labels` (weights drawn as transformers
/// does, seeded), adds BERT's pooler when the checkpoint lacks one, and drops pre-training
/// heads (the fine-tuned model is a `*ForSequenceClassification`).
pub fn new_sequence_head(p: &mut Pretrained, labels: Labels, seed: u64) -> Result<()> {
    let cfg = p.config().clone();
    let h = cfg.hidden_size;
    let std = cfg.initializer_range as f32;
    let mut init = Init::new(mix(seed ^ 0x5EC0_C1A5), std);
    if let (Some(names), None) = (cfg.arch.names().pooler, &p.pooler) {
        p.pooler = Some(Pooler {
            dense: init.linear(h, h, std),
            activation: names.activation,
        });
    }
    let mut linear = init.linear(labels.outputs(), h, std);
    if cfg.arch == Arch::Gpt2 {
        linear.bias = None; // GPT2ForSequenceClassification's score has no bias
    }
    p.set_task_head(HeadKind::Sequence, linear, labels);
    Ok(())
}

/// Mean loss of a packed batch against `labels` (class ids or values), and its gradients
/// scaled by `grad_scale` added into `grads`: cross-entropy, or mean squared error for
/// regression, as transformers' sequence-classification models compute them.
pub fn sequence_loss(
    p: &Pretrained,
    batch: &Batch,
    labels: &[f32],
    grads: &mut Pretrained,
    grad_scale: f32,
    dropout_seed: Option<u64>,
) -> Result<f32> {
    let head = sequence_head(p)?;
    let n = batch.seq_lens.len();
    if labels.len() != n {
        return Err(Error::shape("sequence_loss", "one label per sequence"));
    }
    let (k, regression) = (head.linear.out_features(), head.labels.regression);
    sequence_loss_with(
        p,
        batch,
        grads,
        grad_scale,
        dropout_seed,
        &|logits, dlogits| {
            if regression {
                let mut sum = 0.0f64;
                for i in 0..n {
                    let diff = logits[i] - labels[i];
                    sum += (diff as f64) * (diff as f64);
                    dlogits[i] = 2.0 * diff / n as f32;
                }
                Ok((sum / n as f64) as f32)
            } else {
                let targets: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
                Ok(cross_entropy(logits, k, &targets, -100, Some(dlogits))?.0)
            }
        },
        None,
    )
}

/// The sequence head's forward and backward around `criterion`, which turns the `[sequences,
/// outputs]` logits into the mean loss and writes its gradient (see [`Criterion`]).
pub(crate) fn sequence_loss_with(
    p: &Pretrained,
    batch: &Batch,
    grads: &mut Pretrained,
    grad_scale: f32,
    dropout_seed: Option<u64>,
    criterion: Criterion,
    states: Option<HiddenTerm>,
) -> Result<f32> {
    let head = sequence_head(p)?;
    let n = batch.seq_lens.len();
    let h = p.config().hidden_size;
    let k = head.linear.out_features();
    let mask = p.model.default_mask();
    let (hidden, acts) = forward(&p.model, batch, mask, dropout_seed)?;
    let (hidden_loss, layer_grads) = hidden_term(states, &acts, grad_scale)?;
    let x = crate::infer::classify::sequence_features(p, batch, &hidden);
    let pooler = p.pooler.as_ref().filter(|_| p.config().arch.is_encoder());
    // RoBERTa's and ELECTRA's heads drop out the first token before their dense layer too.
    let drop_in = dropout_seed
        .filter(|_| head.dropout > 0.0 && pooler.is_some())
        .filter(|_| {
            p.config()
                .arch
                .names()
                .pooler
                .is_some_and(|n| n.dropout_before)
        })
        .map(|s| Dropout {
            p: head.dropout,
            seed: Dropout::derive(s, 0xC1A5_51F0),
        });
    let x = match drop_in {
        Some(dr) => {
            let mut v = x;
            dr.apply(&mut v);
            v
        }
        None => x,
    };
    // The pooler's input to its activation is kept for the backward pass.
    let mut pre = Vec::new();
    let pooled = match pooler {
        Some(pl) => {
            let mut y = vec![0.0; n * h];
            lin_fwd(&pl.dense, &x, n, &mut y, dropout_seed, POOLER_SITE)?;
            pre = y.clone();
            pl.activate(&mut y);
            y
        }
        None => x.clone(),
    };
    let drop = dropout_seed
        .filter(|_| head.dropout > 0.0)
        .map(|s| Dropout {
            p: head.dropout,
            seed: Dropout::derive(s, 0xC1A5_51F1),
        });
    // The head's input: a dropped-out copy in training, the pooled rows themselves otherwise.
    let d: std::borrow::Cow<[f32]> = match drop {
        Some(dr) => {
            let mut v = pooled.clone();
            dr.apply(&mut v);
            v.into()
        }
        None => (&pooled[..]).into(),
    };
    let mut logits = vec![0.0; n * k];
    head.linear
        .forward_into(&d, n, &mut logits, LinearOut::Write)?;
    let mut dlogits = vec![0.0; n * k];
    let loss = criterion(&logits, &mut dlogits)?;
    dlogits.iter_mut().for_each(|g| *g *= grad_scale);

    let gt = grads
        .task
        .as_mut()
        .ok_or_else(|| Error::Input("gradient buffers lack the task head".into()))?;
    let mut dd = vec![0.0; n * h];
    let (gw, gb) = (&mut gt.linear.weight, gt.linear.bias.as_mut());
    linear_backward(
        &d,
        &head.linear.weight,
        &dlogits,
        n,
        Some(&mut dd),
        non_empty(gw),
        gb.and_then(non_empty),
    )?;
    if let Some(dr) = drop {
        dr.apply(&mut dd);
    }
    let dx = match pooler {
        Some(pl) => {
            pl.activation_backward(&pre, &mut dd);
            let gp = grads
                .pooler
                .as_mut()
                .ok_or_else(|| Error::Input("gradient buffers lack the pooler".into()))?;
            let mut dx = vec![0.0; n * h];
            lin_back(
                &pl.dense,
                &mut gp.dense,
                &x,
                &dd,
                n,
                Some(&mut dx),
                dropout_seed,
                POOLER_SITE,
            )?;
            if let Some(dr) = drop_in {
                dr.apply(&mut dx);
            }
            dx
        }
        None => dd,
    };
    let dhidden = crate::infer::classify::sequence_features_backward(p, batch, &dx);
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

/// Metrics of `p` on labelled examples: `valid_loss`, `accuracy` and `macro_f1`
/// (classification) or `mse`, `pearson` and `spearman` (regression); every metric 0–100
/// (correlations × 100), as docs/metrics.md says.
pub fn evaluate_examples(p: &Pretrained, examples: &[Example]) -> Result<serde_json::Value> {
    evaluate_examples_with(p, examples, &|_, _| {})
}

/// [`evaluate_examples`], calling `progress(done, total)` (in examples) as it goes.
pub fn evaluate_examples_with(
    p: &Pretrained,
    examples: &[Example],
    progress: &dyn Fn(usize, usize),
) -> Result<serde_json::Value> {
    let head = sequence_head(p)?;
    let k = head.linear.out_features();
    let gold = examples
        .iter()
        .map(|e| {
            e.label
                .ok_or_else(|| Error::Input("evaluation data needs labels".into()))
        })
        .collect::<Result<Vec<f32>>>()?;
    // In a distributed run each rank scores every N-th chunk into a zeroed buffer and the
    // buffers are summed: every rank then holds all the logits, bit for bit as one process
    // computes them, and the metrics follow the same on each.
    let world = crate::train::distributed::world();
    let mut logits = vec![0.0f32; examples.len() * k];
    for (i, chunk) in examples.chunks(64).enumerate() {
        if i % world.size() != world.rank() {
            continue;
        }
        progress(i * 64, examples.len());
        let refs: Vec<&Example> = chunk.iter().collect();
        let l = sequence_logits(p, &batch_of(&refs)?)?;
        logits[i * 64 * k..i * 64 * k + l.len()].copy_from_slice(&l);
    }
    world.sum_f32(&mut [&mut logits[..]], &mut Vec::new());
    if head.labels.regression {
        let pred: Vec<f64> = logits.iter().map(|&v| v as f64).collect();
        let g: Vec<f64> = gold.iter().map(|&v| v as f64).collect();
        let mse = pred
            .iter()
            .zip(&g)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f64>()
            / g.len().max(1) as f64;
        return Ok(serde_json::json!({
            "valid_loss": mse, "mse": mse,
            "pearson": 100.0 * pearson(&pred, &g), "spearman": 100.0 * spearman(&pred, &g),
        }));
    }
    let targets: Vec<i64> = gold.iter().map(|&l| l as i64).collect();
    let (loss, _) = cross_entropy(&logits, k, &targets, -100, None)?;
    let pred: Vec<usize> = predictions(head, &logits).iter().map(|c| c.label).collect();
    let g: Vec<usize> = gold.iter().map(|&l| l as usize).collect();
    Ok(serde_json::json!({
        "valid_loss": loss,
        "accuracy": 100.0 * accuracy(&pred, &g),
        "macro_f1": 100.0 * macro_f1(&pred, &g, k),
    }))
}

/// Reads a data file's records (at least one) and counts the malformed lines skipped.
pub fn read_data(path: &Path, skip_invalid: bool) -> Result<DataFile> {
    let data = read_records(path, skip_invalid)?;
    if data.records.is_empty() {
        return Err(Error::Input(format!(
            "{} holds no examples",
            path.display()
        )));
    }
    Ok(data)
}

/// Prepares sequence classification: the label set (from `--labels`, else `default_names`,
/// else the data), the head (new unless the model already has one for the same labels), and
/// the encoded examples.
pub(crate) fn prepare(
    p: &mut Pretrained,
    cfg: &FinetuneConfig,
    records: &[Record],
    valid: &[Record],
    resume: bool,
    default_names: Option<Vec<String>>,
) -> Result<ExampleTask<Example, f32>> {
    let fields = Fields::resolve(
        cfg.text_field.as_deref(),
        cfg.text_b_field.as_deref(),
        &cfg.label_field,
        records.first(),
    );
    let names = cfg
        .labels
        .as_deref()
        .map(|f| read_label_file(f, &fields.label))
        .transpose()?
        .or(default_names);
    let labels = collect_labels(records, &fields.label, names, cfg.regression)?;
    let keep = p
        .task
        .as_ref()
        .is_some_and(|t| t.kind == HeadKind::Sequence && t.labels.names == labels.names);
    if !keep {
        if resume {
            return Err(Error::Input(
                "the checkpoint's labels differ from the data's; resume with the same data".into(),
            ));
        }
        new_sequence_head(p, labels.clone(), cfg.train.seed)?;
    }
    let labels = p.task.as_ref().map(|t| t.labels.clone()).unwrap_or(labels);
    let tok = p.tokenizer()?.clone();
    let max_len = cfg.max_length.min(p.config().max_positions);
    let train = encode_examples(&tok, records, &fields, Some(&labels), max_len)?;
    let valid = encode_examples(&tok, valid, &fields, Some(&labels), max_len)?;
    let metric = if labels.regression {
        pick_metric(
            cfg.metric.as_deref(),
            &["pearson", "spearman"],
            &["mse", "valid_loss"],
            "pearson",
        )?
    } else {
        pick_metric(
            cfg.metric.as_deref(),
            &["accuracy", "macro_f1"],
            &["valid_loss"],
            "accuracy",
        )?
    };
    Ok(ExampleTask {
        order: Order::new(train.len(), cfg.train.seed),
        train,
        valid,
        metric,
        micro: Box::new(|refs| {
            // An example without a label (distillation's unlabelled texts) is marked -100.
            let labels = refs.iter().map(|e| e.label.unwrap_or(-100.0)).collect();
            Ok((batch_of(refs)?, labels))
        }),
        count: Box::new(|labels| labels.len()),
        loss: Box::new(sequence_loss),
        evaluate: Box::new(evaluate_examples),
        aux: None,
        sharded_eval: true,
    })
}
