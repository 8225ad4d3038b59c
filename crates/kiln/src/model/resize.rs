//! Growing a model's vocabulary for tokens added to its tokenizer (transformers'
//! `resize_token_embeddings`): every tensor with a row per token gets new rows.

use crate::checkpoint::Pretrained;
use crate::engine::Tensor;
use crate::error::{Error, Result};
use crate::model::init::Init;

/// Grows `p`'s vocabulary to `new_size` tokens. New input-embedding rows (and rows of an
/// untied output projection) are drawn from a normal fitted to the existing rows (each column's
/// mean and standard deviation), so a new token starts where the model's inputs live — the
/// idea of transformers' mean resizing — yet distinct from the others: rows that all start at
/// the mean (transformers adds only 1e-9 of the covariance) leave a saddle where, with tied
/// output rows, nothing tells the new tokens apart (a tiny model stayed at a loss of ln(number
/// of new tokens) for hundreds of steps). New output biases start at zero, as transformers pads
/// them. Shrinking is refused.
pub fn grow_vocab(p: &mut Pretrained, new_size: usize, seed: u64) -> Result<()> {
    let old = p.config().vocab_size;
    if new_size < old {
        return Err(Error::Input(format!(
            "the vocabulary can only grow ({old} -> {new_size} tokens)"
        )));
    }
    if new_size == old {
        return Ok(());
    }
    if p.peft.is_some() {
        return Err(Error::Input(
            "new tokens need trainable embeddings: add them with full fine-tuning, not with an adapter".into(),
        ));
    }
    let h = p.config().hidden_size;
    let mut init = Init::new(crate::engine::dropout::mix(seed ^ 0x7E57_0CAB), 1.0);
    let word = &mut p.model.embeddings.word;
    word.weight = grow_rows(&word.weight, old, new_size, h, &mut init)?;
    word.weights_changed();
    if let Some(m) = &mut p.mlm_head {
        if let Some(d) = &mut m.decoder {
            *d = grow_rows(d, old, new_size, h, &mut init)?;
        }
        let mut bias = m.bias.data().to_vec();
        bias.resize(new_size, 0.0);
        m.bias = Tensor::new(vec![new_size], bias)?;
    }
    if let Some(w) = p.lm_head.as_mut().and_then(|l| l.weight.as_mut()) {
        *w = grow_rows(w, old, new_size, h, &mut init)?;
    }
    p.model.config.vocab_size = new_size;
    Ok(())
}

/// `t` (`[old, h]`) with `new - old` rows appended, each column drawn from a normal with that
/// column's mean and standard deviation over the old rows.
fn grow_rows(t: &Tensor, old: usize, new: usize, h: usize, init: &mut Init) -> Result<Tensor> {
    if t.shape() != [old, h] {
        return Err(Error::shape(
            "grow_vocab",
            format!("expected [{old}, {h}], found {:?}", t.shape()),
        ));
    }
    let (mut mean, mut sq) = (vec![0f64; h], vec![0f64; h]);
    for row in t.data().chunks_exact(h) {
        for (j, &x) in row.iter().enumerate() {
            mean[j] += x as f64;
            sq[j] += (x as f64) * (x as f64);
        }
    }
    let n = old.max(1) as f64;
    let std: Vec<f64> = (0..h)
        .map(|j| {
            let m = mean[j] / n;
            (sq[j] / n - m * m).max(0.0).sqrt()
        })
        .collect();
    let noise = init.normal(&[new - old, h], 1.0);
    let mut data = t.data().to_vec();
    data.reserve((new - old) * h);
    for row in noise.data().chunks_exact(h) {
        for j in 0..h {
            data.push((mean[j] / n + std[j] * row[j] as f64) as f32);
        }
    }
    Tensor::new(vec![new, h], data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_rows_follow_the_old_rows_distribution_and_old_rows_are_untouched() {
        // Column 0: mean 3, std sqrt(8/3); column 1: constant 2 (std 0).
        let old = Tensor::new(vec![3, 2], vec![1.0, 2.0, 3.0, 2.0, 5.0, 2.0]).unwrap();
        let mut init = Init::new(7, 1.0);
        let t = grow_rows(&old, 3, 4003, 2, &mut init).unwrap();
        assert_eq!(t.shape(), &[4003, 2]);
        assert_eq!(&t.data()[..6], old.data());
        let col0: Vec<f64> = (3..4003).map(|r| t.data()[r * 2] as f64).collect();
        let mean = col0.iter().sum::<f64>() / 4000.0;
        let var = col0.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 4000.0;
        assert!((mean - 3.0).abs() < 0.1, "{mean}");
        assert!((var - 8.0 / 3.0).abs() < 0.2, "{var}");
        assert!((3..4003).all(|r| t.data()[r * 2 + 1] == 2.0));
        assert!(grow_rows(&old, 4, 5, 2, &mut init).is_err());
    }
}
