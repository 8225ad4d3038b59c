//! Fine-tuning for token classification (NER, POS): words with one tag each (JSONL
//! `tokens`/`tags` fields, or CoNLL column files), the first word piece of each word carrying
//! its tag (the other pieces ignored, or all labelled with `label_all_pieces`), the loss and
//! its backward pass, and evaluation (token accuracy; entity precision/recall/F1 as seqeval).

use super::backprop::{backward_with, forward, IGNORE};
use super::classify::read_label_file;
use super::config::FinetuneConfig;
use super::finetune::{hidden_term, pick_metric, Criterion, ExampleTask, HiddenTerm, Order};
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

/// One encoded sentence, or one window of a sentence longer than the model reads at once.
#[derive(Clone, Debug, PartialEq)]
pub struct TagExample {
    /// Token ids with special tokens.
    pub ids: Vec<u32>,
    /// Word index of each token within this window (`None` for special tokens).
    pub word_ids: Vec<Option<u32>>,
    /// Words in this window (some may be cut by truncation).
    pub words: usize,
    /// Training target of each token (label id, or -100 where ignored).
    pub targets: Vec<i64>,
    /// Gold label id of each word of the window, when the data has tags.
    pub gold: Option<Vec<usize>>,
    /// The sentence (record index) this window belongs to.
    pub sentence: usize,
    /// The sentence's index of the window's first word.
    pub first_word: usize,
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

/// How a sentence longer than `max_len` tokens is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LongSentences {
    /// Cut at `max_len` (training: the words past it are not learned from).
    Truncate,
    /// Overlapping windows of whole words, each within `max_len`, so every word is tagged
    /// (evaluation and prediction); neighbouring windows share about half their tokens.
    Windows,
}

/// Encodes sentences given as words; with `labels`, the tags become targets on each word's
/// first piece (every piece with `all_pieces`). Windows of one sentence are adjacent.
#[allow(clippy::too_many_arguments)]
pub fn encode_tag_examples(
    tok: &Tokenizer,
    records: &[Record],
    tokens_field: &str,
    tag_field: &str,
    labels: Option<&Labels>,
    max_len: usize,
    all_pieces: bool,
    long: LongSentences,
) -> Result<Vec<TagExample>> {
    let mut cut = tok.clone();
    cut.set_truncation(Some(max_len), Truncation::LongestFirst)?;
    let mut whole = tok.clone();
    whole.set_truncation(None, Truncation::LongestFirst)?;
    let per_sentence: Vec<Vec<TagExample>> = records
        .par_iter()
        .enumerate()
        .map(|(sentence, r)| {
            let words = words_of(r, tokens_field, "--tokens-field")?;
            if words.is_empty() {
                return Err(r.error("the sentence has no words"));
            }
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
            let spans = match long {
                LongSentences::Truncate => vec![(0, words.len())],
                LongSentences::Windows => {
                    let full = whole.encode_words(&words).map_err(|e| r.error(e))?;
                    word_windows(&full.word_ids, words.len(), max_len)
                }
            };
            spans
                .into_iter()
                .map(|(a, b)| {
                    let enc = cut.encode_words(&words[a..b]).map_err(|e| r.error(e))?;
                    let gold = gold.as_ref().map(|g| g[a..b].to_vec());
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
                        words: b - a,
                        targets,
                        gold,
                        sentence,
                        first_word: a,
                    })
                })
                .collect()
        })
        .collect::<Result<_>>()?;
    Ok(per_sentence.into_iter().flatten().collect())
}

/// Word ranges `[a, b)` of overlapping windows covering a sentence whose full encoding has
/// `word_ids`, each within `max_len` tokens; the next window starts about half a window back.
/// A word longer than a window on its own is a window of its own (its first piece is kept,
/// the rest cut).
fn word_windows(word_ids: &[Option<u32>], words: usize, max_len: usize) -> Vec<(usize, usize)> {
    let mut pieces = vec![0usize; words];
    for w in word_ids.iter().flatten() {
        pieces[*w as usize] += 1;
    }
    let specials = word_ids.iter().filter(|w| w.is_none()).count();
    let budget = max_len.saturating_sub(specials).max(1);
    let mut out = Vec::new();
    let mut a = 0;
    while a < words {
        let (mut b, mut used) = (a, 0);
        while b < words && used + pieces[b] <= budget {
            used += pieces[b];
            b += 1;
        }
        let b = b.max(a + 1);
        out.push((a, b));
        if b >= words {
            break;
        }
        // The next window shares at least the last word (so it gets context on its right),
        // then words up to half a window.
        let mut next = b;
        let mut tail = 0;
        while next - 1 > a && (next == b || tail + pieces[next - 1] <= budget / 2) {
            tail += pieces[next - 1];
            next -= 1;
        }
        a = next;
    }
    out
}

/// Merges per-window word labels into one label per word of each sentence: a word seen by
/// several windows takes the label of the window where it has the most context on both sides.
/// `labels(i)` gives window `i`'s labels for its words, or `None` for a word cut off.
fn merge_windows(
    examples: &[TagExample],
    fallback: usize,
    labels: impl Fn(usize) -> Vec<Option<usize>>,
) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut context: Vec<i64> = Vec::new();
    let mut current = None;
    for (i, e) in examples.iter().enumerate() {
        if current != Some(e.sentence) {
            out.push(Vec::new());
            context.clear();
            current = Some(e.sentence);
        }
        let words = out.last_mut().expect("pushed above");
        let need = e.first_word + e.words;
        if words.len() < need {
            words.resize(need, fallback);
            context.resize(need, -1);
        }
        for (j, l) in labels(i).into_iter().enumerate() {
            let Some(l) = l else { continue };
            let ctx = j.min(e.words - 1 - j) as i64;
            let w = e.first_word + j;
            if ctx > context[w] {
                context[w] = ctx;
                words[w] = l;
            }
        }
    }
    out
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
    let k = head.linear.out_features();
    token_loss_with(
        p,
        batch,
        grads,
        grad_scale,
        dropout_seed,
        &|logits, dlogits| Ok(cross_entropy(logits, k, targets, IGNORE, Some(dlogits))?.0),
        None,
    )
}

/// The token head's forward and backward around `criterion`, which turns the `[tokens, tags]`
/// logits into the mean loss and writes its gradient (see [`Criterion`]).
pub(crate) fn token_loss_with(
    p: &Pretrained,
    batch: &Batch,
    grads: &mut Pretrained,
    grad_scale: f32,
    dropout_seed: Option<u64>,
    criterion: Criterion,
    states: Option<HiddenTerm>,
) -> Result<f32> {
    let head = token_head(p)?;
    let t = batch.tokens();
    let (h, k) = (p.config().hidden_size, head.linear.out_features());
    let mask = p.model.default_mask();
    let (hidden, acts) = forward(&p.model, batch, mask, dropout_seed)?;
    let (hidden_loss, layer_grads) = hidden_term(states, &acts, grad_scale)?;
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
    let loss = criterion(&logits, &mut dlogits)?;
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
    backward_with(
        &p.model,
        batch,
        mask,
        &acts,
        dd,
        &mut grads.model,
        dropout_seed,
        &layer_grads,
    )?;
    Ok(loss + hidden_loss)
}

/// Predicted tag ids per word of each sentence (windows of a sentence merged).
pub fn predict_tags(p: &Pretrained, examples: &[TagExample]) -> Result<Vec<Vec<usize>>> {
    predict_tags_with(p, examples, &|_, _| {})
}

/// [`predict_tags`], calling `progress(done, total)` (in windows) as it goes.
pub fn predict_tags_with(
    p: &Pretrained,
    examples: &[TagExample],
    progress: &dyn Fn(usize, usize),
) -> Result<Vec<Vec<usize>>> {
    let head = token_head(p)?;
    let k = head.linear.out_features();
    let fallback = head.labels.id("O").unwrap_or(0);
    let mut windows: Vec<Vec<Option<usize>>> = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(64) {
        progress(windows.len(), examples.len());
        let refs: Vec<&TagExample> = chunk.iter().collect();
        let batch = tag_batch(&refs)?;
        let logits = token_logits(p, &batch)?;
        let mut off = 0;
        for e in chunk {
            let n = e.ids.len();
            windows.push(word_labels(
                &logits[off * k..(off + n) * k],
                k,
                &e.word_ids,
                e.words,
            ));
            off += n;
        }
    }
    Ok(merge_windows(examples, fallback, |i| windows[i].clone()))
}

/// Metrics on tagged examples: `valid_loss` (over first pieces), `token_accuracy` (over words)
/// and entity `precision`/`recall`/`f1` (seqeval's micro average), all 0–100.
pub fn evaluate_tags(p: &Pretrained, examples: &[TagExample]) -> Result<serde_json::Value> {
    evaluate_tags_with(p, examples, &|_, _| {})
}

/// [`evaluate_tags`], calling `progress(done, total)` (in windows, twice over: the loss, then
/// the tags) as it goes.
pub fn evaluate_tags_with(
    p: &Pretrained,
    examples: &[TagExample],
    progress: &dyn Fn(usize, usize),
) -> Result<serde_json::Value> {
    let head = token_head(p)?;
    let k = head.linear.out_features();
    let (mut loss_sum, mut count) = (0.0f64, 0usize);
    let total = 2 * examples.len();
    for (i, chunk) in examples.chunks(64).enumerate() {
        progress(i * 64, total);
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
    let pred = predict_tags_with(p, examples, &|done, _| {
        progress(examples.len() + done, total)
    })?;
    let names = &head.labels.names;
    let to_names = |ids: &[usize]| ids.iter().map(|&i| names[i].clone()).collect::<Vec<_>>();
    if examples.iter().any(|e| e.gold.is_none()) {
        return Err(Error::Input("evaluation data needs tags".into()));
    }
    let gold = merge_windows(examples, 0, |i| {
        examples[i]
            .gold
            .iter()
            .flatten()
            .map(|&g| Some(g))
            .collect()
    });
    let gold: Vec<Vec<String>> = gold.iter().map(|g| to_names(g)).collect();
    let pred: Vec<Vec<String>> = pred.iter().map(|p| to_names(p)).collect();
    let (pr, rc, f1) = entity_prf(&gold, &pred);
    Ok(serde_json::json!({
        "valid_loss": loss_sum / count.max(1) as f64,
        "token_accuracy": 100.0 * token_accuracy(&gold, &pred),
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
    default_names: Option<Vec<String>>,
) -> Result<ExampleTask<TagExample, i64>> {
    let names = cfg
        .labels
        .as_deref()
        .map(|f| read_label_file(f, &cfg.tag_field))
        .transpose()?
        .or(default_names);
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
    // Training learns from what fits; evaluation tags every word, as `kiln eval` does.
    let enc = |recs: &[Record], long| {
        encode_tag_examples(
            &tok,
            recs,
            &cfg.tokens_field,
            &cfg.tag_field,
            Some(&labels),
            max_len,
            cfg.label_all_pieces,
            long,
        )
    };
    let train = enc(records, LongSentences::Truncate)?;
    let valid = enc(valid, LongSentences::Windows)?;
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
        micro: Box::new(|refs| {
            let targets = refs
                .iter()
                .flat_map(|e| e.targets.iter().copied())
                .collect();
            Ok((tag_batch(refs)?, targets))
        }),
        count: Box::new(|targets| targets.iter().filter(|&&t| t != IGNORE).count()),
        loss: Box::new(token_loss),
        evaluate: Box::new(evaluate_tags),
        aux: None,
        sharded_eval: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The word ids of `[CLS] pieces... [SEP]` for words of the given piece counts.
    fn word_ids(pieces: &[usize]) -> Vec<Option<u32>> {
        let mut v = vec![None];
        for (w, &n) in pieces.iter().enumerate() {
            v.extend(std::iter::repeat_n(Some(w as u32), n));
        }
        v.push(None);
        v
    }

    #[test]
    fn windows_cover_every_word_within_the_length_and_overlap() {
        let pieces = [1, 3, 1, 2, 1, 1, 4, 1, 1, 2, 1, 1, 1, 2];
        let max_len = 8; // 6 text tokens per window
        let w = word_windows(&word_ids(&pieces), pieces.len(), max_len);
        assert_eq!(w.first().map(|x| x.0), Some(0));
        assert_eq!(w.last().map(|x| x.1), Some(pieces.len()));
        for pair in w.windows(2) {
            assert!(pair[1].0 > pair[0].0, "progress: {w:?}");
            assert!(pair[1].0 < pair[0].1, "neighbours overlap: {w:?}");
        }
        for &(a, b) in &w {
            assert!(pieces[a..b].iter().sum::<usize>() <= 6, "{w:?}");
        }
        // A sentence that fits is one window; a word longer than a window is one of its own.
        assert_eq!(word_windows(&word_ids(&[1, 2]), 2, 8), vec![(0, 2)]);
        assert_eq!(
            word_windows(&word_ids(&[1, 9, 1]), 3, 8),
            vec![(0, 1), (1, 2), (2, 3)]
        );
    }

    #[test]
    fn merged_windows_take_each_words_most_central_label() {
        let window = |sentence, first_word, words| TagExample {
            ids: Vec::new(),
            word_ids: Vec::new(),
            words,
            targets: Vec::new(),
            gold: None,
            sentence,
            first_word,
        };
        // Sentence 0: words 0-4 and 2-6; sentence 1: one window of 2 words.
        let ex = [window(0, 0, 5), window(0, 2, 5), window(1, 0, 2)];
        let labels = |i: usize| match i {
            0 => vec![Some(1); 5],
            1 => vec![Some(2), Some(2), Some(2), None, Some(2)],
            _ => vec![Some(3), None],
        };
        // Word 2: centre of window 0 (2 each side) beats the edge of window 1; word 3 sits one
        // from window 0's edge and one into window 1: the first keeps it; word 4: window 1.
        // Word 5 was cut off in window 1 (no label): the fallback 0.
        assert_eq!(
            merge_windows(&ex, 0, labels),
            vec![vec![1, 1, 1, 1, 2, 0, 2], vec![3, 0]]
        );
    }
}
