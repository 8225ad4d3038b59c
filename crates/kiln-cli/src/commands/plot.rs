//! `kiln plot`.

use anyhow::{Context, Result};
use std::path::PathBuf;

/// Draw training and validation loss curves from metrics.jsonl files (one or more runs).
#[derive(clap::Args)]
pub struct Args {
    /// metrics.jsonl files written by `kiln pretrain` / `kiln finetune`.
    #[arg(required = true)]
    metrics: Vec<PathBuf>,
    /// The PNG to write.
    #[arg(long)]
    output: PathBuf,
    /// Title of the picture.
    #[arg(long, default_value = "Training curves")]
    title: String,
}

pub fn run(a: Args) -> Result<()> {
    let mut series = Vec::new();
    for m in &a.metrics {
        // Several runs: label each by its directory name.
        let label = if a.metrics.len() > 1 {
            m.parent()
                .and_then(|d| d.file_name())
                .map_or(m.display().to_string(), |n| n.to_string_lossy().into())
        } else {
            String::new()
        };
        series.extend(kiln::plot::read_metrics(m, &label)?);
    }
    kiln::plot::write_curves(&a.output, &a.title, &series)
        .with_context(|| format!("writing {}", a.output.display()))?;
    eprintln!("wrote {}", a.output.display());
    Ok(())
}
