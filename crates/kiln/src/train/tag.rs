//! Fine-tuning for token classification (NER, POS): words with one tag each (JSONL
//! `tokens`/`tags` fields, or CoNLL column files), the first word piece of each word carrying
//! its tag (the other pieces ignored, or all labelled with `label_all_pieces`), the loss and
//! its backward pass, and evaluation (token accuracy; entity precision/recall/F1 as seqeval).

use super::backprop::{backward, forward, IGNORE};
use super::classify::read_label_file;
use super::config::FinetuneConfig;
use super::finetune::{pick_metric, ExampleTask, Order};
use crate::checkpoint::Pretrained;
use crate::data::records::Record;
use crate::engine::dropout::{mix, Dropout};
use crate::engine::grad::{cross_entropy, linear_backward};
use crate::engine::LinearOut;
use crate::error::{Error, Result};
use crate::heads::{HeadKind, Labels};
use crate::infer::tag::{token_head, token_logits, word_labels};
use crate::metrics::{entity_prf, token_accuracy};
use crate::model::init::Init;
use crate::model::Batch;
use crate::tokenize::{Tokenizer, Truncation};
use rayon::prelude::*;

/// One encoded sentence.
#[derive(Clone, Debug, PartialEq)]
pub struct TagExample {
    /// Token ids with special tokens.
    pub ids: Vec<u32>,
    /// Word index of each token (`None` for special tokens).
    pub word_ids: Vec<Option<u32>>,
    /// Words in the sentence (some may be cut by truncation).
    pub words: usize,
    /// Training target of each token (label id, or -100 where ignored).
    pub targets: Vec<i64>,
    /// Gold label id of each word, when the data has tags.
    pub gold: Option<Vec<usize>>,
}

/// A list-of-strings field of a record (the words, or the tags); `flag` names the option that
/// chooses the field, for the error message.
pub fn words_of<'a>(r: &'a Record, field: &str, flag: &str) -> Result<Vec<&'a str>> {
    let v = r
        .fields
        .get(field)
        .ok_or_else(|| r.error(format!("no field \"{field}\" (choose it with {flag})")))?;
    let list = v
        .as_array()
        .ok_or_else(|| r.error(format!("field \"{field}\" is not a list of strings")))?;
    list.iter()
        .map(|w| {
            w.as_str()
                .ok_or_else(|| r.error(format!("field \"{field}\" holds a non-string {w}")))
        })
        .collect()
}

/// The tag set: from a label file or the tags of the data, sorted with "O" first.
pub fn collect_tags(records: &[Record], field: &str, names: Option<Vec<String>>) -> Result<Labels> {
    let names = match names {
        Some(n) => n,
        None => {
            let mut set = std::collections::BTreeSet::new();
            for r in records {
                for t in words_of(r, field, "--tag-field")? {
                    set.insert(t.to_string());
                }
            }
            let mut n: Vec<String> = set.into_iter().collect();
            if let Some(i) = n.iter().position(|t| t == "O") {
                let o = n.remove(i);
                n.insert(0, o);
            }
            n
        }
    };
    if names.len() < 2 {
        return Err(Error::Input(format!(
            "the data has {} distinct tag(s) in \"{field}\"; tagging needs two or more",
            names.len()
        )));
    }
    Ok(Labels {
        names,
        regression: false,
        integer: false,
    })
}

/// Encodes sentences given as words, truncated to `max_len` tokens; with `labels`, the tags
/// become targets on each word's first piece (every piece with `all_pieces`).
pub fn encode_tag_examples(
    tok: &Tokenizer,
    records: &[Record],
    tokens_field: &str,
    tag_field: &str,
    labels: Option<&Labels>,
    max_len: usize,
    all_pieces: bool,
) -> Result<Vec<TagExample>> {
    let mut tok = tok.clone();
    tok.set_truncation(Some(max_len), Truncation::LongestFirst)?;
    records
        .par_iter()
        .map(|r| {
            let words = words_of(r, tokens_field, "--tokens-field")?;
            if words.is_empty() {
                return Err(r.error("the sentence has no words"));
            }
            let enc = tok.encode_words(&words).map_err(|e| r.error(e))?;
            let gold = match labels {
                Some(l) => {
                    let tags = words_of(r, tag_field, "--tag-field")?;
                    if tags.len() != words.len() {
                        return Err(r.error(format!(
                            "{} words but {} tags",
                            words.len(),
                            tags.len()
                        )));
                    }
                    let ids = tags
                        .iter()
                        .map(|t| {
                            l.id(t).ok_or_else(|| {
                                r.error(format!(
                                    "tag \"{t}\" is not one of the {} tags",
                                    l.names.len()
                                ))
                            })
                        })
                        .collect::<Result<Vec<usize>>>()?;
                    Some(ids)
                }
                None => None,
            };
            let mut targets = vec![IGNORE; enc.ids.len()];
            if let (Some(g), Some(l)) = (&gold, labels) {
                let mut prev = None;
                for (t, w) in enc.word_ids.iter().enumerate() {
                    if let Some(w) = *w {
                        let id = g[w as usize];
                        if prev != Some(w) {
                            targets[t] = id as i64;
                        } else if all_pieces {
                            // Later pieces of a B- word continue it (transformers' run_ner).
                            targets[t] = inside_of(l, id) as i64;
                        }
                    }
                    prev = *w;
                }
            }
            Ok(TagExample {
                ids: enc.ids,
                word_ids: enc.word_ids,
                words: words.len(),
                targets,
                gold,
            })
        })
        .collect()
}

/// The I- label continuing a B- label (itself when there is none).
fn inside_of(labels: &Labels, id: usize) -> usize {
    labels.names[id]
        .strip_prefix("B-")
        .and_then(|t| labels.id(&format!("I-{t}")))
        .unwrap_or(id)
}

/// A packed batch of sentences (one segment).
pub fn tag_batch(examples: &[&TagExample]) -> Result<Batch> {
    let seqs: Vec<(&[u32], Option<&[u32]>)> = examples.iter().map(|e| (&e.ids[..], None)).collect();
    Batch::packed(&seqs)
}

/// Gives `p` a new token-classification head for `labels` (seeded, as transformers
/// initializes it) and drops pre-training heads.
pub fn new_token_head(p: &mut Pretrained, labels: Labels, seed: u64) -> Result<()> {
    let cfg = p.config().clone();
    let std = cfg.initializer_range as f32;
    let mut init = Init::new(mix(seed ^ 0x7A66_1E55), std);
    let linear = init.linear(labels.names.len(), cfg.hidden_size, std);
    p.set_task_head(HeadKind::Token, linear, labels);
    Ok(())
}

/// Mean cross-entropy over the tokens with a target, and its gradients (scaled by
/// `grad_scale`) added into `grads`; dropout before the classifier in training mode.
pub fn token_loss(
    p: &Pretrained,
    batch: &Batch,
    targets: &[i64],
    grads: &mut Pretrained,
    grad_scale: f32,
    dropout_seed: Option<u64>,
) -> Result<f32> {
    let head = token_head(p)?;
    let t = batch.tokens();
    if targets.len() != t {
        return Err(Error::shape("token_loss", "one target per token"));
    }
    let (h, k) = (p.config().hidden_size, head.linear.out_features());
    let mask = p.model.default_mask();
    let (hidden, acts) = forward(&p.model, batch, mask, dropout_seed)?;
    let drop = dropout_seed
        .filter(|_| head.dropout > 0.0)
        .map(|s| Dropout {
            p: head.dropout,
            seed: Dropout::derive(s, 0x7A66_D809),
        });
    // The head's input: a dropped-out copy in training, the hidden rows themselves otherwise.
    let d: std::borrow::Cow<[f32]> = match drop {
        Some(dr) => {
            let mut v = hidden.clone();
            dr.apply(&mut v);
            v.into()
        }
        None => (&hidden[..]).into(),
    };
    let mut logits = vec![0.0; t * k];
    head.linear
        .forward_into(&d, t, &mut logits, LinearOut::Write)?;
    let mut dlogits = vec![0.0; t * k];
    let (loss, _) = cross_entropy(&logits, k, targets, IGNORE, Some(&mut dlogits))?;
    dlogits.iter_mut().for_each(|g| *g *= grad_scale);
    let gt = grads
        .task
        .as_mut()
        .ok_or_else(|| Error::Input("gradient buffers lack the task head".into()))?;
    let mut dd = vec![0.0; t * h];
    linear_backward(
        &d,
        &head.linear.weight,
        &dlogits,
        t,
        Some(&mut dd),
        Some(gt.linear.weight.data_mut()),
        gt.linear.bias.as_mut().map(|b| b.data_mut()),
    )?;
    if let Some(dr) = drop {
        dr.apply(&mut dd);
    }
    backward(
        &p.model,
        batch,
        mask,
        &acts,
        dd,
        &mut grads.model,
        dropout_seed,
    )?;
    Ok(loss)
}

/// Predicted tag ids per word of each example.
pub fn predict_tags(p: &Pretrained, examples: &[TagExample]) -> Result<Vec<Vec<usize>>> {
    let head = token_head(p)?;
    let k = head.linear.out_features();
    let fallback = head.labels.id("O").unwrap_or(0);
    let mut out = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(64) {
        let refs: Vec<&TagExample> = chunk.iter().collect();
        let batch = tag_batch(&refs)?;
        let logits = token_logits(p, &batch)?;
        let mut off = 0;
        for e in chunk {
            let n = e.ids.len();
            out.push(word_labels(
                &logits[off * k..(off + n) * k],
                k,
                &e.word_ids,
                e.words,
                fallback,
            ));
            off += n;
        }
    }
    Ok(out)
}

/// Metrics on tagged examples: `valid_loss` (over first pieces), `token_accuracy` (over words,
/// 0–1) and entity `precision`/`recall`/`f1` (0–100, seqeval's micro average).
pub fn evaluate_tags(p: &Pretrained, examples: &[TagExample]) -> Result<serde_json::Value> {
    let head = token_head(p)?;
    let k = head.linear.out_features();
    let (mut loss_sum, mut count) = (0.0f64, 0usize);
    for chunk in examples.chunks(64) {
        let refs: Vec<&TagExample> = chunk.iter().collect();
        let batch = tag_batch(&refs)?;
        let logits = token_logits(p, &batch)?;
        let targets: Vec<i64> = chunk
            .iter()
            .flat_map(|e| e.targets.iter().copied())
            .collect();
        let (l, n) = cross_entropy(&logits, k, &targets, IGNORE, None)?;
        loss_sum += l as f64 * n as f64;
        count += n;
    }
    let pred = predict_tags(p, examples)?;
    let names = &head.labels.names;
    let to_names = |ids: &[usize]| ids.iter().map(|&i| names[i].clone()).collect::<Vec<_>>();
    let gold: Vec<Vec<String>> = examples
        .iter()
        .map(|e| {
            e.gold
                .as_deref()
                .map(to_names)
                .ok_or_else(|| Error::Input("evaluation data needs tags".into()))
        })
        .collect::<Result<_>>()?;
    let pred: Vec<Vec<String>> = pred.iter().map(|p| to_names(p)).collect();
    let (pr, rc, f1) = entity_prf(&gold, &pred);
    Ok(serde_json::json!({
        "valid_loss": loss_sum / count.max(1) as f64,
        "token_accuracy": token_accuracy(&gold, &pred),
        "precision": 100.0 * pr, "recall": 100.0 * rc, "f1": 100.0 * f1,
    }))
}

/// Prepares token classification: the tag set, the head and the encoded sentences.
pub(crate) fn prepare(
    p: &mut Pretrained,
    cfg: &FinetuneConfig,
    records: &[Record],
    valid: &[Record],
    resume: bool,
) -> Result<ExampleTask<TagExample, i64>> {
    let names = cfg
        .labels
        .as_deref()
        .map(|f| read_label_file(f, &cfg.tag_field))
        .transpose()?;
    let labels = collect_tags(records, &cfg.tag_field, names)?;
    let keep = p
        .task
        .as_ref()
        .is_some_and(|t| t.kind == HeadKind::Token && t.labels.names == labels.names);
    if !keep {
        if resume {
            return Err(Error::Input(
                "the checkpoint's tags differ from the data's; resume with the same data".into(),
            ));
        }
        new_token_head(p, labels.clone(), cfg.train.seed)?;
    }
    let tok = p.tokenizer()?.clone();
    let max_len = cfg.max_length.min(p.config().max_positions);
    let enc = |recs: &[Record]| {
        encode_tag_examples(
            &tok,
            recs,
            &cfg.tokens_field,
            &cfg.tag_field,
            Some(&labels),
            max_len,
            cfg.label_all_pieces,
        )
    };
    let train = enc(records)?;
    let valid = enc(valid)?;
    let metric = pick_metric(
        cfg.metric.as_deref(),
        &["f1", "precision", "recall", "token_accuracy"],
        &["valid_loss"],
        "f1",
    )?;
    Ok(ExampleTask {
        order: Order::new(train.len(), cfg.train.seed),
        train,
        valid,
        metric,
        micro: |refs| {
            let targets = refs
                .iter()
                .flat_map(|e| e.targets.iter().copied())
                .collect();
            Ok((tag_batch(refs)?, targets))
        },
        count: |targets| targets.iter().filter(|&&t| t != IGNORE).count(),
        loss: token_loss,
        evaluate: Box::new(evaluate_tags),
    })
}
