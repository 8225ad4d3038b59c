//! One file per subcommand.

pub mod convert;
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
pub mod similarity;
pub mod tokenizer;
pub mod train_args;

use anyhow::{Context, Result};
use std::path::Path;

/// Loads a model directory with the path in the error.
pub fn load(dir: &Path) -> Result<kiln::checkpoint::Pretrained> {
    kiln::checkpoint::load(dir).with_context(|| format!("cannot load model {}", dir.display()))
}
