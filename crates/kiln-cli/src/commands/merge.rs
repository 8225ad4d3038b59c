//! `kiln merge`.

use anyhow::{Context, Result};
use std::path::PathBuf;

/// Fold a LoRA adapter into its base model's weights and save a plain transformers model.
#[derive(clap::Args)]
pub struct MergeArgs {
    /// The base model directory.
    #[arg(long)]
    model: PathBuf,
    /// The LoRA adapter directory.
    #[arg(long)]
    adapter: PathBuf,
    /// Output model directory.
    #[arg(long)]
    out: PathBuf,
}

pub fn merge(a: MergeArgs) -> Result<()> {
    let mut p = super::load(&a.model)?;
    kiln::peft::files::load_adapter(&mut p, &a.adapter, "default")?;
    kiln::peft::merge_and_unload(&mut p)?;
    kiln::checkpoint::save(&p, &a.out, kiln::checkpoint::SaveDtype::F32)
        .with_context(|| format!("cannot save {}", a.out.display()))?;
    eprintln!("merged model in {}", a.out.display());
    Ok(())
}
