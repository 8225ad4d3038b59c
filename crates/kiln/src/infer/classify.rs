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

/// Logits `[sequences, outputs]` of a packed batch (dropout off).
pub fn sequence_logits(p: &Pretrained, batch: &Batch) -> Result<Vec<f32>> {
    let head = sequence_head(p)?;
    let hidden = p.model.forward(batch, p.model.default_mask(), None)?;
    let h = p.config().hidden_size;
    let rows = sequence_rows(p, batch);
    let x: Vec<f32> = rows.iter().flat_map(|&r| hidden.row(r).to_vec()).collect();
    let pooled = match &p.pooler {
        Some(pl) if p.config().arch.is_encoder() => pl.forward(&x, rows.len())?,
        _ => x,
    };
    debug_assert_eq!(pooled.len(), rows.len() * h);
    head.linear.forward(&pooled, rows.len())
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
