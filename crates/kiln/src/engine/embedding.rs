//! Embedding gather: one row of each table per token, summed.

use super::linear::Linear;
use super::par::for_each_row;
use super::tensor::Tensor;
use crate::error::{Error, Result};

/// `out[t] = word[ids[t]] + position[pos[t]] (+ token_type[types[t]])` for every token.
///
/// out: [tokens, hidden]
pub fn gather_sum(
    word: &Linear,
    position: Option<&Tensor>,
    token_type: Option<&Tensor>,
    ids: &[u32],
    positions: &[u32],
    types: &[u32],
    out: &mut [f32],
) -> Result<()> {
    let h = word.in_features();
    check_ids("token id", ids, word.out_features())?;
    if let Some(p) = position {
        check_ids("position", positions, p.rows())?;
    }
    if let Some(t) = token_type {
        check_ids("token type id", types, t.rows())?;
    }
    if out.len() != ids.len() * h {
        return Err(Error::shape(
            "embedding",
            "output buffer does not match tokens x hidden",
        ));
    }
    for_each_row(out, h, |t, row| {
        let id = ids[t] as usize;
        match &word.int8 {
            // A quantized table: the row dequantized.
            Some(q) => {
                let s = q.scale[id];
                for (o, &v) in row.iter_mut().zip(&q.data[id * h..(id + 1) * h]) {
                    *o = v as f32 * s;
                }
            }
            None => row.copy_from_slice(word.weight.row(id)),
        }
        if let Some(p) = position {
            row.iter_mut()
                .zip(p.row(positions[t] as usize))
                .for_each(|(a, b)| *a += b);
        }
        if let Some(tt) = token_type {
            let ty = types.get(t).copied().unwrap_or(0) as usize;
            row.iter_mut().zip(tt.row(ty)).for_each(|(a, b)| *a += b);
        }
    });
    Ok(())
}

fn check_ids(what: &str, ids: &[u32], n: usize) -> Result<()> {
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= n) {
        return Err(Error::Input(format!(
            "{what} {bad} is out of range: the model's table has {n} rows"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_sums_the_right_rows() {
        let word = Linear::new(
            Tensor::new(vec![3, 2], vec![1., 2., 3., 4., 5., 6.]).unwrap(),
            None,
        );
        let pos = Tensor::new(vec![2, 2], vec![10., 20., 30., 40.]).unwrap();
        let ty = Tensor::new(vec![2, 2], vec![100., 200., 300., 400.]).unwrap();
        let mut out = vec![0.0; 4];
        gather_sum(
            &word,
            Some(&pos),
            Some(&ty),
            &[2, 0],
            &[0, 1],
            &[1, 0],
            &mut out,
        )
        .unwrap();
        assert_eq!(
            out,
            vec![
                5. + 10. + 300.,
                6. + 20. + 400.,
                1. + 30. + 100.,
                2. + 40. + 200.
            ]
        );
        let err = gather_sum(&word, None, None, &[3], &[0], &[], &mut out[..2]).unwrap_err();
        assert!(
            err.to_string().contains("token id 3 is out of range"),
            "{err}"
        );
        // A quantized table gives its rows dequantized.
        let mut q = word.clone();
        q.quantize();
        gather_sum(&q, None, None, &[2], &[0], &[], &mut out[..2]).unwrap();
        let s = 6.0 / 127.0;
        assert_eq!(out[..2], [(5.0f32 / s).round() * s, 127.0 * s]);
    }
}
