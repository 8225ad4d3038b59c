//! `kiln quantize`.

use anyhow::{bail, Context, Result};
use kiln::compress::{quantize, QuantizeOptions};
use std::path::PathBuf;

/// Quantize a model to int8: every linear layer of the transformer blocks int8 with a scale per
/// output channel, activations quantized per token row at run time, int32 accumulation; the
/// word embeddings int8 with a scale per row (a tied output projection runs in int8 too).
/// Position embeddings, layer norms, the pooler and task heads stay f32. The output is a model
/// directory every command runs (docs/quantization.md); `kiln convert` turns it back into f32.
#[derive(clap::Args)]
pub struct Args {
    /// The model directory to quantize, or a hub id.
    #[arg(long)]
    model: PathBuf,
    /// The directory to write (a new model directory).
    #[arg(long)]
    out: PathBuf,
    /// Comma-separated module names to keep in f32, matched as --lora-targets are (a name
    /// selects every module whose full name equals it or ends with .name); the word embeddings
    /// are word_embeddings (BERT) or wte (GPT-2).
    #[arg(long, value_delimiter = ',')]
    keep_f32: Vec<String>,
}

pub fn run(a: Args) -> Result<()> {
    let dir = super::resolve(&a.model)?;
    if a.out.exists() && a.out.canonicalize().ok() == dir.canonicalize().ok() {
        bail!(
            "--out {} is the --model directory; choose another",
            a.out.display()
        );
    }
    let mut p = super::load(&a.model)?;
    let opts = QuantizeOptions {
        keep_f32: a.keep_f32.iter().map(|s| s.trim().to_string()).collect(),
    };
    let report = quantize(&mut p, &opts)?;
    for r in &report {
        let name = r.modules.join(" + ");
        if r.int8 {
            eprintln!(
                "int8  {name}  (weight error {:.2} %)",
                100.0 * r.weight_error
            );
        } else {
            eprintln!("f32   {name}  (--keep-f32)");
        }
    }
    kiln::checkpoint::save(&p, &a.out, kiln::checkpoint::SaveDtype::F32)
        .with_context(|| format!("cannot save to {}", a.out.display()))?;
    let bytes =
        |d: &std::path::Path| std::fs::metadata(d.join("model.safetensors")).map_or(0, |m| m.len());
    let (before, after) = (bytes(&dir), bytes(&a.out));
    eprintln!(
        "{} of {} layers int8 (block linear layers and word embeddings); model.safetensors {:.1} MB -> {:.1} MB; model in {}",
        report.iter().filter(|r| r.int8).count(),
        report.len(),
        before as f64 / 1e6,
        after as f64 / 1e6,
        a.out.display()
    );
    Ok(())
}
