//! Extractive QA inference: start and end logits over a window's tokens (`qa_outputs`), and
//! the answer decoded as transformers' `postprocess_qa_predictions` does: the best valid span
//! (start ≤ end, at most `max_answer_length` tokens, inside the context) over all windows of a
//! question, or no answer when the [CLS] score beats it by the null threshold.

use crate::checkpoint::Pretrained;
use crate::error::{Error, Result};
use crate::heads::{HeadKind, TaskHead};
use crate::model::Batch;

/// The span head of `p`, or an error saying the model has none.
pub fn span_head(p: &Pretrained) -> Result<&TaskHead> {
    match &p.task {
        Some(t) if t.kind == HeadKind::Span => Ok(t),
        _ => Err(Error::Input(format!(
            "{} has no question-answering head; it has {} (fine-tune one with `kiln finetune --task qa`)",
            p.dir.display(),
            p.head_description()
        ))),
    }
}

/// Logits `[tokens, 2]` (start, end) of a packed batch (dropout off).
pub fn span_logits(p: &Pretrained, batch: &Batch) -> Result<Vec<f32>> {
    let head = span_head(p)?;
    let hidden = p.model.forward(batch, p.model.default_mask(), None)?;
    head.linear.forward(hidden.data(), hidden.rows())
}

/// One window's logits and where its context tokens are.
pub struct WindowLogits<'a> {
    /// `[tokens, 2]` start and end logits.
    pub logits: &'a [f32],
    /// Byte span in the context of each token; `None` outside the context.
    pub spans: &'a [Option<(usize, usize)>],
}

/// Decoding settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decode {
    /// Longest answer, in tokens.
    pub max_answer_length: usize,
    /// Start and end candidates per window.
    pub n_best: usize,
    /// With `Some(t)`, questions may have no answer: "" is predicted when the [CLS] score
    /// exceeds the best span's score by more than `t` (SQuAD 2.0).
    pub null_threshold: Option<f32>,
}

impl Default for Decode {
    fn default() -> Self {
        Decode {
            max_answer_length: 30,
            n_best: 20,
            null_threshold: None,
        }
    }
}

/// A decoded answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    /// Byte span in the context; `None` for "no answer".
    pub span: Option<(usize, usize)>,
    /// start + end logit of the chosen span (or of [CLS] for no answer).
    pub score: f32,
    /// Softmax probability of the chosen answer among the candidates considered.
    pub probability: f32,
}

fn top(values: impl Iterator<Item = f32>, n: usize) -> Vec<usize> {
    let v: Vec<f32> = values.collect();
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
    idx.truncate(n);
    idx
}

/// The best answer of one question over its windows.
pub fn decode(windows: &[WindowLogits<'_>], d: &Decode) -> Answer {
    let mut cands: Vec<(f32, (usize, usize))> = Vec::new();
    let mut null = f32::INFINITY;
    for w in windows {
        let n = w.spans.len().min(w.logits.len() / 2);
        if n == 0 {
            continue;
        }
        let s = |i: usize| w.logits[2 * i];
        let e = |i: usize| w.logits[2 * i + 1];
        // The smallest [CLS] score over the windows, as transformers takes it.
        null = null.min(s(0) + e(0));
        let starts = top((0..n).map(s), d.n_best);
        let ends = top((0..n).map(e), d.n_best);
        for &a in &starts {
            for &b in &ends {
                let (Some(sa), Some(sb)) = (w.spans[a], w.spans[b]) else {
                    continue;
                };
                if b < a || b - a + 1 > d.max_answer_length {
                    continue;
                }
                cands.push((s(a) + e(b), (sa.0, sb.1)));
            }
        }
    }
    cands.sort_by(|x, y| y.0.total_cmp(&x.0));
    cands.truncate(d.n_best);
    let best = cands.first().copied();
    let with_null = d.null_threshold.is_some() && null.is_finite();
    let mut scores: Vec<f32> = cands.iter().map(|c| c.0).collect();
    if with_null {
        scores.push(null);
    }
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let z: f32 = scores.iter().map(|s| (s - max).exp()).sum();
    let prob = |s: f32| if z > 0.0 { (s - max).exp() / z } else { 0.0 };
    let no_answer = Answer {
        span: None,
        score: null,
        probability: prob(null),
    };
    match (best, d.null_threshold) {
        (None, _) => no_answer,
        (Some((sc, _)), Some(t)) if null - sc > t => no_answer,
        (Some((sc, span)), _) => Answer {
            span: Some(span),
            score: sc,
            probability: prob(sc),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_best_valid_span_across_windows() {
        // Window 1: tokens 0 = [CLS], 1 = question, 2..4 context. Best raw pair (1, 1) is in the
        // question: invalid. Valid best: start 2, end 3.
        let spans1 = [None, None, Some((0, 3)), Some((4, 8)), Some((9, 12))];
        let l1 = [0.5, 0.5, 9.0, 9.0, 2.0, 0.0, 1.0, 3.0, 0.0, -5.0];
        // Window 2: its best valid span scores 1 + 1 = 2.
        let spans2 = [None, Some((9, 12)), Some((13, 20))];
        let l2 = [0.0, 0.0, 1.0, -9.0, 0.5, 1.0];
        let w = [
            WindowLogits {
                logits: &l1,
                spans: &spans1,
            },
            WindowLogits {
                logits: &l2,
                spans: &spans2,
            },
        ];
        let a = decode(&w, &Decode::default());
        assert_eq!(a.span, Some((0, 8)));
        assert_eq!(a.score, 5.0);
        // A one-token limit: token 3 of window 1 alone (1 + 3) is the best single token.
        let short = decode(
            &w,
            &Decode {
                max_answer_length: 1,
                ..Decode::default()
            },
        );
        assert_eq!(short.span, Some((4, 8)));
        // With a null threshold, the [CLS] score (min over windows: 0.0) wins only when it
        // exceeds the best span by more than the threshold.
        let t = decode(
            &w,
            &Decode {
                null_threshold: Some(0.0),
                ..Decode::default()
            },
        );
        assert!(t.span.is_some());
        let l3 = [20.0, 20.0, 0.0, 0.0, 0.0, 0.0];
        let w3 = [WindowLogits {
            logits: &l3,
            spans: &spans2,
        }];
        let n = decode(
            &w3,
            &Decode {
                null_threshold: Some(0.0),
                ..Decode::default()
            },
        );
        assert_eq!(n.span, None);
        assert!(n.probability > 0.99);
    }
}
