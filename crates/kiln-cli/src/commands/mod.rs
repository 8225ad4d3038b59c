//! One file per subcommand.

pub mod convert;
pub mod distill;
pub mod embed;
pub mod fill_mask;
pub mod finetune;
pub mod generate;
pub mod info;
pub mod init;
pub mod merge;
pub mod plot;
pub mod predict;
pub mod pretrain;
pub mod prune;
pub mod quantize;
pub mod serve;
pub mod similarity;
pub mod tokenizer;
pub mod train_args;

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// Loads `--model`: a model directory, or a hub id (from the local hub cache, or downloaded).
pub fn load(model: &Path) -> Result<kiln::checkpoint::Pretrained> {
    let dir = resolve(model)?;
    kiln::checkpoint::load(&dir).with_context(|| format!("cannot load model {}", model.display()))
}

/// The local directory of `--model` (a hub id is looked up or downloaded).
pub fn resolve(model: &Path) -> Result<PathBuf> {
    Ok(kiln::checkpoint::hub::resolve(model)?)
}
