//! LoRA (Hu et al. 2021): a low-rank bypass beside a frozen linear layer,
//! `y = W x + b + (alpha / r) · B A dropout(x)`, computed as PEFT's `lora.Linear` does.
//!
//! One [`Lora`] adapts a band of the layer's output rows, so Kiln's fused query/key/value matrix
//! carries separate `query` and `value` adapters (BERT) or one over all of `c_attn` (GPT-2).

use crate::engine::dropout::Dropout;
use crate::engine::matmul::{matmul, MatMut, MatRef, Par};
use crate::engine::Tensor;
use crate::error::{Error, Result};
use rand::Rng;

/// A LoRA bypass over output rows `offset..offset + len` of a linear layer.
#[derive(Clone, Debug, PartialEq)]
pub struct Lora {
    /// `lora_A.weight`: `[r, in]`.
    pub a: Tensor,
    /// `lora_B.weight`: `[len, r]`.
    pub b: Tensor,
    /// `lora_alpha / r`.
    pub scale: f32,
    /// Dropout on the bypass input in training (`lora_dropout`).
    pub dropout: f32,
    /// First output row of the layer this bypass adds to.
    pub offset: usize,
    /// Whether `scale · B A` was folded into the layer's weight; the bypass is then skipped.
    pub merged: bool,
}

impl Lora {
    /// A fresh bypass as PEFT initializes it: A Kaiming-uniform with `a = √5` (bound
    /// `1/√in`), B zeros — so it adds exactly zero until trained.
    pub fn new(
        inp: usize,
        len: usize,
        offset: usize,
        r: usize,
        alpha: f32,
        dropout: f32,
        rng: &mut impl Rng,
    ) -> Self {
        let bound = 1.0 / (inp as f32).sqrt();
        let a: Vec<f32> = (0..r * inp).map(|_| rng.gen_range(-bound..bound)).collect();
        Lora {
            a: Tensor::new(vec![r, inp], a).unwrap_or_else(|_| Tensor::zeros(&[r, inp])),
            b: Tensor::zeros(&[len, r]),
            scale: alpha / r as f32,
            dropout,
            offset,
            merged: false,
        }
    }

    /// The rank r.
    pub fn rank(&self) -> usize {
        self.a.shape()[0]
    }

    /// Input width.
    pub fn in_features(&self) -> usize {
        self.a.shape()[1]
    }

    /// Output rows adapted.
    pub fn len(&self) -> usize {
        self.b.shape()[0]
    }

    /// Whether the bypass adapts no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The dense update `scale · B A`: `[len, in]`.
    pub fn delta(&self) -> Result<Vec<f32>> {
        let (r, i, n) = (self.rank(), self.in_features(), self.len());
        let mut d = vec![0.0; n * i];
        matmul(
            MatMut::new(&mut d, n, i)?,
            MatRef::new(self.b.data(), n, r)?,
            MatRef::new(self.a.data(), r, i)?,
            self.scale,
            false,
            Par::All,
        )?;
        Ok(d)
    }

    fn check(&self, x: &[f32], rows: usize, out_cols: usize, out_len: usize) -> Result<()> {
        let (r, i) = (self.rank(), self.in_features());
        if self.b.shape() != [self.len(), r]
            || x.len() != rows * i
            || out_len != rows * out_cols
            || self.offset + self.len() > out_cols
        {
            return Err(Error::shape(
                "Lora",
                format!(
                    "A {:?}, B {:?} at rows {}.. of a {out_cols}-wide output with {rows} rows of {} inputs",
                    self.a.shape(),
                    self.b.shape(),
                    self.offset,
                    x.len() / rows.max(1)
                ),
            ));
        }
        Ok(())
    }

    /// `u = dropout(x) Aᵀ`: `[rows, r]`, and the dropped-out input when dropout is on.
    fn down(&self, x: &[f32], rows: usize, drop: Option<Dropout>) -> Result<(Vec<f32>, Vec<f32>)> {
        let (r, i) = (self.rank(), self.in_features());
        let xd = match drop {
            Some(d) => {
                let mut v = x.to_vec();
                d.apply(&mut v);
                v
            }
            None => Vec::new(),
        };
        let xin = if drop.is_some() { &xd[..] } else { x };
        let mut u = vec![0.0; rows * r];
        matmul(
            MatMut::new(&mut u, rows, r)?,
            MatRef::new(xin, rows, i)?,
            MatRef::new(self.a.data(), r, i)?.t(),
            1.0,
            false,
            Par::All,
        )?;
        Ok((u, xd))
    }

    /// Adds `scale · B A dropout(x)` into columns `offset..offset + len` of `out: [rows,
    /// out_cols]`. Nothing is added once merged.
    pub fn forward_add(
        &self,
        x: &[f32],
        rows: usize,
        out: &mut [f32],
        out_cols: usize,
        drop: Option<Dropout>,
    ) -> Result<()> {
        if self.merged || rows == 0 {
            return Ok(());
        }
        self.check(x, rows, out_cols, out.len())?;
        let (u, _) = self.down(x, rows, drop)?;
        let (r, n) = (self.rank(), self.len());
        // The band of output columns is a strided view: no temporary for B u.
        matmul(
            MatMut::strided(&mut out[self.offset..], rows, n, out_cols, 1)?,
            MatRef::new(&u, rows, r)?,
            MatRef::new(self.b.data(), n, r)?.t(),
            self.scale,
            true,
            Par::All,
        )
    }

    /// Backward of [`Lora::forward_add`] (recomputing `u` and the dropout mask): adds the input
    /// gradient into `dx: [rows, in]` and the parameter gradients into `ga`, `gb` (skipped when
    /// empty: a frozen bypass).
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        x: &[f32],
        rows: usize,
        dy: &[f32],
        dy_cols: usize,
        dx: Option<&mut [f32]>,
        ga: &mut [f32],
        gb: &mut [f32],
        drop: Option<Dropout>,
    ) -> Result<()> {
        if rows == 0 {
            return Ok(());
        }
        self.check(x, rows, dy_cols, dy.len())?;
        let (r, i, n) = (self.rank(), self.in_features(), self.len());
        let (u, xd) = self.down(x, rows, drop)?;
        let xin = if drop.is_some() { &xd[..] } else { x };
        let dy_band = MatRef::strided(&dy[self.offset..], rows, n, dy_cols, 1)?;
        if !gb.is_empty() {
            // dB[len, r] += scale · dy_bandᵀ u
            matmul(
                MatMut::new(gb, n, r)?,
                dy_band.t(),
                MatRef::new(&u, rows, r)?,
                self.scale,
                true,
                Par::All,
            )?;
        }
        // du[rows, r] = scale · dy_band B
        let mut du = vec![0.0; rows * r];
        matmul(
            MatMut::new(&mut du, rows, r)?,
            dy_band,
            MatRef::new(self.b.data(), n, r)?,
            self.scale,
            false,
            Par::All,
        )?;
        if !ga.is_empty() {
            // dA[r, in] += duᵀ dropout(x)
            matmul(
                MatMut::new(ga, r, i)?,
                MatRef::new(&du, rows, r)?.t(),
                MatRef::new(xin, rows, i)?,
                1.0,
                true,
                Par::All,
            )?;
        }
        if let Some(dx) = dx {
            match drop {
                None => matmul(
                    MatMut::new(dx, rows, i)?,
                    MatRef::new(&du, rows, r)?,
                    MatRef::new(self.a.data(), r, i)?,
                    1.0,
                    true,
                    Par::All,
                )?,
                Some(d) => {
                    let mut dxd = vec![0.0; rows * i];
                    matmul(
                        MatMut::new(&mut dxd, rows, i)?,
                        MatRef::new(&du, rows, r)?,
                        MatRef::new(self.a.data(), r, i)?,
                        1.0,
                        false,
                        Par::All,
                    )?;
                    d.apply(&mut dxd);
                    crate::engine::activation::add_inplace(dx, &dxd);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn random(rng: &mut rand::rngs::StdRng, shape: &[usize]) -> Tensor {
        let n = shape.iter().product();
        Tensor::new(
            shape.to_vec(),
            (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect(),
        )
        .unwrap()
    }

    fn lora(rng: &mut rand::rngs::StdRng) -> Lora {
        let mut l = Lora::new(5, 3, 2, 2, 4.0, 0.0, rng);
        l.b = random(rng, &[3, 2]);
        l
    }

    /// The bypass computed naively: out[r, offset + j] += scale Σ_k B[j,k] Σ_m A[k,m] x[r,m].
    fn naive(l: &Lora, x: &[f32], rows: usize, cols: usize) -> Vec<f64> {
        let (r, i) = (l.rank(), l.in_features());
        let mut out = vec![0.0f64; rows * cols];
        for row in 0..rows {
            for j in 0..l.len() {
                let mut s = 0.0f64;
                for k in 0..r {
                    let mut ax = 0.0f64;
                    for m in 0..i {
                        ax += l.a.data()[k * i + m] as f64 * x[row * i + m] as f64;
                    }
                    s += l.b.data()[j * r + k] as f64 * ax;
                }
                out[row * cols + l.offset + j] = l.scale as f64 * s;
            }
        }
        out
    }

    #[test]
    fn fresh_bypass_adds_exactly_zero() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let l = Lora::new(5, 3, 2, 2, 16.0, 0.0, &mut rng);
        let x = random(&mut rng, &[4, 5]);
        let before = random(&mut rng, &[4, 7]);
        let mut out = before.clone();
        l.forward_add(x.data(), 4, out.data_mut(), 7, None).unwrap();
        assert_eq!(out, before);
        assert!(l.a.data().iter().all(|v| v.abs() <= 1.0 / 5f32.sqrt()));
    }

    #[test]
    fn forward_matches_naive_and_the_dense_delta() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let l = lora(&mut rng);
        let x = random(&mut rng, &[4, 5]);
        let mut out = vec![0.0; 4 * 7];
        l.forward_add(x.data(), 4, &mut out, 7, None).unwrap();
        let want = naive(&l, x.data(), 4, 7);
        for (g, w) in out.iter().zip(&want) {
            assert!((*g as f64 - w).abs() < 1e-5, "{g} vs {w}");
        }
        // scale · B A applied to x gives the same band.
        let d = l.delta().unwrap();
        for row in 0..4 {
            for j in 0..3 {
                let v: f32 = (0..5).map(|m| d[j * 5 + m] * x.data()[row * 5 + m]).sum();
                assert!((v - out[row * 7 + 2 + j]).abs() < 1e-5);
            }
        }
    }

    /// Gradients of L = Σ c ⊙ out against central finite differences (f64 on the naive form).
    #[test]
    fn gradients_match_finite_differences() {
        for p in [0.0f32, 0.3] {
            let mut rng = rand::rngs::StdRng::seed_from_u64(3);
            let mut l = lora(&mut rng);
            l.dropout = p;
            let drop = (p > 0.0).then_some(Dropout { p, seed: 99 });
            let (rows, cols) = (4, 7);
            let x = random(&mut rng, &[rows, 5]);
            let c = random(&mut rng, &[rows, cols]);
            let loss = |l: &Lora, x: &[f32]| -> f64 {
                let mut xd = x.to_vec();
                if let Some(d) = drop {
                    d.apply(&mut xd);
                }
                naive(l, &xd, rows, cols)
                    .iter()
                    .zip(c.data())
                    .map(|(o, c)| o * *c as f64)
                    .sum()
            };
            let mut dx = vec![0.0; rows * 5];
            let mut ga = vec![0.0; l.a.numel()];
            let mut gb = vec![0.0; l.b.numel()];
            l.backward(
                x.data(),
                rows,
                c.data(),
                cols,
                Some(&mut dx),
                &mut ga,
                &mut gb,
                drop,
            )
            .unwrap();
            let eps = 1e-2f32;
            let fd = |f: &dyn Fn(f32) -> f64| (f(eps) - f(-eps)) / (2.0 * eps as f64);
            for k in 0..x.numel() {
                let g = fd(&|e| {
                    let mut xx = x.data().to_vec();
                    xx[k] += e;
                    loss(&l, &xx)
                });
                assert!((g - dx[k] as f64).abs() < 1e-3, "dx[{k}] {g} vs {}", dx[k]);
            }
            for (k, &want) in ga.iter().enumerate() {
                let g = fd(&|e| {
                    let mut ll = l.clone();
                    ll.a.data_mut()[k] += e;
                    loss(&ll, x.data())
                });
                assert!((g - want as f64).abs() < 1e-3, "dA[{k}] {g} vs {want}");
            }
            for (k, &want) in gb.iter().enumerate() {
                let g = fd(&|e| {
                    let mut ll = l.clone();
                    ll.b.data_mut()[k] += e;
                    loss(&ll, x.data())
                });
                assert!((g - want as f64).abs() < 1e-3, "dB[{k}] {g} vs {want}");
            }
        }
    }
}
