//! `kiln prune`.

use super::finetune::DataArgs;
use anyhow::{bail, Context, Result};
use kiln::compress::prune::{data_scores, magnitude_scores, prune, Importance, PruneOptions};
use std::path::PathBuf;

/// Structured pruning: remove the least important attention heads (--heads F, a fraction of
/// all heads), feed-forward neurons (--ffn F) and whole blocks (--drop-layers). The matrices
/// really shrink, each block keeping its own head count and width (recorded in config.json:
/// docs/compression.md), so the model runs faster in every command. Importance comes from data
/// (--data FILE with the model's task: |d loss / d mask| of each head and neuron, Michel et
/// al. 2019) or from weight norms (--importance magnitude). Recover the accuracy with `kiln
/// finetune` on the result; `kiln convert --dense` pads it back to the standard shape for
/// transformers.
#[derive(clap::Args)]
pub struct Args {
    /// The model directory to prune, or a hub id.
    #[arg(long)]
    model: PathBuf,
    /// The directory to write (a new model directory).
    #[arg(long)]
    out: PathBuf,
    /// Fraction of all attention heads to remove (every layer keeps one) [default: 0].
    #[arg(long, default_value_t = 0.0)]
    heads: f32,
    /// Fraction of all feed-forward neurons to remove [default: 0].
    #[arg(long, default_value_t = 0.0)]
    ffn: f32,
    /// Comma-separated blocks to remove (0-based).
    #[arg(long, value_delimiter = ',')]
    drop_layers: Vec<usize>,
    /// data (needs --data) or magnitude [default: data with --data, else magnitude].
    #[arg(long, value_parser = ["data", "magnitude"])]
    importance: Option<String>,
    /// Labelled data of the model's task to measure importance on (JSONL, CSV, TSV, CoNLL).
    #[arg(long)]
    data: Option<PathBuf>,
    /// The task of --data: classify, tag or qa [default: the model's head].
    #[arg(long)]
    task: Option<String>,
    /// Examples of --data used (the first ones) [default: 2048].
    #[arg(long, default_value_t = 2048)]
    data_examples: usize,
    /// Examples per backward pass while measuring [default: 32].
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Label names in id order (as finetune's --labels) [default: the model's].
    #[arg(long)]
    labels: Option<PathBuf>,
    #[command(flatten)]
    fields: DataArgs,
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
    let importance = match (a.importance.as_deref(), &a.data) {
        (Some("data"), None) => {
            bail!("--importance data needs --data FILE (labelled data of the model's task)")
        }
        (Some("magnitude"), _) | (None, None) => Importance::Magnitude,
        _ => Importance::Data,
    };
    let scores = match importance {
        Importance::Magnitude => magnitude_scores(&p)?,
        Importance::Data => {
            let data = a.data.as_ref().context("--data")?;
            let task = match (&a.task, p.task.as_ref().map(|t| t.kind)) {
                (Some(t), _) => t.clone(),
                (None, Some(kiln::heads::HeadKind::Token)) => "tag".into(),
                (None, Some(kiln::heads::HeadKind::Span)) => "qa".into(),
                _ => "classify".into(),
            };
            let mut c = kiln::train::FinetuneConfig {
                task,
                ..Default::default()
            };
            a.fields.apply(&mut c);
            if let Some(m) = a.fields.max_length() {
                c.max_length = m;
            } else if c.task == "qa" {
                c.max_length = 384;
            }
            c.labels = a.labels.clone();
            c.train.batch_size = a.batch_size;
            c.train_file = data.clone();
            let records = if c.task == "qa" {
                kiln::train::qa::read_qa_data(data, c.skip_invalid)?
            } else {
                kiln::train::classify::read_data(data, c.skip_invalid)?
            };
            data_scores(&mut p, &c, &records.records, a.data_examples)
                .with_context(|| format!("measuring importance on {}", data.display()))?
        }
    };
    let opts = PruneOptions {
        heads: a.heads,
        ffn: a.ffn,
        drop_layers: a.drop_layers.clone(),
    };
    let r = prune(&mut p, &scores, &opts)?;
    for (l, (h, f)) in r.heads.iter().zip(&r.ffn).enumerate() {
        eprintln!("layer {l}: {h} heads, {f} feed-forward neurons");
    }
    kiln::checkpoint::save(&p, &a.out, kiln::checkpoint::SaveDtype::F32)
        .with_context(|| format!("cannot save to {}", a.out.display()))?;
    eprintln!(
        "parameters (base model) {} -> {} ({:.1} %), importance from {}; model in {}",
        r.parameters.0,
        r.parameters.1,
        100.0 * r.parameters.1 as f64 / r.parameters.0.max(1) as f64,
        match importance {
            Importance::Data => "data",
            Importance::Magnitude => "weight magnitudes",
        },
        a.out.display()
    );
    Ok(())
}
