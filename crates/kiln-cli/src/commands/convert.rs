//! `kiln convert`.

use anyhow::{Context, Result};
use kiln::checkpoint::SaveDtype;
use std::path::PathBuf;

/// Load a model directory (any accepted naming: legacy, prefix-less, sharded, f16/bf16, Kiln's
/// int8) and save it as a standard transformers directory, optionally in another dtype. An int8
/// model is written dequantized: the f32 weights its int8 values stand for.
#[derive(clap::Args)]
pub struct Args {
    /// The model directory to read, or a hub id (org/name: from the hub cache or downloaded).
    #[arg(long)]
    model: PathBuf,
    /// The directory to write (created if needed).
    #[arg(long)]
    out: PathBuf,
    /// Stored dtype of the weights: f32, f16 or bf16.
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "bf16"])]
    dtype: String,
    /// Pad a pruned model back to the standard shape (removed heads and neurons as zeros, the
    /// outputs unchanged), so transformers loads it.
    #[arg(long)]
    dense: bool,
}

pub fn run(a: Args) -> Result<()> {
    let mut p = super::load(&a.model)?;
    kiln::compress::dequantize(&mut p);
    if a.dense {
        kiln::compress::prune::densify(&mut p)?;
    } else if p.config().is_pruned() {
        eprintln!("note: the model is pruned (per-layer sizes in config.json); give --dense for a directory transformers loads");
    }
    let dtype = match a.dtype.as_str() {
        "f16" => SaveDtype::F16,
        "bf16" => SaveDtype::BF16,
        _ => SaveDtype::F32,
    };
    kiln::checkpoint::save(&p, &a.out, dtype)
        .with_context(|| format!("cannot save to {}", a.out.display()))?;
    eprintln!(
        "saved {} to {}",
        kiln::checkpoint::save::architecture_name(&p),
        a.out.display()
    );
    Ok(())
}
