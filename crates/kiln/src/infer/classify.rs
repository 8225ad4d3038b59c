//! Sequence classification and regression: the row that represents each sequence ([CLS]
//! through BERT's pooler; GPT-2's last token), the head's logits, and predictions with
//! probabilities.

use crate::checkpoint::Pretrained;
use crate::engine::softmax::softmax_rows;
use crate::error::{Error, Result};
use crate::heads::{HeadKind, TaskHead};
use crate::model::{Arch, Batch};

/// The sequence-level head of `p`, or an error saying the model has none.
pub fn sequence_head(p: &Pretrained) -> Result<&TaskHead> {
    match &p.task {
        Some(t) if t.kind == HeadKind::Sequence => Ok(t),
        _ => Err(Error::Input(format!(
            "{} has no sequence-classification head; it has {} (fine-tune one with `kiln finetune --task classify`)",
            p.dir.display(),
            p.head_description()
        ))),
    }
}

/// The row of each packed sequence that the head reads: the first token for encoders;
/// for GPT-2 the last token that is not `pad_token_id`, as transformers picks it (a text
/// ending in the end-of-text token, often also the pad token, is read before it).
pub fn sequence_rows(p: &Pretrained, batch: &Batch) -> Vec<usize> {
    let pad = p.config().pad_token_id;
    batch
        .offsets()
        .iter()
        .zip(&batch.seq_lens)
        .map(|(&o, &l)| match p.config().arch {
            Arch::Gpt2 => (o..o + l)
                .rev()
                .find(|&r| Some(batch.ids[r]) != pad)
                .unwrap_or(o),
            _ => o,
        })
        .collect()
}

/// What the head reads of each sequence of a packed `[tokens, h]` state matrix, `[sequences,
/// h]`: the row [`sequence_rows`] picks, or for an LSTM the mean of all its rows (no single
/// token's state has seen the whole sequence in both directions).
pub fn sequence_features(p: &Pretrained, batch: &Batch, hidden: &[f32]) -> Vec<f32> {
    let h = p.config().hidden_size;
    if p.config().lstm.is_none() {
        return sequence_rows(p, batch)
            .iter()
            .flat_map(|&r| hidden[r * h..(r + 1) * h].iter().copied())
            .collect();
    }
    let mut out = vec![0.0f32; batch.seq_lens.len() * h];
    for ((o, &l), acc) in batch
        .offsets()
        .into_iter()
        .zip(&batch.seq_lens)
        .zip(out.chunks_mut(h))
    {
        for r in o..o + l {
            acc.iter_mut()
                .zip(&hidden[r * h..(r + 1) * h])
                .for_each(|(a, b)| *a += b);
        }
        let inv = 1.0 / l.max(1) as f32;
        acc.iter_mut().for_each(|a| *a *= inv);
    }
    out
}

/// The gradient of the whole `[tokens, h]` state matrix from that of [`sequence_features`].
pub fn sequence_features_backward(p: &Pretrained, batch: &Batch, dx: &[f32]) -> Vec<f32> {
    let h = p.config().hidden_size;
    let t = batch.tokens();
    if p.config().lstm.is_none() {
        return crate::train::backprop::scatter_rows(dx, &sequence_rows(p, batch), h, t * h);
    }
    let mut out = vec![0.0f32; t * h];
    for ((o, &l), d) in batch
        .offsets()
        .into_iter()
        .zip(&batch.seq_lens)
        .zip(dx.chunks(h))
    {
        let inv = 1.0 / l.max(1) as f32;
        for r in o..o + l {
            out[r * h..(r + 1) * h]
                .iter_mut()
                .zip(d)
                .for_each(|(a, b)| *a = b * inv);
        }
    }
    out
}

/// Logits `[sequences, outputs]` of a packed batch (dropout off).
pub fn sequence_logits(p: &Pretrained, batch: &Batch) -> Result<Vec<f32>> {
    let head = sequence_head(p)?;
    let hidden = p.model.forward(batch, p.model.default_mask(), None)?;
    let n = batch.seq_lens.len();
    let x = sequence_features(p, batch, hidden.data());
    let pooled = match &p.pooler {
        Some(pl) if p.config().arch.is_encoder() => pl.forward(&x, n)?,
        _ => x,
    };
    head.linear.forward(&pooled, n)
}

/// One sequence's prediction.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassPrediction {
    /// Predicted label id (regression: 0).
    pub label: usize,
    /// Its probability (regression: the predicted value).
    pub score: f32,
    /// Probabilities in label-id order (regression: the value).
    pub probabilities: Vec<f32>,
}

/// Predictions from logits `[n, outputs]`.
pub fn predictions(head: &TaskHead, logits: &[f32]) -> Vec<ClassPrediction> {
    let k = head.linear.out_features();
    if head.labels.regression {
        return logits
            .iter()
            .map(|&v| ClassPrediction {
                label: 0,
                score: v,
                probabilities: vec![v],
            })
            .collect();
    }
    let mut probs = logits.to_vec();
    softmax_rows(&mut probs, k);
    probs
        .chunks(k)
        .map(|row| {
            let (label, &score) =
                row.iter().enumerate().fold(
                    (0, &f32::NEG_INFINITY),
                    |b, c| if c.1 > b.1 { c } else { b },
                );
            ClassPrediction {
                label,
                score,
                probabilities: row.to_vec(),
            }
        })
        .collect()
}
