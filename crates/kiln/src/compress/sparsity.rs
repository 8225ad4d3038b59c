//! Unstructured pruning during fine-tuning (`finetune --prune-to S`): the weights of the blocks'
//! linear layers (query/key/value, attention output, both feed-forward layers) are zeroed
//! gradually, on Zhu & Gupta's (2017) cubic schedule, by magnitude or by movement (Sanh et al.
//! 2020: the score of a weight is `−Σ w · ∂L/∂w` over the steps, so weights moving towards zero
//! go first). The mask only grows, and pruned weights are set back to zero after every optimizer
//! step, so they stay zero to the end. The zeros are saved in place: the model directory is an
//! ordinary one (transformers loads it), and the mask is the set of zero weights, recovered on
//! resume; movement scores are kept with the optimizer's moments in checkpoints.

use crate::checkpoint::Pretrained;
use crate::error::{Error, Result};
use crate::train::backprop::parameters;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How often (in steps) the mask grows inside the pruning window: Zhu & Gupta prune every
/// Δt steps rather than every step, letting the model recover in between.
pub const PRUNE_EVERY: u64 = 10;

/// Unstructured-pruning settings of a fine-tuning run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SparsityConfig {
    /// Final fraction of the block linear weights that are zero; `None`: no pruning.
    pub prune_to: Option<f32>,
    /// `magnitude` (smallest |w| first) or `movement` (smallest −Σ w·g first).
    pub prune_method: String,
    /// Step at which pruning starts (the sparsity is 0 up to it); `None`: at once for
    /// magnitude, after a sixth of the run for movement (its scores need steps to mean
    /// anything: pruning on a few steps' noise removes a random half of a pretrained model).
    pub prune_start: Option<u64>,
    /// Step at which the final sparsity is reached (default: two thirds of the run).
    pub prune_end: Option<u64>,
    /// `global` (one threshold over every pruned layer) or `layer` (each layer to the same
    /// sparsity).
    pub prune_scope: String,
}

impl Default for SparsityConfig {
    fn default() -> Self {
        SparsityConfig {
            prune_to: None,
            prune_method: "magnitude".into(),
            prune_start: None,
            prune_end: None,
            prune_scope: "global".into(),
        }
    }
}

impl SparsityConfig {
    /// Refuses settings that cannot run, naming the flag.
    pub fn validate(&self) -> Result<()> {
        if let Some(s) = self.prune_to {
            if !(0.0..1.0).contains(&s) {
                return Err(Error::Input(format!(
                    "--prune-to {s}: give the final sparsity, from 0 up to (not including) 1"
                )));
            }
        }
        if !["magnitude", "movement"].contains(&self.prune_method.as_str()) {
            return Err(Error::Input(format!(
                "--prune-method {}: magnitude or movement",
                self.prune_method
            )));
        }
        if !["global", "layer"].contains(&self.prune_scope.as_str()) {
            return Err(Error::Input(format!(
                "--prune-scope {}: global or layer",
                self.prune_scope
            )));
        }
        if let (Some(start), Some(end)) = (self.prune_start, self.prune_end) {
            if end <= start {
                return Err(Error::Input(format!(
                    "--prune-end {end} must come after --prune-start {start}"
                )));
            }
        }
        Ok(())
    }

    /// The pruning window `(start, end)` of a run of `total` steps.
    fn window(&self, total: u64) -> (u64, u64) {
        let start = self
            .prune_start
            .unwrap_or(if self.prune_method == "movement" {
                total / 6
            } else {
                0
            });
        let end = self.prune_end.unwrap_or((2 * total / 3).max(start + 1));
        (start, end.max(start + 1))
    }

    /// The sparsity due after `step` of `total` steps: `S · (1 − (1 − progress)³)` over the
    /// window, 0 before it, `S` after it.
    pub fn target(&self, step: u64, total: u64) -> f32 {
        let Some(s) = self.prune_to else { return 0.0 };
        let (start, end) = self.window(total);
        if step <= start {
            return 0.0;
        }
        if step >= end {
            return s;
        }
        let x = (step - start) as f32 / (end - start) as f32;
        s * (1.0 - (1.0 - x).powi(3))
    }

    /// Whether the mask grows after `step`.
    pub fn due(&self, step: u64, total: u64) -> bool {
        let (start, end) = self.window(total);
        self.prune_to.is_some()
            && step > start
            && (step.is_multiple_of(PRUNE_EVERY) || step == end || step == total)
    }
}

/// Whether a parameter name is a pruned weight: a block linear layer's weight.
fn pruned(name: &str) -> bool {
    name.starts_with("blocks.")
        && [
            "qkv.weight",
            "attn_out.weight",
            "ffn_in.weight",
            "ffn_out.weight",
        ]
        .iter()
        .any(|s| name.ends_with(s))
}

/// The masks of a run: per pruned weight, which entries are pruned; movement scores.
#[derive(Clone, Debug, Default)]
pub struct Sparsifier {
    cfg: SparsityConfig,
    masks: BTreeMap<String, Vec<bool>>,
}

impl Sparsifier {
    /// Masks for `p` as it is: its zero weights are pruned (none in a pretrained model; the
    /// mask of a resumed run).
    pub fn new(p: &mut Pretrained, cfg: &SparsityConfig) -> Result<Self> {
        cfg.validate()?;
        if cfg.prune_to.is_none() {
            return Ok(Sparsifier::default());
        }
        if p.peft.is_some() {
            return Err(Error::Input(
                "--prune-to prunes the base weights, which LoRA and adapters keep frozen: use --method full".into(),
            ));
        }
        let mut masks = BTreeMap::new();
        for (name, t, _) in parameters(p) {
            if pruned(&name) && t.numel() > 0 {
                masks.insert(name, t.data().iter().map(|&v| v == 0.0).collect());
            }
        }
        if masks.is_empty() {
            return Err(Error::Input(
                "--prune-to: the model has no f32 block weights to prune (is it int8?)".into(),
            ));
        }
        Ok(Sparsifier {
            cfg: cfg.clone(),
            masks,
        })
    }

    /// Whether this run prunes.
    pub fn active(&self) -> bool {
        self.cfg.prune_to.is_some()
    }

    /// Adds this step's `−w · g` to the movement scores (before the optimizer step).
    pub fn observe(
        &self,
        p: &mut Pretrained,
        grads: &mut Pretrained,
        scores: &mut BTreeMap<String, Vec<f32>>,
    ) {
        if !self.active() || self.cfg.prune_method != "movement" {
            return;
        }
        // The gradient buffers have the model's parameters in the same order.
        for ((name, t, _), (_, g, _)) in parameters(p).into_iter().zip(parameters(grads)) {
            if !pruned(&name) || g.numel() != t.numel() {
                continue;
            }
            let s = scores
                .entry(format!("movement.{name}"))
                .or_insert_with(|| vec![0.0; t.numel()]);
            for ((s, &w), &gv) in s.iter_mut().zip(t.data()).zip(g.data()) {
                *s -= w * gv;
            }
        }
    }

    /// After an optimizer step: grows the mask to the sparsity due at `step` (when due) and
    /// sets every pruned weight back to zero.
    pub fn apply(
        &mut self,
        p: &mut Pretrained,
        step: u64,
        total: u64,
        scores: &BTreeMap<String, Vec<f32>>,
    ) -> Result<()> {
        if !self.active() {
            return Ok(());
        }
        if self.cfg.due(step, total) {
            let target = self.cfg.target(step, total);
            let movement = self.cfg.prune_method == "movement";
            let weights: BTreeMap<String, Vec<f32>> = parameters(p)
                .into_iter()
                .filter(|(n, _, _)| self.masks.contains_key(n))
                .map(|(n, t, _)| (n, t.data().to_vec()))
                .collect();
            let score = |name: &str| -> Vec<f32> {
                match scores.get(&format!("movement.{name}")).filter(|_| movement) {
                    Some(s) => s.clone(),
                    None => weights[name].iter().map(|v| v.abs()).collect(),
                }
            };
            let groups: Vec<Vec<String>> = if self.cfg.prune_scope == "layer" {
                self.masks.keys().map(|k| vec![k.clone()]).collect()
            } else {
                vec![self.masks.keys().cloned().collect()]
            };
            for group in groups {
                let size: usize = group.iter().map(|n| self.masks[n].len()).sum();
                let done: usize = group
                    .iter()
                    .map(|n| self.masks[n].iter().filter(|&&m| m).count())
                    .sum();
                let want = ((size as f64) * target as f64).round() as usize;
                if want <= done {
                    continue;
                }
                let group_scores: Vec<Vec<f32>> = group.iter().map(|n| score(n)).collect();
                // The threshold: the (want - done)-th smallest score among unpruned weights
                // (4 bytes per weight, not a sorted copy of every index).
                let mut open: Vec<f32> = group
                    .iter()
                    .zip(&group_scores)
                    .flat_map(|(n, s)| {
                        s.iter()
                            .zip(&self.masks[n])
                            .filter(|(_, &m)| !m)
                            .map(|(&v, _)| v)
                    })
                    .collect();
                let mut more = (want - done).min(open.len());
                if more == 0 {
                    continue;
                }
                let (_, &mut tau, _) = open.select_nth_unstable_by(more - 1, f32::total_cmp);
                drop(open);
                // Below the threshold first, then ties in position order, to exactly `more`.
                for pass in 0..2 {
                    for (n, s) in group.iter().zip(&group_scores) {
                        let mask = self.masks.get_mut(n).expect("group names are mask names");
                        for (m, &v) in mask.iter_mut().zip(s) {
                            let hit = if pass == 0 { v < tau } else { v == tau };
                            if more > 0 && !*m && hit {
                                *m = true;
                                more -= 1;
                            }
                        }
                    }
                }
            }
        }
        for (name, t, _) in parameters(p) {
            if let Some(mask) = self.masks.get(&name) {
                for (v, &m) in t.data_mut().iter_mut().zip(mask) {
                    if m {
                        *v = 0.0;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Fraction of zero weights per block linear layer of `p` (name, zeros / size), and over all
/// of them.
pub fn sparsity(p: &mut Pretrained) -> (Vec<(String, f64)>, f64) {
    let (mut zeros, mut size) = (0usize, 0usize);
    let mut rows = Vec::new();
    for (name, t, _) in parameters(p) {
        if pruned(&name) && t.numel() > 0 {
            let z = t.data().iter().filter(|&&v| v == 0.0).count();
            zeros += z;
            size += t.numel();
            rows.push((
                name.trim_end_matches(".weight").to_string(),
                z as f64 / t.numel() as f64,
            ));
        }
    }
    (rows, zeros as f64 / size.max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_is_cubic_over_its_window() {
        let c = SparsityConfig {
            prune_to: Some(0.8),
            prune_start: Some(10),
            prune_end: Some(110),
            ..Default::default()
        };
        assert_eq!(c.target(5, 200), 0.0);
        assert!((c.target(60, 200) - 0.8 * (1.0 - 0.125)).abs() < 1e-6);
        assert_eq!(c.target(150, 200), 0.8);
        assert!(c.due(20, 200) && !c.due(25, 200) && !c.due(10, 200));
        // Defaults: magnitude from the first step, movement after a sixth of the run; both
        // reach the final sparsity at two thirds.
        let magnitude = SparsityConfig {
            prune_to: Some(0.5),
            ..Default::default()
        };
        let movement = SparsityConfig {
            prune_method: "movement".into(),
            ..magnitude.clone()
        };
        assert_eq!(magnitude.window(600), (0, 400));
        assert_eq!(movement.window(600), (100, 400));
        assert!(magnitude.target(10, 600) > 0.0 && movement.target(100, 600) == 0.0);
        assert!(movement.due(110, 600) && !movement.due(100, 600));
    }
}
