//! Parameters a run trains beside the model's: distillation's learned projection from a
//! narrower student's hidden states to the teacher's width (TinyBERT's `W_h`), or a whole
//! second model (ELECTRA's generator). They take the same AdamW steps as the model (moments and
//! values kept in the optimizer's checkpointed state as `aux.NAME`, `aux.NAME.m`,
//! `aux.NAME.v`, so a resumed run is exact) and count in the gradient norm, but are never
//! written into the model directory: the task decides what, if anything, to save of them.

use crate::checkpoint::Pretrained;
use crate::error::{Error, Result};
use crate::train::backprop::parameters;
use crate::train::optim::{clip_grad_norm, AdamW};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// One auxiliary tensor: its values and the gradient accumulated over the step's micro-batches.
#[derive(Debug, Clone)]
pub struct AuxParam {
    /// Values.
    pub value: Vec<f32>,
    /// Gradient of the step so far.
    pub grad: Vec<f32>,
    /// Whether weight decay applies (not to biases).
    pub decay: bool,
}

/// A second model trained beside the run's: its weights and their gradient buffers (of
/// [`crate::train::backprop::zeros_like`]'s shape; empty tensors are not trained by this
/// model's step, e.g. tables it shares with the run's model, whose gradients the loss sends
/// there).
pub struct AuxModel {
    /// Name in the optimizer state (`aux.NAME.<parameter>`).
    pub name: String,
    /// The weights.
    pub p: Pretrained,
    /// Their gradients.
    pub grads: Pretrained,
}

/// A run's auxiliary parameters by name, and optionally a whole auxiliary model. The loss reads
/// and accumulates them from the micro-batch loop (behind a lock: micro-batches run one after
/// another, so the sums keep their order and resume is exact).
#[derive(Default)]
pub struct Auxiliary {
    params: Mutex<BTreeMap<String, AuxParam>>,
    model: Option<Mutex<AuxModel>>,
}

impl std::fmt::Debug for Auxiliary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auxiliary")
            .field(
                "params",
                &self.with(|p| p.keys().cloned().collect::<Vec<_>>()),
            )
            .field("model", &self.model(|m| m.name.clone()))
            .finish()
    }
}

impl Auxiliary {
    /// Auxiliary parameters with these initial values (`(name, values, decay)`).
    pub fn new(init: Vec<(String, Vec<f32>, bool)>) -> Self {
        let params = init
            .into_iter()
            .map(|(n, value, decay)| {
                let grad = vec![0.0; value.len()];
                (n, AuxParam { value, grad, decay })
            })
            .collect();
        Auxiliary {
            params: Mutex::new(params),
            model: None,
        }
    }

    /// A second model trained beside the run's (see [`AuxModel`]).
    pub fn with_model(model: AuxModel) -> Self {
        Auxiliary {
            params: Mutex::default(),
            model: Some(Mutex::new(model)),
        }
    }

    /// Runs `f` on the auxiliary model, if there is one.
    pub fn model<R>(&self, f: impl FnOnce(&mut AuxModel) -> R) -> Option<R> {
        let m = self.model.as_ref()?;
        let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
        Some(f(&mut g))
    }

    /// Runs `f` on the parameters (to read them and add gradients in the loss).
    pub fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<String, AuxParam>) -> R) -> R {
        let mut g = self.params.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g)
    }

    /// Takes the values a checkpoint saved in the optimizer state, if it has them (a resumed
    /// run); checks their sizes.
    pub fn restore(&self, opt: &AdamW) -> Result<()> {
        self.with(|ps| {
            for (name, p) in ps.iter_mut() {
                if let Some(v) = opt.extra.get(&format!("aux.{name}")) {
                    if v.len() != p.value.len() {
                        return Err(Error::shape(
                            "Auxiliary::restore",
                            format!(
                                "checkpoint's aux.{name} has {} values, the run's {}",
                                v.len(),
                                p.value.len()
                            ),
                        ));
                    }
                    p.value.copy_from_slice(v);
                }
            }
            Ok(())
        })?;
        self.model(|m| {
            let trained = trained_names(&mut m.grads);
            for (name, t, _) in parameters(&mut m.p) {
                if !trained.contains(&name) {
                    continue;
                }
                let key = format!("aux.{}.{name}", m.name);
                if let Some(v) = opt.extra.get(&key) {
                    if v.len() != t.numel() {
                        return Err(Error::shape(
                            "Auxiliary::restore",
                            format!(
                                "checkpoint's {key} has {} values, the run's {}",
                                v.len(),
                                t.numel()
                            ),
                        ));
                    }
                    t.data_mut().copy_from_slice(v);
                }
            }
            Ok(())
        })
        .unwrap_or(Ok(()))
    }

    /// The global gradient norm of the model's gradients `model_grads` and these, and all of
    /// them clipped to `limit` together (as one `clip_grad_norm_` over every trained tensor).
    pub fn clip(&self, model_grads: &mut [&mut [f32]], limit: f32) -> f32 {
        self.with_grads(|extra| {
            let mut all: Vec<&mut [f32]> = model_grads
                .iter_mut()
                .map(|g| &mut **g)
                .chain(extra)
                .collect();
            clip_grad_norm(&mut all, limit)
        })
    }

    /// Runs `f` on every gradient buffer of these parameters (to clip them, or to sum them
    /// over the ranks of a distributed run).
    pub fn with_grads<R>(&self, f: impl FnOnce(Vec<&mut [f32]>) -> R) -> R {
        let mut ps = self.params.lock().unwrap_or_else(|e| e.into_inner());
        let mut guard = self
            .model
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()));
        let mut extra: Vec<(String, &mut crate::engine::Tensor, bool)> = match guard.as_deref_mut()
        {
            Some(m) => parameters(&mut m.grads),
            None => Vec::new(),
        };
        let all: Vec<&mut [f32]> = ps
            .values_mut()
            .map(|p| &mut p.grad[..])
            .chain(extra.iter_mut().map(|(_, t, _)| t.data_mut()))
            .collect();
        f(all)
    }

    /// Zeroes the accumulated gradients (before a step's micro-batches).
    pub fn zero_grad(&self) {
        self.with(|ps| ps.values_mut().for_each(|p| p.grad.fill(0.0)));
        self.model(|m| {
            for (_, t, _) in parameters(&mut m.grads) {
                t.data_mut().fill(0.0);
            }
        });
    }

    /// One AdamW step at `lr`, after `opt` stepped the model (same step count and settings);
    /// values and moments are stored in `opt.extra` for checkpoints.
    pub fn step(&self, opt: &mut AdamW, lr: f32) -> Result<()> {
        self.with(|ps| {
            for (name, p) in ps.iter_mut() {
                let n = p.value.len();
                let mut m = opt
                    .extra
                    .remove(&format!("aux.{name}.m"))
                    .unwrap_or_else(|| vec![0.0; n]);
                let mut v = opt
                    .extra
                    .remove(&format!("aux.{name}.v"))
                    .unwrap_or_else(|| vec![0.0; n]);
                opt.apply(&mut p.value, &p.grad, &mut m, &mut v, lr, p.decay)?;
                opt.extra.insert(format!("aux.{name}.m"), m);
                opt.extra.insert(format!("aux.{name}.v"), v);
                opt.extra.insert(format!("aux.{name}"), p.value.clone());
            }
            Ok(())
        })?;
        self.model(|m| {
            let mut grads = parameters(&mut m.grads);
            for ((name, t, decay), (_, g, _)) in parameters(&mut m.p).into_iter().zip(&mut grads) {
                if g.numel() == 0 {
                    continue;
                }
                let key = format!("aux.{}.{name}", m.name);
                let n = t.numel();
                let mut mo = opt
                    .extra
                    .remove(&format!("{key}.m"))
                    .unwrap_or_else(|| vec![0.0; n]);
                let mut v = opt
                    .extra
                    .remove(&format!("{key}.v"))
                    .unwrap_or_else(|| vec![0.0; n]);
                opt.apply(t.data_mut(), g.data(), &mut mo, &mut v, lr, decay)?;
                opt.extra.insert(format!("{key}.m"), mo);
                opt.extra.insert(format!("{key}.v"), v);
                opt.extra.insert(key, t.data().to_vec());
            }
            Ok(())
        })
        .unwrap_or(Ok(()))
    }
}

/// The names of the parameters that have gradient buffers (the trained ones).
fn trained_names(grads: &mut Pretrained) -> std::collections::HashSet<String> {
    parameters(grads)
        .into_iter()
        .filter(|(_, t, _)| t.numel() > 0)
        .map(|(n, _, _)| n)
        .collect()
}
