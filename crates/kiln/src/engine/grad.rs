//! Backward passes of the engine's operations, each the exact derivative of its forward twin
//! (module-level forward/backward pairs, as llm.c does), checked against finite differences.
//!
//! Parameter gradients are *accumulated* (`+=`), so micro-batches of one step add up. Every
//! reduction over rows splits its work by a fixed row partition and adds the partial sums in
//! order, so results never depend on thread scheduling.

use super::activation::Activation;
use super::matmul::{matmul_fast, MatMut, MatRef};
use super::tensor::Tensor;
use crate::error::{Error, Result};
use rayon::prelude::*;

/// Rows per partial sum in parameter-gradient reductions (fixed, so sums are reproducible).
const ROWS_PER_PART: usize = 64;

/// Column sums of `x: [rows, cols]` added into `out: [cols]`, deterministically.
pub fn add_col_sums(x: &[f32], cols: usize, out: &mut [f32]) {
    let parts: Vec<Vec<f32>> = x
        .par_chunks(ROWS_PER_PART * cols)
        .map(|chunk| {
            let mut s = vec![0.0f32; cols];
            for row in chunk.chunks(cols) {
                for (a, b) in s.iter_mut().zip(row) {
                    *a += b;
                }
            }
            s
        })
        .collect();
    for p in parts {
        for (o, v) in out.iter_mut().zip(p) {
            *o += v;
        }
    }
}

/// Backward of `y = x Wᵀ + b` (x: [rows, in], W: [out, in]).
///
/// dy: [rows, out] -> dx: [rows, in] (overwritten, if given); dW += dyᵀ x; db += Σ_rows dy.
pub fn linear_backward(
    x: &[f32],
    weight: &Tensor,
    dy: &[f32],
    rows: usize,
    dx: Option<&mut [f32]>,
    dw: Option<&mut [f32]>,
    db: Option<&mut [f32]>,
) -> Result<()> {
    let (o, i) = (weight.shape()[0], weight.cols());
    if x.len() != rows * i || dy.len() != rows * o {
        return Err(Error::shape(
            "linear_backward",
            format!("x/dy do not fit weight [{o}, {i}] with {rows} rows"),
        ));
    }
    if let Some(dx) = dx {
        // dx[rows, in] = dy[rows, out] · W[out, in]
        matmul_fast(
            MatMut::new(dx, rows, i)?,
            MatRef::new(dy, rows, o)?,
            MatRef::new(weight.data(), o, i)?,
            false,
        )?;
    }
    if let Some(dw) = dw {
        // dW[out, in] += dyᵀ[out, rows] · x[rows, in]   (dyᵀ is a strided view)
        matmul_fast(
            MatMut::new(dw, o, i)?,
            MatRef::new(dy, rows, o)?.t(),
            MatRef::new(x, rows, i)?,
            true,
        )?;
    }
    if let Some(db) = db {
        add_col_sums(dy, o, db);
    }
    Ok(())
}

/// Backward of layer norm over rows of `x: [rows, h]` (mean and variance recomputed).
///
/// dy -> dx (overwritten); dγ += Σ dy·x̂; dβ += Σ dy.
pub fn layer_norm_backward(
    x: &[f32],
    gamma: &[f32],
    eps: f32,
    dy: &[f32],
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    let h = gamma.len();
    let parts: Vec<(Vec<f32>, Vec<f32>)> = x
        .par_chunks(ROWS_PER_PART * h)
        .zip(dy.par_chunks(ROWS_PER_PART * h))
        .zip(dx.par_chunks_mut(ROWS_PER_PART * h))
        .map(|((xc, dyc), dxc)| {
            let mut dg = vec![0.0f32; h];
            let mut dbb = vec![0.0f32; h];
            for ((xr, dyr), dxr) in xc.chunks(h).zip(dyc.chunks(h)).zip(dxc.chunks_mut(h)) {
                let n = h as f32;
                let mean = xr.iter().sum::<f32>() / n;
                let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
                let rstd = 1.0 / (var + eps).sqrt();
                let (mut m1, mut m2) = (0.0f32, 0.0f32);
                for k in 0..h {
                    let xhat = (xr[k] - mean) * rstd;
                    let g = dyr[k] * gamma[k];
                    m1 += g;
                    m2 += g * xhat;
                    dg[k] += dyr[k] * xhat;
                    dbb[k] += dyr[k];
                }
                m1 /= n;
                m2 /= n;
                for k in 0..h {
                    let xhat = (xr[k] - mean) * rstd;
                    dxr[k] = rstd * (dyr[k] * gamma[k] - m1 - xhat * m2);
                }
            }
            (dg, dbb)
        })
        .collect();
    for (dg, dbb) in parts {
        dgamma.iter_mut().zip(dg).for_each(|(a, b)| *a += b);
        dbeta.iter_mut().zip(dbb).for_each(|(a, b)| *a += b);
    }
}

/// Derivative of an activation at its input `x`.
#[inline]
pub fn activation_grad(act: Activation, x: f32) -> f32 {
    match act {
        Activation::GeluErf => {
            let cdf = 0.5 * (1.0 + super::math::erf(x * std::f32::consts::FRAC_1_SQRT_2));
            let pdf = super::math::exp(-0.5 * x * x) * 0.398_942_3; // 1/sqrt(2π)
            cdf + x * pdf
        }
        Activation::GeluTanh => {
            const C: f32 = 0.797_884_6;
            let u = C * (x + 0.044715 * x * x * x);
            let t = 1.0 - 2.0 / (super::math::exp(2.0 * u) + 1.0);
            0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * C * (1.0 + 3.0 * 0.044715 * x * x)
        }
        Activation::Relu => {
            if x > 0.0 {
                1.0
            } else {
                0.0
            }
        }
    }
}

/// Backward of `y = act(x)`: `dx = dy · act'(x)`, in place on `dy`.
pub fn activation_backward(act: Activation, x: &[f32], dy: &mut [f32]) {
    dy.par_chunks_mut(4096)
        .zip(x.par_chunks(4096))
        .for_each(|(d, xs)| {
            d.iter_mut()
                .zip(xs)
                .for_each(|(g, &v)| *g *= activation_grad(act, v));
        });
}

/// Mean softmax cross-entropy over rows whose target is not `ignore`, and its gradient.
///
/// logits: [rows, vocab] -> (loss, number of counted rows); `dlogits` gets
/// `(softmax - onehot) / count` (zero on ignored rows).
pub fn cross_entropy(
    logits: &[f32],
    vocab: usize,
    targets: &[i64],
    ignore: i64,
    dlogits: Option<&mut [f32]>,
) -> Result<(f32, usize)> {
    let count = check_targets(logits.len(), vocab, targets, ignore)?;
    let sum = match dlogits {
        Some(d) => {
            d.copy_from_slice(logits);
            ce_rows_in_place(d, vocab, targets, ignore, 1.0 / count.max(1) as f32)
        }
        None => logits
            .par_chunks(vocab)
            .zip(targets.par_iter())
            .map(|(lr, &t)| {
                if t == ignore {
                    return 0.0;
                }
                let max = lr.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let z: f32 = lr.iter().map(|v| (v - max).exp()).sum();
                (z.ln() + max - lr[t as usize]) as f64
            })
            .collect::<Vec<f64>>()
            .iter()
            .sum(),
    };
    Ok(((sum / count.max(1) as f64) as f32, count))
}

/// Softmax cross-entropy with its gradient written over the logits: each counted row becomes
/// `scale · (softmax − onehot)`, an ignored row zeros. A language model's logits are the largest
/// buffer of its training step (rows × vocabulary), and this way they need no twin.
/// Returns the summed (not averaged) loss and the number of counted rows.
pub fn cross_entropy_in_place(
    logits: &mut [f32],
    vocab: usize,
    targets: &[i64],
    ignore: i64,
    scale: f32,
) -> Result<(f64, usize)> {
    let count = check_targets(logits.len(), vocab, targets, ignore)?;
    Ok((
        ce_rows_in_place(logits, vocab, targets, ignore, scale),
        count,
    ))
}

/// Checks shapes and target ids; returns the number of counted rows.
fn check_targets(len: usize, vocab: usize, targets: &[i64], ignore: i64) -> Result<usize> {
    if len != targets.len() * vocab {
        return Err(Error::shape(
            "cross_entropy",
            "one target per row of logits",
        ));
    }
    if let Some(&t) = targets
        .iter()
        .find(|&&t| t != ignore && (t < 0 || t as usize >= vocab))
    {
        return Err(Error::Input(format!(
            "target id {t} is outside the vocabulary of {vocab}"
        )));
    }
    Ok(targets.iter().filter(|&&t| t != ignore).count())
}

super::simd::dispatch! {
    /// `row[i] = e^(row[i] - max)` in place and their sum into `z` (8 lanes): the softmax's
    /// exponentials over a vocabulary-sized row, with the fast vectorized `exp`.
    fn exp_shifted(row: &mut [f32], max: f32, z: &mut f32) {
        let mut acc = [0.0f32; 8];
        let mut chunks = row.chunks_exact_mut(8);
        for c in &mut chunks {
            for i in 0..8 {
                c[i] = super::math::exp(c[i] - max);
                acc[i] += c[i];
            }
        }
        let mut rest = 0.0f32;
        for v in chunks.into_remainder() {
            *v = super::math::exp(*v - max);
            rest += *v;
        }
        *z = acc.iter().sum::<f32>() + rest;
    }
}

/// The in-place rows: per-row losses in parallel, summed in row order (reproducible).
fn ce_rows_in_place(x: &mut [f32], vocab: usize, targets: &[i64], ignore: i64, scale: f32) -> f64 {
    let losses: Vec<f64> = x
        .par_chunks_mut(vocab)
        .zip(targets.par_iter())
        .map(|(row, &t)| {
            if t == ignore {
                row.fill(0.0);
                return 0.0;
            }
            let max = super::simd::max(row);
            let target_logit = row[t as usize];
            let mut z = 0.0f32;
            exp_shifted(row, max, &mut z);
            let inv = scale / z;
            row.iter_mut().for_each(|v| *v *= inv);
            row[t as usize] -= scale;
            (z.ln() + max - target_logit) as f64
        })
        .collect();
    losses.iter().sum()
}

/// Backward of the embedding gather: `dtable[ids[t]] += dy[t]` for every token (scatter-add),
/// parallel over column blocks so that each table row is summed in token order.
pub fn embedding_backward(ids: &[u32], dy: &[f32], h: usize, dtable: &mut [f32]) {
    const COLS: usize = 64;
    let rows = dtable.len() / h.max(1);
    // Split the table by column ranges: tasks never share an element.
    let mut blocks: Vec<(usize, Vec<f32>)> = (0..h)
        .step_by(COLS)
        .map(|c0| (c0, vec![0.0f32; rows * COLS.min(h - c0)]))
        .collect();
    blocks.par_iter_mut().for_each(|(c0, buf)| {
        let w = COLS.min(h - *c0);
        for (t, &id) in ids.iter().enumerate() {
            let src = &dy[t * h + *c0..t * h + *c0 + w];
            let dst = &mut buf[id as usize * w..id as usize * w + w];
            dst.iter_mut().zip(src).for_each(|(a, b)| *a += b);
        }
    });
    for (c0, buf) in blocks {
        let w = COLS.min(h - c0);
        for r in 0..rows {
            let dst = &mut dtable[r * h + c0..r * h + c0 + w];
            dst.iter_mut()
                .zip(&buf[r * w..r * w + w])
                .for_each(|(a, b)| *a += b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::LayerNorm;
    use rand::{Rng, SeedableRng};

    /// Central finite differences in f32 (step 1e-2 on O(1) values) agree with analytic
    /// gradients to this relative error (of the gradient's max magnitude).
    const FD_RTOL: f32 = 2e-2;
    const STEP: f32 = 1e-2;

    fn rand_vec(rng: &mut rand::rngs::StdRng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect()
    }

    /// Checks `grad` against finite differences of the scalar `f` at `x`.
    fn check(name: &str, x: &mut [f32], grad: &[f32], f: &mut dyn FnMut(&[f32]) -> f32) {
        let scale = grad.iter().fold(1e-3f32, |m, g| m.max(g.abs()));
        for i in 0..x.len() {
            let orig = x[i];
            x[i] = orig + STEP;
            let up = f(x);
            x[i] = orig - STEP;
            let down = f(x);
            x[i] = orig;
            let fd = (up - down) / (2.0 * STEP);
            assert!(
                (fd - grad[i]).abs() <= FD_RTOL * scale,
                "{name}[{i}]: analytic {} vs numeric {fd}",
                grad[i]
            );
        }
    }

    /// A fixed random projection turns outputs into a scalar loss, L = Σ y ⊙ r.
    fn weighted_sum(y: &[f32], r: &[f32]) -> f32 {
        y.iter().zip(r).map(|(a, b)| a * b).sum()
    }

    #[test]
    fn linear_gradients_match_finite_differences() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let (rows, i, o) = (5, 7, 4);
        let mut x = rand_vec(&mut rng, rows * i);
        let mut w = rand_vec(&mut rng, o * i);
        let mut b = rand_vec(&mut rng, o);
        let r = rand_vec(&mut rng, rows * o);
        let fwd = |x: &[f32], w: &[f32], b: &[f32]| {
            let l = crate::engine::Linear::new(
                Tensor::new(vec![o, i], w.to_vec()).unwrap(),
                Some(Tensor::new(vec![o], b.to_vec()).unwrap()),
            );
            weighted_sum(&l.forward(x, rows).unwrap(), &r)
        };
        let (mut dx, mut dw, mut db) = (vec![0.0; rows * i], vec![0.0; o * i], vec![0.0; o]);
        let wt = Tensor::new(vec![o, i], w.clone()).unwrap();
        linear_backward(
            &x,
            &wt,
            &r,
            rows,
            Some(&mut dx),
            Some(&mut dw),
            Some(&mut db),
        )
        .unwrap();
        let (w0, b0, x0) = (w.clone(), b.clone(), x.clone());
        check("dx", &mut x, &dx, &mut |x| fwd(x, &w0, &b0));
        check("dW", &mut w, &dw, &mut |w| fwd(&x0, w, &b0));
        check("db", &mut b, &db, &mut |b| fwd(&x0, &w0, b));
    }

    #[test]
    fn layer_norm_gradients_match_finite_differences() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let (rows, h) = (3, 9);
        let mut x = rand_vec(&mut rng, rows * h);
        let mut g: Vec<f32> = rand_vec(&mut rng, h)
            .iter()
            .map(|v| 1.0 + 0.5 * v)
            .collect();
        let mut b = rand_vec(&mut rng, h);
        let r = rand_vec(&mut rng, rows * h);
        let fwd = |x: &[f32], g: &[f32], b: &[f32]| {
            let ln = LayerNorm {
                weight: Tensor::new(vec![h], g.to_vec()).unwrap(),
                bias: Tensor::new(vec![h], b.to_vec()).unwrap(),
                eps: 1e-5,
            };
            let mut y = vec![0.0; x.len()];
            ln.forward(x, &mut y);
            weighted_sum(&y, &r)
        };
        let (mut dx, mut dg, mut dbb) = (vec![0.0; rows * h], vec![0.0; h], vec![0.0; h]);
        layer_norm_backward(&x, &g, 1e-5, &r, &mut dx, &mut dg, &mut dbb);
        let (x0, g0, b0) = (x.clone(), g.clone(), b.clone());
        check("dx", &mut x, &dx, &mut |x| fwd(x, &g0, &b0));
        check("dgamma", &mut g, &dg, &mut |g| fwd(&x0, g, &b0));
        check("dbeta", &mut b, &dbb, &mut |b| fwd(&x0, &g0, b));
    }

    #[test]
    fn activation_gradients_match_finite_differences() {
        for act in [Activation::GeluErf, Activation::GeluTanh] {
            let mut x: Vec<f32> = (-40..40).map(|i| i as f32 / 10.0 + 0.013).collect();
            let mut g = vec![1.0; x.len()];
            activation_backward(act, &x, &mut g);
            check(&format!("{act:?}"), &mut x, &g, &mut |x| {
                x.iter().map(|&v| act.apply(v)).sum()
            });
        }
    }

    #[test]
    fn cross_entropy_gradient_and_ignore_index() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let (rows, v) = (4, 6);
        let mut logits: Vec<f32> = rand_vec(&mut rng, rows * v)
            .iter()
            .map(|x| 3.0 * x)
            .collect();
        let targets = [2i64, -100, 5, 0];
        let mut d = vec![0.0; rows * v];
        let (loss, n) = cross_entropy(&logits, v, &targets, -100, Some(&mut d)).unwrap();
        assert_eq!(n, 3);
        assert!(
            d[v..2 * v].iter().all(|&g| g == 0.0),
            "ignored row has no gradient"
        );
        // Reference loss in f64.
        let mut want = 0.0f64;
        for (r, &t) in targets.iter().enumerate() {
            if t == -100 {
                continue;
            }
            let row = &logits[r * v..(r + 1) * v];
            let z: f64 = row.iter().map(|&x| (x as f64).exp()).sum();
            want += z.ln() - row[t as usize] as f64;
        }
        assert!((loss as f64 - want / 3.0).abs() < 1e-5);
        check("dlogits", &mut logits, &d, &mut |l| {
            cross_entropy(l, v, &targets, -100, None).unwrap().0
        });
        let err = cross_entropy(&logits, v, &[9, 0, 0, 0], -100, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("target id 9"), "{err}");
        // In place, with a scale: the same rows times scale·count, the summed loss.
        let mut x = logits.clone();
        let (sum, n2) = cross_entropy_in_place(&mut x, v, &targets, -100, 0.5).unwrap();
        assert_eq!(n2, 3);
        assert!((sum - want).abs() < 1e-4, "{sum} vs {want}");
        for (a, b) in x.iter().zip(&d) {
            assert!((a - b * 1.5).abs() < 1e-6, "{a} vs {}", b * 1.5);
        }
    }

    #[test]
    fn embedding_scatter_add_matches_naive() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let (vocab, h) = (11, 150);
        let ids: Vec<u32> = (0..40).map(|_| rng.gen_range(0..vocab as u32)).collect();
        let dy = rand_vec(&mut rng, ids.len() * h);
        let mut got = vec![0.5f32; vocab * h];
        embedding_backward(&ids, &dy, h, &mut got);
        let mut want = vec![0.5f32; vocab * h];
        for (t, &id) in ids.iter().enumerate() {
            for c in 0..h {
                want[id as usize * h + c] += dy[t * h + c];
            }
        }
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5);
        }
    }

    #[test]
    fn column_sums_are_deterministic_across_thread_counts() {
        let x: Vec<f32> = (0..1000 * 33)
            .map(|i| ((i * 7919) % 1013) as f32 / 101.0 - 5.0)
            .collect();
        let mut a = vec![0.0; 33];
        add_col_sums(&x, 33, &mut a);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let mut b = vec![0.0; 33];
        pool.install(|| add_col_sums(&x, 33, &mut b));
        assert_eq!(
            a, b,
            "bit-identical with 1 thread and with the default pool"
        );
    }
}
