//! `kiln tokenizer train`.

use anyhow::{Context, Result};
use kiln::data::Corpus;
use kiln::tokenize::train::{train_tokenizer, TrainKind, TrainOptions};
use std::path::PathBuf;

/// Tokenizer commands.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Sub,
}

#[derive(clap::Subcommand)]
enum Sub {
    /// Train a tokenizer on text files and save it as a directory transformers loads
    /// (PreTrainedTokenizerFast).
    Train(TrainArgs),
}

#[derive(clap::Args)]
struct TrainArgs {
    /// Corpus files: plain text (one text per line) or JSONL (.jsonl/.json), optionally .gz.
    #[arg(long, num_args = 1.., required = true)]
    corpus: Vec<PathBuf>,
    /// JSONL field holding the text.
    #[arg(long, default_value = "text")]
    text_field: String,
    /// wordpiece (BERT: CJK characters split into single tokens), bpe (GPT-2 byte-level) or
    /// unigram (SentencePiece-style).
    #[arg(long, value_parser = ["wordpiece", "bpe", "unigram"])]
    kind: String,
    /// Vocabulary size, special tokens included.
    #[arg(long, value_name = "N")]
    vocab_size: usize,
    /// Lower-case text before tokenizing.
    #[arg(long)]
    lowercase: bool,
    /// Minimum frequency of a merge or word piece (wordpiece and bpe; unigram ignores it).
    #[arg(long, default_value_t = 2, value_name = "F")]
    min_frequency: u64,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    let Sub::Train(t) = a.command;
    let corpus = Corpus::new(t.corpus, &t.text_field)?;
    let opts = TrainOptions {
        kind: t.kind.parse::<TrainKind>()?,
        vocab_size: t.vocab_size,
        lowercase: t.lowercase,
        min_frequency: t.min_frequency,
        show_progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let tok = train_tokenizer(&corpus, &opts, &t.out)
        .with_context(|| format!("training into {}", t.out.display()))?;
    eprintln!(
        "trained a {} tokenizer with {} tokens -> {}",
        t.kind,
        tok.vocab_size(),
        t.out.display()
    );
    Ok(())
}
