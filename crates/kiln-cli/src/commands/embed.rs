//! `kiln embed`.

use crate::io::{check_finite, count_lines, LineBlocks, Output};
use crate::progress::Items;
use anyhow::{bail, Result};
use kiln::checkpoint::sentence::Pooling;
use kiln::infer::{EmbedOptions, Embedder};
use std::path::PathBuf;

/// Sentence embeddings. Defaults come from a sentence-transformers directory (pooling,
/// normalization, max_seq_length); otherwise mean pooling, no normalization.
#[derive(clap::Args)]
pub struct Args {
    /// The model directory, or a hub id (org/name: from the hub cache or downloaded).
    #[arg(long)]
    model: PathBuf,
    /// How token vectors become one vector: mean, cls or max.
    #[arg(long, value_parser = ["mean", "cls", "max"])]
    pooling: Option<String>,
    /// L2-normalize each embedding (default: as the model directory says).
    #[arg(long)]
    normalize: bool,
    /// Do not normalize even if the model directory has a Normalize module.
    #[arg(long, conflicts_with = "normalize")]
    no_normalize: bool,
    /// Truncate each sentence to N tokens (default: the model's max_seq_length).
    #[arg(long, value_name = "N")]
    max_length: Option<usize>,
    /// Sentences per forward pass.
    #[arg(long, default_value_t = 32, value_name = "N")]
    batch_size: usize,
    /// The layer whose token states are pooled: `last` (the model's output), a number (0 = the
    /// embeddings) or `mean` (every layer averaged, ELMo's unweighted mix).
    #[arg(long, default_value = "last")]
    layer: kiln::infer::embed::Layer,
    /// Input file, one sentence per line (default: standard input).
    #[arg(long)]
    input: Option<PathBuf>,
    /// Output file (default: standard output).
    #[arg(long)]
    output: Option<PathBuf>,
    /// jsonl: one {"embedding": [...]} per line; npy: one float32 [n, dim] array.
    #[arg(long, default_value = "jsonl", value_parser = ["jsonl", "npy"])]
    format: String,
}

pub fn run(a: Args) -> Result<()> {
    let p = super::load(&a.model)?;
    let mut opts = EmbedOptions::defaults_for(&p);
    if let Some(s) = &a.pooling {
        opts.pooling = s.parse::<Pooling>()?;
    }
    if a.normalize {
        opts.normalize = true;
    }
    if a.no_normalize {
        opts.normalize = false;
    }
    if let Some(m) = a.max_length {
        opts.max_length = m;
    }
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    opts.batch_size = a.batch_size;
    opts.layer = a.layer;
    let embedder = Embedder::new(&p, opts)?;
    let mut input = LineBlocks::open(a.input.as_deref())?;
    let bar = Items::new(count_lines(a.input.as_deref()), "lines");
    let mut out = Output::open(a.output.as_deref())?;
    if a.format == "npy" {
        // The .npy header needs the row count up front, so vectors are collected first.
        let mut vecs = Vec::new();
        loop {
            let block = input.next_block(1024)?;
            if block.is_empty() {
                break;
            }
            let texts: Vec<&str> = block.iter().map(String::as_str).collect();
            let first = input.line_no() + 1 - block.len();
            for (i, v) in embedder.embed(&texts)?.into_iter().enumerate() {
                check_finite(&v, input.name(), first + i)?;
                vecs.push(v);
            }
            bar.inc(block.len());
        }
        out.bytes(&npy_f32(&vecs, embedder.dim()))?;
    } else {
        // Streamed in blocks: large inputs never hold every line or vector at once.
        loop {
            let block = input.next_block(1024)?;
            if block.is_empty() {
                break;
            }
            let texts: Vec<&str> = block.iter().map(String::as_str).collect();
            let first = input.line_no() + 1 - block.len();
            for (i, v) in embedder.embed(&texts)?.into_iter().enumerate() {
                check_finite(&v, input.name(), first + i)?;
                // Serializing the f32 slice directly keeps the shortest f32 decimal form.
                out.line(&serde_json::to_string(&Row { embedding: &v })?)?;
            }
            bar.inc(block.len());
        }
    }
    out.finish()
}

#[derive(serde::Serialize)]
struct Row<'a> {
    embedding: &'a [f32],
}

/// A NumPy `.npy` (version 1.0) float32 array `[rows, dim]`.
fn npy_f32(rows: &[Vec<f32>], dim: usize) -> Vec<u8> {
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {dim}), }}",
        rows.len()
    );
    // Pad so the data starts on a 64-byte boundary, ending with a newline (the format's rule).
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + rows.len() * dim * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for r in rows {
        for v in r {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}
