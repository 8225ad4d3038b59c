//! `kiln generate`.

use crate::io::{read_lines, Output};
use anyhow::{bail, Context, Result};
use kiln::infer::{GenerateOptions, Generator, Strategy, TextStream};
use std::path::PathBuf;

/// Continue a prompt with a causal LM (a GPT-2 style model), using the KV cache. Text is
/// streamed as it is produced; beam search prints when its beams finish. Stops at EOS or the
/// model's position limit.
#[derive(clap::Args)]
pub struct Args {
    /// The model directory (a GPT2LMHeadModel checkpoint), or a hub id.
    #[arg(long)]
    model: PathBuf,
    /// The prompt (otherwise one prompt per line of --input or standard input).
    #[arg(long, conflicts_with = "input")]
    prompt: Option<String>,
    /// Input file, one prompt per line.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Most tokens to generate per prompt.
    #[arg(long, default_value_t = 50, value_name = "N")]
    max_new_tokens: usize,
    /// greedy, sample or beam.
    #[arg(long, default_value = "greedy", value_parser = ["greedy", "sample", "beam"])]
    strategy: String,
    /// Sampling temperature.
    #[arg(long, default_value_t = 1.0, value_name = "T")]
    temperature: f32,
    /// Sample only among the K most likely tokens (0: all).
    #[arg(long, default_value_t = 0, value_name = "K")]
    top_k: usize,
    /// Sample only among the most likely tokens whose probabilities sum to P.
    #[arg(long, default_value_t = 1.0, value_name = "P")]
    top_p: f32,
    /// Beams for --strategy beam.
    #[arg(long, default_value_t = 4, value_name = "B")]
    num_beams: usize,
    /// Beam-search length penalty (score / length^penalty).
    #[arg(long, default_value_t = 1.0)]
    length_penalty: f32,
    /// Random seed for sampling.
    #[arg(long, default_value_t = 0, value_name = "S")]
    seed: u64,
    /// Print {"prompt", "token_ids", "text"} per prompt instead of streaming text.
    #[arg(long)]
    json: bool,
}

/// Generates the continuation of one prompt: streamed text, or one JSON line with `json`.
fn continue_prompt(
    gen: &Generator,
    tok: &kiln::tokenize::Tokenizer,
    prompt: &str,
    opts: &GenerateOptions,
    json: bool,
    out: &mut Output,
) -> Result<()> {
    let ids = tok.encode_plain(prompt)?.ids;
    if json {
        let new = gen.generate(&ids, opts, |_| {})?;
        let text = tok.decode(&new, true)?;
        return out.line(
            &serde_json::json!({ "prompt": prompt, "token_ids": new, "text": text }).to_string(),
        );
    }
    out.bytes(prompt.as_bytes())?;
    out.flush()?;
    let mut stream = TextStream::new(tok);
    let mut err = None;
    gen.generate(&ids, opts, |t| match stream.push(t) {
        Ok(piece) if !piece.is_empty() => {
            if let Err(e) = out.bytes(piece.as_bytes()).and_then(|_| out.flush()) {
                err.get_or_insert(e);
            }
        }
        Ok(_) => {}
        Err(e) => {
            err.get_or_insert(e.into());
        }
    })?;
    if let Some(e) = err {
        return Err(e);
    }
    out.bytes(stream.finish()?.as_bytes())?;
    out.line("")
}

pub fn run(a: Args) -> Result<()> {
    let p = super::load(&a.model)?;
    let tok = p.tokenizer()?;
    let gen = Generator::new(&p)?;
    let strategy = match a.strategy.as_str() {
        "sample" => Strategy::Sample {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
        },
        "beam" => Strategy::Beam {
            num_beams: a.num_beams,
            length_penalty: a.length_penalty,
        },
        _ => Strategy::Greedy,
    };
    if a.max_new_tokens == 0 {
        bail!("--max-new-tokens must be at least 1");
    }
    let opts = GenerateOptions {
        max_new_tokens: a.max_new_tokens,
        strategy,
        seed: a.seed,
    };
    let (prompts, source) = match a.prompt {
        Some(pr) => (vec![pr], None),
        None => (
            read_lines(a.input.as_deref())?,
            Some(
                a.input
                    .as_ref()
                    .map_or("<stdin>".into(), |p| p.display().to_string()),
            ),
        ),
    };
    let mut out = Output::open(None)?;
    for (i, prompt) in prompts.iter().enumerate() {
        let where_ = || match &source {
            Some(name) => format!("{name} line {}", i + 1),
            None => "--prompt".into(),
        };
        continue_prompt(&gen, tok, prompt, &opts, a.json, &mut out).with_context(where_)?;
    }
    out.finish()
}
