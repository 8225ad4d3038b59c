//! `kiln init`.

use anyhow::{bail, Context, Result};
use kiln::model::init::{new_config, random_model, InitShape};
use kiln::model::Arch;
use std::path::PathBuf;

/// Create a new model with random weights (initialized as transformers does) for a tokenizer,
/// ready for `kiln pretrain`. Sizes follow the BERT miniatures: tiny L2/H128, mini L4/H256,
/// small L4/H512, medium L8/H512, base L12/H768, with heads = H/64 and FFN = 4H. An LSTM
/// (`--arch lstm`) has two layers of cell width / projection: tiny 256/128, mini 512/256,
/// small 1024/512, medium 2048/512, base 4096/512 (ELMo's).
#[derive(clap::Args)]
pub struct Args {
    /// bert, roberta, distilbert, electra or albert (masked-LM encoders), gpt2 (causal-LM
    /// decoder) or lstm (an LSTM language model; ELMo's biLM with --bidirectional).
    #[arg(long, value_parser = ["bert", "roberta", "distilbert", "electra", "albert", "gpt2", "lstm"])]
    arch: String,
    /// tiny, mini, small, medium or base.
    #[arg(long, default_value = "mini", value_parser = ["tiny", "mini", "small", "medium", "base"])]
    size: String,
    /// Override the number of blocks.
    #[arg(long)]
    layers: Option<usize>,
    /// Override the hidden width (an LSTM's cell width).
    #[arg(long)]
    hidden: Option<usize>,
    /// LSTM: the embedding width, to which every layer's output is projected.
    #[arg(long)]
    proj: Option<usize>,
    /// LSTM: a backward stack beside the forward one (ELMo's bidirectional LM, trained with
    /// `pretrain --objective bilm`); without it a next-token LSTM (`--objective clm`).
    #[arg(long)]
    bidirectional: bool,
    /// Override the number of attention heads.
    #[arg(long)]
    heads: Option<usize>,
    /// Override the feed-forward width.
    #[arg(long)]
    intermediate: Option<usize>,
    /// Override the number of learned positions (default 512).
    #[arg(long)]
    max_positions: Option<usize>,
    /// ELECTRA and ALBERT: width of the embedding tables, projected up to the hidden width
    /// (default: ELECTRA the hidden width, no projection; ALBERT 128 or the hidden width if
    /// smaller).
    #[arg(long)]
    embedding_size: Option<usize>,
    /// Tokenizer directory (e.g. from `kiln tokenizer train`); sets the vocabulary size.
    #[arg(long)]
    tokenizer: PathBuf,
    /// Random seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Output model directory.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    let name = if a.arch == "lstm" {
        "kiln_lstm"
    } else {
        &a.arch
    };
    let arch = Arch::from_model_type(name).ok_or_else(|| {
        anyhow::anyhow!("--arch {}: one of {}", a.arch, Arch::supported().join(", "))
    })?;
    let Some(tok) = kiln::tokenize::Tokenizer::from_dir(&a.tokenizer)? else {
        bail!(
            "no tokenizer in {} (expected tokenizer.json, vocab.txt, or vocab.json + merges.txt)",
            a.tokenizer.display()
        );
    };
    let shape = InitShape {
        layers: a.layers,
        hidden: a.hidden,
        heads: a.heads,
        intermediate: a.intermediate,
        max_positions: a.max_positions,
        embedding_size: a.embedding_size,
        proj: a.proj,
        bidirectional: a.bidirectional,
    };
    let cfg = new_config(arch, &a.size, &shape, &tok)?;
    // The size beside a BERT of the same depth and width, for the variants.
    let bert = (arch != Arch::Bert && arch.is_encoder())
        .then(|| {
            let same = InitShape {
                embedding_size: None,
                ..shape.clone()
            };
            new_config(Arch::Bert, &a.size, &same, &tok)
        })
        .transpose()?
        .map(|b| b.parameter_count());
    let p = random_model(cfg, tok, a.tokenizer.clone(), a.seed)?;
    kiln::checkpoint::save(&p, &a.out, kiln::checkpoint::SaveDtype::F32)
        .with_context(|| format!("cannot save to {}", a.out.display()))?;
    let c = p.config();
    if let Some(l) = &c.lstm {
        eprintln!(
            "initialized {} ({} LSTM, {} layers, cell {}, projection {}, vocab {}) -> {}",
            kiln::checkpoint::save::architecture_name(&p),
            if l.bidirectional {
                "bidirectional"
            } else {
                "one-directional"
            },
            l.layers,
            l.hidden,
            l.proj,
            c.vocab_size,
            a.out.display()
        );
        eprintln!("parameters: {}", c.parameter_count());
        return Ok(());
    }
    eprintln!(
        "initialized {} (L{}/H{}, {} heads, FFN {}, vocab {}) -> {}",
        kiln::checkpoint::save::architecture_name(&p),
        c.num_layers,
        c.hidden_size,
        c.num_heads,
        c.intermediate_size,
        c.vocab_size,
        a.out.display()
    );
    match bert {
        Some(b) => eprintln!(
            "parameters: {} (a BERT of the same depth and width: {b})",
            c.parameter_count()
        ),
        None => eprintln!("parameters: {}", c.parameter_count()),
    }
    Ok(())
}
