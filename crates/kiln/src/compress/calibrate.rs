//! Calibration for int8 quantization: the inputs the f32 model's linear layers see on sample
//! texts, and the choice per layer between plain int8 and SmoothQuant (Xiao et al. 2023):
//! activation outliers sit in a few input channels, which a per-row activation scale must
//! cover, wasting the 8 bits of every other channel; dividing those channels by
//! `s_j = max|X_j|^α / max|W_j|^(1−α)` and multiplying the weight's columns by `s_j` leaves the
//! product unchanged and spreads the difficulty between the two quantizations.

use crate::checkpoint::Pretrained;
use crate::engine::int8::Int8Weight;
use crate::engine::{Linear, LinearOut, Tensor};
use crate::error::Result;
use crate::model::Batch;

/// Per block, the inputs of its four linear layers on the calibration texts (rows
/// concatenated, at most `max_rows` each).
pub fn layer_inputs(
    p: &Pretrained,
    texts: &[String],
    max_rows: usize,
) -> Result<Vec<[Vec<f32>; 4]>> {
    let mut tok = p.tokenizer()?.clone();
    tok.set_truncation(Some(p.config().max_positions), Default::default())?;
    let nb = p.model.blocks.len();
    let mut out: Vec<[Vec<f32>; 4]> = (0..nb).map(|_| Default::default()).collect();
    let mut rows = 0;
    for chunk in texts.chunks(16) {
        if rows >= max_rows {
            break;
        }
        let enc: Vec<_> = chunk
            .iter()
            .map(|t| tok.encode(t, None))
            .collect::<Result<_>>()?;
        let seqs: Vec<(&[u32], Option<&[u32]>)> = enc
            .iter()
            .filter(|e| !e.ids.is_empty())
            .map(|e| (&e.ids[..], Some(&e.type_ids[..])))
            .collect();
        if seqs.is_empty() {
            continue;
        }
        let batch = Batch::packed(&seqs)?;
        let (_, acts) =
            crate::train::backprop::forward(&p.model, &batch, p.model.default_mask(), None)?;
        let take = (max_rows - rows).min(batch.tokens());
        // A block shared by several layers (ALBERT) sees the inputs of each.
        for l in 0..acts.layers() {
            let inputs = acts.linear_inputs(l, p.config().activation);
            let layer = &mut out[p.config().block_of(l)];
            for (dst, src) in layer.iter_mut().zip(inputs) {
                let width = src.len() / batch.tokens();
                dst.extend_from_slice(&src[..take * width]);
            }
        }
        rows += take;
    }
    Ok(out)
}

/// ‖a − b‖ / ‖b‖.
pub fn relative_error(a: &[f32], b: &[f32]) -> f32 {
    let (mut e, mut n) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        e += ((x - y) as f64).powi(2);
        n += (y as f64).powi(2);
    }
    (e / n.max(1e-30)).sqrt() as f32
}

/// How a layer came out of calibration.
#[derive(Clone, Debug)]
pub struct Calibrated {
    /// The int8 weight chosen (plain or smoothed).
    pub weight: Int8Weight,
    /// Relative output error of plain int8 on the calibration inputs.
    pub plain_error: f32,
    /// The same with SmoothQuant smoothing.
    pub smoothed_error: f32,
    /// Whether smoothing was kept (it lowered the error).
    pub smoothed: bool,
}

/// Quantizes `w` plain and smoothed (strength `alpha`), measures both on the inputs `x`
/// (`[rows, in]`) against f32, and keeps the better.
pub fn calibrate(w: &Tensor, x: &[f32], alpha: f32) -> Result<Calibrated> {
    let k = w.cols();
    let rows = x.len() / k.max(1);
    let mut reference = vec![0.0; rows * w.rows()];
    Linear::new(w.clone(), None).forward_into(x, rows, &mut reference, LinearOut::Write)?;
    let error = |q: &Int8Weight| {
        let mut y = vec![0.0; rows * w.rows()];
        q.forward_into(x, rows, None, &mut y, LinearOut::Write);
        relative_error(&y, &reference)
    };
    let plain = Int8Weight::quantize(w);
    let plain_error = error(&plain);
    // Per input channel: the largest activation and the largest weight magnitude.
    let mut xmax = vec![0.0f32; k];
    for row in x.chunks(k) {
        for (m, &v) in xmax.iter_mut().zip(row) {
            *m = m.max(v.abs());
        }
    }
    let mut wmax = vec![0.0f32; k];
    for row in w.data().chunks(k) {
        for (m, &v) in wmax.iter_mut().zip(row) {
            *m = m.max(v.abs());
        }
    }
    let smooth: Vec<f32> = xmax
        .iter()
        .zip(&wmax)
        .map(|(&a, &b)| {
            let s = a.powf(alpha) / b.powf(1.0 - alpha);
            // The activations are multiplied by 1/s (a dead channel keeps factor 1).
            if s.is_finite() && s > 0.0 {
                1.0 / s
            } else {
                1.0
            }
        })
        .collect();
    let smoothed = Int8Weight::quantize_smoothed(w, &smooth);
    let smoothed_error = error(&smoothed);
    let keep_smooth = smoothed_error < plain_error;
    Ok(Calibrated {
        weight: if keep_smooth { smoothed } else { plain },
        plain_error,
        smoothed_error,
        smoothed: keep_smooth,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn smoothing_is_chosen_for_outlier_channels_and_keeps_the_product() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let (rows, k, n) = (64, 48, 32);
        // Activations with two outlier channels, as LayerNorm outputs of transformers have.
        let mut x: Vec<f32> = (0..rows * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
        for r in 0..rows {
            x[r * k + 5] *= 60.0;
            x[r * k + 17] *= 40.0;
        }
        let w = Tensor::new(
            vec![n, k],
            (0..n * k).map(|_| rng.gen_range(-0.1..0.1)).collect(),
        )
        .unwrap();
        let c = calibrate(&w, &x, 0.5).unwrap();
        assert!(
            c.smoothed,
            "plain {} smoothed {}",
            c.plain_error, c.smoothed_error
        );
        assert!(
            c.smoothed_error < 0.5 * c.plain_error,
            "{} vs {}",
            c.smoothed_error,
            c.plain_error
        );
        // The smoothed weight stands for the same product: dequantized, it is w.
        let d = c.weight.dequantize();
        assert!(relative_error(d.data(), w.data()) < 0.02);
        // Without outliers smoothing buys little; whichever is kept is the better one.
        let plain_x: Vec<f32> = (0..rows * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let c = calibrate(&w, &plain_x, 0.5).unwrap();
        assert_eq!(c.smoothed, c.smoothed_error < c.plain_error);
    }
}
