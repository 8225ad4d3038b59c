//! Layer normalization, one pass per row, parallel over rows.

use super::par::for_each_row;
use super::simd::{self, dispatch};
use super::tensor::Tensor;

/// `y = (x - mean) / sqrt(var + eps) · weight + bias` over the last dimension.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    /// Scale, `[hidden]`.
    pub weight: Tensor,
    /// Shift, `[hidden]`.
    pub bias: Tensor,
    /// Added to the variance.
    pub eps: f32,
}

impl LayerNorm {
    /// Normalizes every row of `x: [rows, hidden]` in place.
    pub fn forward_inplace(&self, x: &mut [f32]) {
        let w = self.weight.data();
        let b = self.bias.data();
        let eps = self.eps;
        for_each_row(x, w.len(), |_, row| normalize_row(row, w, b, eps));
    }

    /// `out = LN(x)` for `x, out: [rows, hidden]`.
    pub fn forward(&self, x: &[f32], out: &mut [f32]) {
        let w = self.weight.data();
        let h = w.len();
        out.copy_from_slice(x);
        let b = self.bias.data();
        let eps = self.eps;
        for_each_row(out, h, |_, row| normalize_row(row, w, b, eps));
    }
}

dispatch! {
    fn normalize_row(row: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
        let n = row.len() as f32;
        // Two passes (mean, then centered variance) keep f32 accuracy close to PyTorch's Welford.
        let mean = simd::sum(row) / n;
        let var = simd::sum_sq_dev(row, mean) / n;
        let inv = 1.0 / (var + eps).sqrt();
        let n = row.len();
        let (w, b) = (&w[..n], &b[..n]);
        for i in 0..n {
            row[i] = (row[i] - mean) * inv * w[i] + b[i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// f32 layer norm vs f64 reference, absolute.
    const LN_TOL: f32 = 2e-5;

    #[test]
    fn layer_norm_matches_naive_reference() {
        for &(rows, h) in &[(1usize, 7usize), (3, 96), (700, 33)] {
            let x: Vec<f32> = (0..rows * h)
                .map(|i| ((i * 131) % 97) as f32 / 13.0 - 3.0)
                .collect();
            let w: Vec<f32> = (0..h).map(|i| 1.0 + i as f32 / h as f32).collect();
            let b: Vec<f32> = (0..h).map(|i| i as f32 / 50.0 - 0.3).collect();
            let ln = LayerNorm {
                weight: Tensor::new(vec![h], w.clone()).unwrap(),
                bias: Tensor::new(vec![h], b.clone()).unwrap(),
                eps: 1e-12,
            };
            let mut out = vec![0.0; rows * h];
            ln.forward(&x, &mut out);
            for r in 0..rows {
                let row = &x[r * h..(r + 1) * h];
                let mean = row.iter().map(|&v| v as f64).sum::<f64>() / h as f64;
                let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / h as f64;
                for c in 0..h {
                    let want =
                        (row[c] as f64 - mean) / (var + 1e-12).sqrt() * w[c] as f64 + b[c] as f64;
                    assert!((out[r * h + c] as f64 - want).abs() < LN_TOL as f64);
                }
            }
        }
    }
}
