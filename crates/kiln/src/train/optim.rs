//! AdamW with decoupled weight decay (Loshchilov & Hutter), computed as `torch.optim.AdamW`
//! does (torch/optim/adamw.py, single-tensor path), and global-norm gradient clipping as
//! `torch.nn.utils.clip_grad_norm_`.

use crate::error::{Error, Result};
use rayon::prelude::*;

/// One trainable tensor: its values, its gradient, and whether weight decay applies (not to
/// biases and LayerNorm weights, transformers' default grouping).
pub struct Param<'a> {
    /// Values, updated in place.
    pub value: &'a mut [f32],
    /// Gradient of the loss.
    pub grad: &'a [f32],
    /// Apply weight decay.
    pub decay: bool,
}

/// Whether a parameter with this Hugging Face name gets weight decay: everything except
/// biases and LayerNorm weights (transformers `Trainer.get_decay_parameter_names`).
pub fn decays(name: &str) -> bool {
    !(name.ends_with(".bias") || name.ends_with(".beta") || is_norm(name))
}

/// Whether a Hugging Face tensor name belongs to a LayerNorm.
pub fn is_norm(name: &str) -> bool {
    name.contains("LayerNorm")
        || name.contains("layer_norm")
        || name.starts_with("ln_")
        || name.contains(".ln_")
}

/// AdamW state and hyper-parameters.
#[derive(Clone, Debug)]
pub struct AdamW {
    /// β₁.
    pub beta1: f32,
    /// β₂.
    pub beta2: f32,
    /// ε.
    pub eps: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
    /// Steps taken.
    pub step: u64,
    /// First and second moments, one pair per parameter, in parameter order.
    pub moments: Vec<(Vec<f32>, Vec<f32>)>,
    /// Other per-weight state a run accumulates across steps (movement pruning's scores), by
    /// name; saved in checkpoints beside the moments.
    pub extra: std::collections::BTreeMap<String, Vec<f32>>,
}

impl AdamW {
    /// transformers' defaults: β = (0.9, 0.999), ε = 1e-8.
    pub fn new(weight_decay: f32) -> Self {
        AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            step: 0,
            moments: Vec::new(),
            extra: Default::default(),
        }
    }

    /// One update of every parameter with learning rate `lr`.
    pub fn update(&mut self, params: &mut [Param<'_>], lr: f32) -> Result<()> {
        if self.moments.is_empty() {
            self.moments = params
                .iter()
                .map(|p| (vec![0.0; p.value.len()], vec![0.0; p.value.len()]))
                .collect();
        }
        if self.moments.len() != params.len() {
            return Err(Error::shape(
                "AdamW::update",
                "parameter list changed between steps",
            ));
        }
        self.step += 1;
        let mut moments = std::mem::take(&mut self.moments);
        let r = params
            .iter_mut()
            .zip(&mut moments)
            .try_for_each(|(p, (m, v))| self.apply(p.value, p.grad, m, v, lr, p.decay));
        self.moments = moments;
        r
    }

    /// The AdamW update of one tensor with its moments, at the current step count (taken by
    /// [`AdamW::update`], which calls this for every parameter).
    pub fn apply(
        &self,
        value: &mut [f32],
        grad: &[f32],
        m: &mut [f32],
        v: &mut [f32],
        lr: f32,
        decay: bool,
    ) -> Result<()> {
        if grad.len() != value.len() || m.len() != value.len() || v.len() != value.len() {
            return Err(Error::shape(
                "AdamW::update",
                "gradient and value sizes differ",
            ));
        }
        let (b1, b2, eps) = (self.beta1, self.beta2, self.eps);
        let bc1 = 1.0 - b1.powi(self.step as i32);
        let bc2_sqrt = (1.0 - b2.powi(self.step as i32)).sqrt();
        let step_size = lr / bc1;
        let decay = if decay {
            1.0 - lr * self.weight_decay
        } else {
            1.0
        };
        value
            .par_chunks_mut(4096)
            .zip(grad.par_chunks(4096))
            .zip(m.par_chunks_mut(4096))
            .zip(v.par_chunks_mut(4096))
            .for_each(|(((x, g), m), v)| {
                for i in 0..x.len() {
                    x[i] *= decay;
                    m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                    v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                    let denom = v[i].sqrt() / bc2_sqrt + eps;
                    x[i] -= step_size * m[i] / denom;
                }
            });
        Ok(())
    }
}

/// Scales gradients so their global L2 norm is at most `max_norm`; returns the norm before
/// clipping. The norm is summed in a fixed order (per tensor, then across tensors).
pub fn clip_grad_norm(grads: &mut [&mut [f32]], max_norm: f32) -> f32 {
    let total: f64 = grads
        .iter()
        .map(|g| {
            g.par_chunks(4096)
                .map(|c| c.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())
                .collect::<Vec<_>>()
                .iter()
                .sum::<f64>()
        })
        .sum();
    let norm = total.sqrt() as f32;
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        for g in grads.iter_mut() {
            g.par_chunks_mut(4096)
                .for_each(|c| c.iter_mut().for_each(|x| *x *= coef));
        }
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A straightforward f64 AdamW (the paper's algorithm with PyTorch's bias correction).
    fn reference(x0: &[f64], grads: &[Vec<f64>], lr: f64, wd: f64, decay: bool) -> Vec<f64> {
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
        let mut x = x0.to_vec();
        let mut m = vec![0.0; x.len()];
        let mut v = vec![0.0; x.len()];
        for (t, g) in grads.iter().enumerate() {
            let t = (t + 1) as i32;
            for i in 0..x.len() {
                if decay {
                    x[i] *= 1.0 - lr * wd;
                }
                m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                let mhat = m[i] / (1.0 - b1.powi(t));
                let vhat = v[i] / (1.0 - b2.powi(t));
                x[i] -= lr * mhat / (vhat.sqrt() + eps);
            }
        }
        x
    }

    #[test]
    fn adamw_matches_reference_over_ten_steps() {
        let n = 5000;
        let x0: Vec<f32> = (0..n)
            .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let grads: Vec<Vec<f32>> = (0..10)
            .map(|s| {
                (0..n)
                    .map(|i| (((i * 13 + s * 7) % 97) as f32 / 48.0 - 1.0) * 0.1)
                    .collect()
            })
            .collect();
        for decay in [true, false] {
            let mut x = x0.clone();
            let mut opt = AdamW::new(0.01);
            for g in &grads {
                opt.update(
                    &mut [Param {
                        value: &mut x,
                        grad: g,
                        decay,
                    }],
                    1e-3,
                )
                .unwrap();
            }
            let want = reference(
                &x0.iter().map(|&v| v as f64).collect::<Vec<_>>(),
                &grads
                    .iter()
                    .map(|g| g.iter().map(|&v| v as f64).collect())
                    .collect::<Vec<_>>(),
                1e-3,
                0.01,
                decay,
            );
            for (a, b) in x.iter().zip(&want) {
                assert!((*a as f64 - b).abs() < 1e-6, "decay={decay}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn first_step_moves_by_lr_times_sign() {
        let mut x = vec![1.0f32, -2.0, 0.5];
        let g = vec![0.3f32, -0.001, 5.0];
        AdamW::new(0.0)
            .update(
                &mut [Param {
                    value: &mut x,
                    grad: &g,
                    decay: true,
                }],
                0.1,
            )
            .unwrap();
        for (a, b) in x.iter().zip([0.9f32, -1.9, 0.4]) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn decay_grouping_follows_transformers() {
        assert!(decays("bert.encoder.layer.0.attention.self.query.weight"));
        assert!(decays("bert.embeddings.word_embeddings.weight"));
        assert!(!decays("bert.encoder.layer.0.attention.self.query.bias"));
        assert!(!decays("bert.embeddings.LayerNorm.weight"));
        assert!(!decays("transformer.h.0.ln_1.weight"));
        assert!(!decays("transformer.ln_f.weight"));
        assert!(decays("transformer.h.0.mlp.c_fc.weight"));
    }

    #[test]
    fn clipping_scales_to_the_global_norm() {
        let mut a = vec![3.0f32, 0.0];
        let mut b = vec![0.0f32, 4.0];
        let norm = clip_grad_norm(&mut [&mut a, &mut b], 1.0);
        assert!((norm - 5.0).abs() < 1e-6);
        assert!((a[0] - 0.6).abs() < 1e-5 && (b[1] - 0.8).abs() < 1e-5);
        let mut c = vec![0.1f32];
        assert!((clip_grad_norm(&mut [&mut c], 1.0) - 0.1).abs() < 1e-7);
        assert_eq!(c[0], 0.1, "below the limit nothing changes");
    }
}
