//! Parameters a run trains beside the model's: distillation's learned projection from a
//! narrower student's hidden states to the teacher's width (TinyBERT's `W_h`). They take the
//! same AdamW steps as the model (moments and values kept in the optimizer's checkpointed state
//! as `aux.NAME`, `aux.NAME.m`, `aux.NAME.v`, so a resumed run is exact) and count in the
//! gradient norm, but are never written into the model directory: they only serve the loss.

use crate::error::{Error, Result};
use crate::train::optim::AdamW;
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

/// A run's auxiliary parameters by name. The loss reads and accumulates them from the
/// micro-batch loop (behind a lock: micro-batches run one after another, so the sums keep
/// their order and resume is exact).
#[derive(Debug, Default)]
pub struct Auxiliary {
    params: Mutex<BTreeMap<String, AuxParam>>,
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
        }
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
        })
    }

    /// Zeroes the accumulated gradients (before a step's micro-batches).
    pub fn zero_grad(&self) {
        self.with(|ps| ps.values_mut().for_each(|p| p.grad.fill(0.0)));
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
        })
    }
}
