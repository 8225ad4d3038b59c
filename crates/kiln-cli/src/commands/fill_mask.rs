//! `kiln fill-mask`.

use crate::io::{read_lines, Output};
use anyhow::{Context, Result};
use std::path::PathBuf;

/// For each input line, the most likely tokens at each [MASK] position, left to right.
#[derive(clap::Args)]
pub struct Args {
    /// The model directory (a BertForMaskedLM checkpoint), or a hub id.
    #[arg(long)]
    model: PathBuf,
    /// Candidates per mask.
    #[arg(long, default_value_t = 5, value_name = "K")]
    top_k: usize,
    /// Input file, one text per line (default: standard input).
    #[arg(long)]
    input: Option<PathBuf>,
    /// Output file (default: standard output).
    #[arg(long)]
    output: Option<PathBuf>,
}

#[derive(serde::Serialize)]
struct Row<'a> {
    text: &'a str,
    masks: Vec<Vec<kiln::infer::MaskPrediction>>,
}

pub fn run(a: Args) -> Result<()> {
    let p = super::load(&a.model)?;
    let tok = p.tokenizer()?;
    let mut out = Output::open(a.output.as_deref())?;
    let name = a
        .input
        .as_ref()
        .map_or("<stdin>".into(), |p| p.display().to_string());
    for (i, line) in read_lines(a.input.as_deref())?.into_iter().enumerate() {
        let masks = kiln::infer::fill_mask(&p, tok, &line, a.top_k)
            .with_context(|| format!("{name} line {}", i + 1))?;
        out.line(&serde_json::to_string(&Row { text: &line, masks })?)?;
    }
    out.finish()
}
