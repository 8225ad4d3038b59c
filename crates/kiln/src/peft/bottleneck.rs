//! Bottleneck adapters (Houlsby et al. 2019): `x + up(act(down(x)))`, a small residual module
//! inserted after a sublayer's output projection, before the residual sum and layer norm.
//! `up` starts at zero, so a fresh adapter is the identity and the model equals its base.

use crate::engine::activation::{add_inplace, bias_act_inplace};
use crate::engine::grad::{activation_backward, linear_backward};
use crate::engine::linear::linear_forward;
use crate::engine::{Activation, Linear, LinearOut, Tensor};
use crate::error::Result;
use rand::Rng;

/// One adapter module: `down: [size, hidden]`, `up: [hidden, size]`, both with biases.
#[derive(Clone, Debug)]
pub struct Bottleneck {
    /// Down-projection to the bottleneck size.
    pub down: Linear,
    /// Up-projection back to the hidden size (zeros when fresh).
    pub up: Linear,
    /// The nonlinearity between them.
    pub activation: Activation,
}

impl Bottleneck {
    /// A fresh adapter: `down` as `nn.Linear` initializes (uniform ±1/√hidden, zero bias),
    /// `up` all zeros.
    pub fn new(hidden: usize, size: usize, activation: Activation, rng: &mut impl Rng) -> Self {
        let bound = 1.0 / (hidden as f32).sqrt();
        let w: Vec<f32> = (0..size * hidden)
            .map(|_| rng.gen_range(-bound..bound))
            .collect();
        Bottleneck {
            down: Linear::new(
                Tensor::new(vec![size, hidden], w)
                    .unwrap_or_else(|_| Tensor::zeros(&[size, hidden])),
                Some(Tensor::zeros(&[size])),
            ),
            up: Linear::new(
                Tensor::zeros(&[hidden, size]),
                Some(Tensor::zeros(&[hidden])),
            ),
            activation,
        }
    }

    /// The bottleneck width.
    pub fn size(&self) -> usize {
        self.down.out_features()
    }

    /// x: [rows, hidden], updated in place to `x + up(act(down(x)))`.
    pub fn forward_inplace(&self, x: &mut [f32], rows: usize) -> Result<()> {
        let mut z = vec![0.0; rows * self.size()];
        linear_forward(
            &self.down.weight,
            self.down.bias.as_ref(),
            x,
            rows,
            &mut z,
            LinearOut::WriteAct(self.activation),
        )?;
        // The residual sum is fused into the up-projection.
        linear_forward(
            &self.up.weight,
            self.up.bias.as_ref(),
            &z,
            rows,
            x,
            LinearOut::Accumulate,
        )?;
        Ok(())
    }

    /// Backward from `dy` (gradient at the output) given the input `x`: returns the input
    /// gradient `dy + downᵀ(act'(z) ⊙ upᵀ dy)` and adds parameter gradients into `g` (a frozen
    /// adapter has empty gradient tensors and gets none).
    pub fn backward(
        &self,
        g: &mut Bottleneck,
        x: &[f32],
        dy: &[f32],
        rows: usize,
    ) -> Result<Vec<f32>> {
        let m = self.size();
        let mut z = vec![0.0; rows * m];
        linear_forward(
            &self.down.weight,
            self.down.bias.as_ref(),
            x,
            rows,
            &mut z,
            LinearOut::Write,
        )?;
        let mut a = z.clone();
        bias_act_inplace(&mut a, None, Some(self.activation));
        let mut da = vec![0.0; rows * m];
        linear_backward(
            &a,
            &self.up.weight,
            dy,
            rows,
            Some(&mut da),
            non_empty(&mut g.up.weight),
            g.up.bias.as_mut().and_then(non_empty),
        )?;
        activation_backward(self.activation, &z, &mut da);
        let mut dx = vec![0.0; x.len()];
        linear_backward(
            x,
            &self.down.weight,
            &da,
            rows,
            Some(&mut dx),
            non_empty(&mut g.down.weight),
            g.down.bias.as_mut().and_then(non_empty),
        )?;
        add_inplace(&mut dx, dy);
        Ok(dx)
    }
}

/// A gradient buffer, or `None` for a frozen tensor (an empty gradient).
pub(crate) fn non_empty(t: &mut Tensor) -> Option<&mut [f32]> {
    (t.numel() > 0).then(|| t.data_mut())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn randomized(rng: &mut rand::rngs::StdRng) -> Bottleneck {
        let mut b = Bottleneck::new(6, 3, Activation::GeluErf, rng);
        for t in [
            &mut b.up.weight,
            b.up.bias.as_mut().unwrap(),
            b.down.bias.as_mut().unwrap(),
        ] {
            t.data_mut()
                .iter_mut()
                .for_each(|v| *v = rng.gen_range(-1.0..1.0));
        }
        b
    }

    #[test]
    fn fresh_adapter_is_the_identity() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let b = Bottleneck::new(6, 3, Activation::Relu, &mut rng);
        let x: Vec<f32> = (0..12).map(|i| i as f32 * 0.37 - 2.0).collect();
        let mut y = x.clone();
        b.forward_inplace(&mut y, 2).unwrap();
        assert_eq!(x, y);
    }

    #[test]
    fn forward_matches_naive() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let b = randomized(&mut rng);
        let x: Vec<f32> = (0..12).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let mut y = x.clone();
        b.forward_inplace(&mut y, 2).unwrap();
        let (dw, db) = (b.down.weight.data(), b.down.bias.as_ref().unwrap().data());
        let (uw, ub) = (b.up.weight.data(), b.up.bias.as_ref().unwrap().data());
        for r in 0..2 {
            let a: Vec<f32> = (0..3)
                .map(|k| {
                    let z: f32 = (0..6).map(|j| dw[k * 6 + j] * x[r * 6 + j]).sum::<f32>() + db[k];
                    Activation::GeluErf.apply(z)
                })
                .collect();
            for j in 0..6 {
                let want = x[r * 6 + j] + ub[j] + (0..3).map(|k| uw[j * 3 + k] * a[k]).sum::<f32>();
                assert!((y[r * 6 + j] - want).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(6);
        let b = randomized(&mut rng);
        let rows = 3;
        let x: Vec<f32> = (0..rows * 6).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let c: Vec<f32> = (0..rows * 6).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let loss = |b: &Bottleneck, x: &[f32]| -> f64 {
            let mut y = x.to_vec();
            b.forward_inplace(&mut y, rows).unwrap();
            y.iter()
                .zip(&c)
                .map(|(y, c)| (*y as f64) * (*c as f64))
                .sum()
        };
        let mut g = b.clone();
        for t in [
            &mut g.up.weight,
            g.up.bias.as_mut().unwrap(),
            &mut g.down.weight,
            g.down.bias.as_mut().unwrap(),
        ] {
            t.data_mut().fill(0.0);
        }
        let dx = b.backward(&mut g, &x, &c, rows).unwrap();
        let eps = 1e-2f32;
        for k in 0..x.len() {
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp[k] += eps;
            xm[k] -= eps;
            let fd = (loss(&b, &xp) - loss(&b, &xm)) / (2.0 * eps as f64);
            assert!(
                (fd - dx[k] as f64).abs() < 2e-3,
                "dx[{k}] {fd} vs {}",
                dx[k]
            );
        }
        type Get = fn(&mut Bottleneck) -> &mut Tensor;
        let params: [(Get, &str); 4] = [
            (|b| &mut b.up.weight, "up.weight"),
            (|b| b.up.bias.as_mut().unwrap(), "up.bias"),
            (|b| &mut b.down.weight, "down.weight"),
            (|b| b.down.bias.as_mut().unwrap(), "down.bias"),
        ];
        for (get, name) in params {
            let n = get(&mut b.clone()).numel();
            for k in 0..n {
                let (mut bp, mut bm) = (b.clone(), b.clone());
                get(&mut bp).data_mut()[k] += eps;
                get(&mut bm).data_mut()[k] -= eps;
                let fd = (loss(&bp, &x) - loss(&bm, &x)) / (2.0 * eps as f64);
                let got = get(&mut g).data()[k] as f64;
                assert!((fd - got).abs() < 2e-3, "{name}[{k}] {fd} vs {got}");
            }
        }
    }
}
