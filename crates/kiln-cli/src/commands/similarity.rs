//! `kiln similarity`.

use crate::io::read_lines;
use anyhow::{bail, Result};
use kiln::infer::similarity::{similarity_matrix, word_vectors, write_csv, write_heatmap};
use std::path::PathBuf;

/// One word, many contexts: the contextual vector of WORD in each sentence (mean over its word
/// pieces; a Chinese word over its characters), their cosine-similarity matrix, a labelled
/// heatmap PNG and optionally the CSV matrix.
#[derive(clap::Args)]
pub struct Args {
    /// The model directory, or a hub id.
    #[arg(long)]
    model: PathBuf,
    /// The word to compare across sentences.
    #[arg(long)]
    word: String,
    /// Sentences, one per line; each must contain WORD (default: standard input).
    #[arg(long)]
    input: Option<PathBuf>,
    /// Heatmap PNG to write.
    #[arg(long)]
    output: PathBuf,
    /// Also write the similarity matrix as CSV.
    #[arg(long, value_name = "F.csv")]
    matrix: Option<PathBuf>,
    /// Truncate sentences to N tokens.
    #[arg(long, default_value_t = 256, value_name = "N")]
    max_length: usize,
    /// The layer whose states are compared: `last` (the model's output), a number (0 = the
    /// embeddings, N = the N-th layer's output; an LSTM's forward and backward states of that
    /// layer side by side) or `mean` (every layer averaged, ELMo's unweighted mix).
    #[arg(long, default_value = "last")]
    layer: kiln::infer::embed::Layer,
}

pub fn run(a: Args) -> Result<()> {
    let p = super::load(&a.model)?;
    let sentences: Vec<String> = read_lines(a.input.as_deref())?
        .into_iter()
        .filter(|l| !l.trim().is_empty())
        .collect();
    if sentences.len() < 2 {
        bail!("need at least two sentences containing \"{}\"", a.word);
    }
    let occ = word_vectors(&p, &a.word, &sentences, a.max_length, a.layer)?;
    let m = similarity_matrix(&occ);
    write_heatmap(&a.output, &a.word, &occ, &m)?;
    if let Some(csv) = &a.matrix {
        write_csv(csv, &occ, &m)?;
    }
    eprintln!("wrote {} ({} sentences)", a.output.display(), occ.len());
    Ok(())
}
