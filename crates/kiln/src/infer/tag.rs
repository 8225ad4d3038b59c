//! Token classification: a label for every token, mapped back to words through the first
//! word piece of each word.

use crate::checkpoint::Pretrained;
use crate::error::{Error, Result};
use crate::heads::{HeadKind, TaskHead};
use crate::model::Batch;

/// The token-classification head of `p`, or an error saying the model has none.
pub fn token_head(p: &Pretrained) -> Result<&TaskHead> {
    match &p.task {
        Some(t) if t.kind == HeadKind::Token => Ok(t),
        _ => Err(Error::Input(format!(
            "{} has no token-classification head; it has {} (fine-tune one with `kiln finetune --task tag`)",
            p.dir.display(),
            p.head_description()
        ))),
    }
}

/// Logits `[tokens, labels]` of a packed batch (dropout off).
pub fn token_logits(p: &Pretrained, batch: &Batch) -> Result<Vec<f32>> {
    let head = token_head(p)?;
    let hidden = p.model.forward(batch, p.model.default_mask(), None)?;
    head.linear.forward(hidden.data(), hidden.rows())
}

/// One label id per word of a sequence from the logits of its tokens: the arg-max at each
/// word's first piece; `None` for a word with no token (cut off by truncation).
pub fn word_labels(
    logits: &[f32],
    k: usize,
    word_ids: &[Option<u32>],
    words: usize,
) -> Vec<Option<usize>> {
    let mut out = vec![None; words];
    for (t, w) in word_ids.iter().enumerate() {
        if let Some(w) = w.map(|w| w as usize).filter(|&w| w < words) {
            if out[w].is_none() {
                let row = &logits[t * k..(t + 1) * k];
                let best = row
                    .iter()
                    .enumerate()
                    .fold(
                        (0, f32::NEG_INFINITY),
                        |b, (i, &v)| if v > b.1 { (i, v) } else { b },
                    );
                out[w] = Some(best.0);
            }
        }
    }
    out
}
