//! Training checkpoints, laid out as transformers' Trainer does: `OUT/checkpoint-STEP/` holds a
//! loadable model directory plus `optimizer.safetensors` (AdamW moments) and
//! `trainer_state.json` (step, data position, epoch, settings). A checkpoint is written into a
//! temporary directory and renamed into place, so a crash never leaves a half-written one
//! under a final name; only the last `keep_last` are kept.

use super::backprop::parameters;
use super::optim::AdamW;
use crate::checkpoint::weights::write_safetensors;
use crate::checkpoint::{self, Pretrained, SaveDtype, WeightStore};
use crate::engine::Tensor;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where a run stands.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    /// Optimizer steps taken.
    pub step: u64,
    /// Training sequences consumed (the data position).
    pub sequences: u64,
    /// Completed passes over the corpus.
    pub epoch: u64,
    /// Planned optimizer steps.
    pub total_steps: u64,
    /// Latest held-out loss, if evaluated.
    pub valid_loss: Option<f32>,
    /// Step and value of the best selection metric so far (fine-tuning).
    #[serde(default)]
    pub best: Option<(u64, f64)>,
    /// Evaluations since the best one (for early stopping).
    #[serde(default)]
    pub evals_since_best: u64,
    /// The settings of the run (the task's config struct as JSON).
    pub config: serde_json::Value,
    /// Fingerprint of the model directory the run started from (`checkpoint::fingerprint`).
    #[serde(default)]
    pub model: Option<String>,
}

impl TrainerState {
    /// The state before the first step.
    pub fn new(config: serde_json::Value) -> Self {
        TrainerState {
            step: 0,
            sequences: 0,
            epoch: 0,
            total_steps: 0,
            valid_loss: None,
            best: None,
            evals_since_best: 0,
            config,
            model: None,
        }
    }
}

pub(crate) fn step_of(dir: &Path) -> Option<u64> {
    dir.file_name()?
        .to_str()?
        .strip_prefix("checkpoint-")?
        .parse()
        .ok()
}

/// Complete checkpoints in `out`, oldest first.
pub fn checkpoints(out: &Path) -> Vec<PathBuf> {
    let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(out)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter_map(|p| step_of(&p).map(|s| (s, p)))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v.into_iter().map(|(_, p)| p).collect()
}

/// Writes a checkpoint for `state.step` and removes the oldest beyond `keep_last`.
pub fn save_checkpoint(
    out: &Path,
    p: &mut Pretrained,
    opt: &AdamW,
    state: &TrainerState,
    keep_last: usize,
) -> Result<PathBuf> {
    let final_dir = out.join(format!("checkpoint-{}", state.step));
    let tmp = out.join(format!(
        ".tmp-checkpoint-{}-{}",
        state.step,
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    checkpoint::save(p, &tmp, SaveDtype::F32)?;
    let mut moments = BTreeMap::new();
    let peft = p.peft.clone();
    let names: Vec<String> = parameters(p)
        .into_iter()
        .map(|(n, _, _)| n)
        .filter(|n| crate::peft::is_trainable(peft.as_ref(), n))
        .collect();
    if !opt.moments.is_empty() {
        for (name, (m, v)) in names.iter().zip(&opt.moments) {
            moments.insert(format!("m.{name}"), Tensor::new(vec![m.len()], m.clone())?);
            moments.insert(format!("v.{name}"), Tensor::new(vec![v.len()], v.clone())?);
        }
    }
    for (name, v) in &opt.extra {
        moments.insert(
            format!("extra.{name}"),
            Tensor::new(vec![v.len()], v.clone())?,
        );
    }
    write_safetensors(&tmp.join("optimizer.safetensors"), &moments, SaveDtype::F32)?;
    let mut st = serde_json::to_value(state).map_err(|e| Error::Input(e.to_string()))?;
    st["optimizer_step"] = opt.step.into();
    let text = serde_json::to_string_pretty(&st).map_err(|e| Error::Input(e.to_string()))?;
    checkpoint::atomic_write(&tmp.join("trainer_state.json"), text.as_bytes())?;
    // A checkpoint of the same step (a stop right after a periodic save) is replaced.
    if final_dir.exists() {
        remove_checkpoint(&final_dir)?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(|e| Error::io("rename", &final_dir, e))?;
    let all = checkpoints(out);
    for old in all.iter().take(all.len().saturating_sub(keep_last)) {
        remove_checkpoint(old)?;
    }
    Ok(final_dir)
}

/// Deletes a checkpoint directory: first renamed to a temporary name, so a crash part-way
/// through the deletion leaves a temporary (removed by the next run), never a half-deleted
/// checkpoint under a final name.
fn remove_checkpoint(dir: &Path) -> Result<()> {
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    let doomed = dir.with_file_name(format!(".tmp-{name}-removed-{}", std::process::id()));
    std::fs::rename(dir, &doomed).map_err(|e| Error::io("rename", dir, e))?;
    std::fs::remove_dir_all(&doomed).map_err(|e| Error::io("remove", &doomed, e))
}

/// Loads the model, optimizer and state of a checkpoint directory.
pub fn load_checkpoint(dir: &Path) -> Result<(Pretrained, AdamW, TrainerState)> {
    let mut p = checkpoint::load(dir)?;
    let path = dir.join("trainer_state.json");
    let raw = checkpoint::read_json(&path)?;
    let state: TrainerState = serde_json::from_value(raw.clone()).map_err(|e| Error::Json {
        path: path.clone(),
        msg: e.to_string(),
    })?;
    let wd = state.config["weight_decay"].as_f64().unwrap_or(0.0) as f32;
    let mut opt = AdamW::new(wd);
    opt.step = raw
        .get("optimizer_step")
        .and_then(|v| v.as_u64())
        .unwrap_or(state.step);
    let store = WeightStore::open_files(&[dir.join("optimizer.safetensors")])?;
    if opt.step > 0 {
        let peft = p.peft.clone();
        for (name, t, _) in parameters(&mut p) {
            if !crate::peft::is_trainable(peft.as_ref(), &name) {
                continue;
            }
            let m = store.get(&format!("m.{name}"))?;
            let v = store.get(&format!("v.{name}"))?;
            if m.numel() != t.numel() || v.numel() != t.numel() {
                return Err(Error::TensorShape {
                    path: dir.join("optimizer.safetensors"),
                    name: format!("m.{name}"),
                    found: m.shape().to_vec(),
                    expected: vec![t.numel()],
                });
            }
            opt.moments.push((m.into_data(), v.into_data()));
        }
    }
    for name in store.names() {
        if let Some(key) = name.strip_prefix("extra.") {
            opt.extra
                .insert(key.to_string(), store.get(&name)?.into_data());
        }
    }
    Ok((p, opt, state))
}
