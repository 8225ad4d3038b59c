//! Fill-mask: the masked-LM head's distribution at each mask position. Only the mask rows go
//! through the vocabulary projection.

use crate::checkpoint::Pretrained;
use crate::engine::softmax::softmax_rows;
use crate::engine::topk::top_k;
use crate::error::{Error, Result};
use crate::model::Batch;
use crate::tokenize::Tokenizer;

/// One candidate for a masked position.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct MaskPrediction {
    /// Vocabulary id.
    pub token_id: u32,
    /// Token string.
    pub token: String,
    /// Softmax probability.
    pub score: f32,
}

/// For each mask token of `text`, left to right, the `top_k` most likely tokens.
pub fn fill_mask(
    p: &Pretrained,
    tokenizer: &Tokenizer,
    text: &str,
    top_k_n: usize,
) -> Result<Vec<Vec<MaskPrediction>>> {
    let head = p.mlm_head.as_ref().ok_or_else(|| {
        Error::Input(format!(
            "{} has no masked-LM head (cls.predictions.*); fill-mask needs a BertForMaskedLM checkpoint",
            p.dir.display()
        ))
    })?;
    let mask_id = tokenizer
        .mask_id()
        .ok_or_else(|| Error::Input("the tokenizer has no [MASK] token".into()))?;
    let max = p.config().max_positions;
    let mut enc = tokenizer.encode(text, None)?;
    if enc.ids.len() > max {
        // Cut to the model's positions, which must keep every mask: an answer for only some
        // of them would be read as an answer for all.
        let masks = enc.ids.iter().filter(|&&i| i == mask_id).count();
        let mut cut = tokenizer.clone();
        cut.set_truncation(Some(max), Default::default())?;
        enc = cut.encode(text, None)?;
        let kept = enc.ids.iter().filter(|&&i| i == mask_id).count();
        if kept < masks {
            return Err(Error::Input(format!(
                "{masks} masks, but only {kept} fall within the model's {max} positions; shorten the text or split it"
            )));
        }
    }
    let positions: Vec<usize> = enc
        .ids
        .iter()
        .enumerate()
        .filter(|(_, &i)| i == mask_id)
        .map(|(k, _)| k)
        .collect();
    if positions.is_empty() {
        return Ok(Vec::new());
    }
    let batch = Batch::packed(&[(&enc.ids, Some(&enc.type_ids))])?;
    let hidden = p.model.forward(&batch, p.model.default_mask(), None)?;
    let h = p.config().hidden_size;
    let rows: Vec<f32> = positions
        .iter()
        .flat_map(|&k| hidden.row(k).to_vec())
        .collect();
    let _ = h;
    let mut logits = head.forward(&rows, positions.len(), &p.model.embeddings.word)?;
    if !logits.iter().all(|v| v.is_finite()) {
        return Err(Error::NonFinite(
            "the model's output is not finite (NaN or infinity); its weights overflow on this input".into(),
        ));
    }
    let v = p.config().vocab_size;
    softmax_rows(&mut logits, v);
    Ok(logits
        .chunks(v)
        .map(|row| {
            top_k(row, top_k_n)
                .into_iter()
                .map(|(id, score)| MaskPrediction {
                    token_id: id as u32,
                    token: token_str(tokenizer, id as u32),
                    score,
                })
                .collect()
        })
        .collect())
}

/// A candidate token as text: WordPiece's own spelling (`##ing`), and for byte-level BPE
/// (RoBERTa) its decoded bytes (`Ġapple` is " apple"), as transformers' pipeline shows it.
fn token_str(tokenizer: &crate::tokenize::Tokenizer, id: u32) -> String {
    let raw = tokenizer.id_to_token(id).unwrap_or_default();
    match tokenizer.kind() {
        crate::tokenize::TokenizerKind::Bpe => tokenizer.decode(&[id], false).unwrap_or(raw),
        _ => raw,
    }
}
