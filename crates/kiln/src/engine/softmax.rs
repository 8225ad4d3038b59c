//! Softmax and log-softmax over the last dimension (e.g. the vocabulary).

use super::par::for_each_row;
use super::simd::{self, dispatch};

/// Softmax of every row of `x: [rows, cols]`, in place.
pub fn softmax_rows(x: &mut [f32], cols: usize) {
    for_each_row(x, cols, |_, row| softmax_inplace(row));
}

dispatch! {
    /// Softmax of one row, in place.
    pub fn softmax_inplace(row: &mut [f32]) {
        let max = simd::max(row);
        row.iter_mut().for_each(|v| *v = super::math::exp(*v - max));
        let inv = 1.0 / simd::sum(row);
        row.iter_mut().for_each(|v| *v *= inv);
    }
}

/// Log-softmax of every row of `x: [rows, cols]`, in place.
pub fn log_softmax_rows(x: &mut [f32], cols: usize) {
    for_each_row(x, cols, |_, row| {
        let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f32>().ln();
        row.iter_mut().for_each(|v| *v -= lse);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Softmax vs f64 reference.
    const SOFTMAX_TOL: f64 = 1e-6;

    #[test]
    fn softmax_and_log_softmax_match_reference() {
        let cols = 1001;
        let x: Vec<f32> = (0..cols * 20)
            .map(|i| ((i * 37) % 113) as f32 / 7.0 - 8.0)
            .collect();
        let mut p = x.clone();
        softmax_rows(&mut p, cols);
        let mut lp = x.clone();
        log_softmax_rows(&mut lp, cols);
        for r in 0..20 {
            let row = &x[r * cols..(r + 1) * cols];
            let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let z: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
            for c in 0..cols {
                let want = (row[c] as f64 - max).exp() / z;
                assert!((p[r * cols + c] as f64 - want).abs() < SOFTMAX_TOL);
                assert!(
                    (lp[r * cols + c] as f64 - want.ln()).abs() < 1e-4 * (1.0 + want.ln().abs())
                );
            }
        }
    }
}
