//! The `kiln` command: parses flags and calls the library.

mod commands;
mod io;
mod progress;

use clap::{Parser, Subcommand};

/// Kiln: pre-train, fine-tune, compress and run transformer language models on the CPU.
///
/// Models are Hugging Face directories (config.json, model.safetensors, tokenizer.json).
/// Commands that read items take one per line from --input FILE or standard input and write
/// JSON lines.
#[derive(Parser)]
#[command(name = "kiln", version, about, long_about = None)]
struct Cli {
    /// Worker threads for all kernels (default: every core).
    #[arg(long, global = true, value_name = "N")]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Describe a model directory: architecture, sizes, parameters, bytes on disk, tokenizer.
    Info(commands::info::Args),
    /// Sentence embeddings, one JSON line (or npy row) per input line.
    Embed(commands::embed::Args),
    /// Predict the tokens behind each [MASK] with a masked-LM model.
    FillMask(commands::fill_mask::Args),
    /// Continue a prompt with a causal LM (greedy, sampling or beam search).
    Generate(commands::generate::Args),
    /// Train a tokenizer (wordpiece, bpe or unigram) on text files.
    Tokenizer(commands::tokenizer::Args),
    /// Create a new BERT or GPT-2 model with random weights for a tokenizer.
    Init(commands::init::Args),
    /// Pre-train a model on raw text (masked LM or next-token), with checkpoints and resume.
    Pretrain(Box<commands::pretrain::Args>),
    /// Fine-tune a pretrained model on labelled data: classify, tag, qa or seq2seq (full, LoRA or adapters).
    Finetune(Box<commands::finetune::Args>),
    /// Distil a fine-tuned teacher into a smaller student (classify, tag, qa).
    Distill(Box<commands::distill::Args>),
    /// Score a fine-tuned model on labelled data with the task's metrics.
    Eval(commands::predict::EvalArgs),
    /// Predict with a fine-tuned model, one JSON line per input line.
    Predict(commands::predict::PredictArgs),
    /// Fold a LoRA adapter into its base model and save a plain transformers model directory.
    Merge(commands::merge::MergeArgs),
    /// Quantize a model to int8 (linear layers of the blocks; per-channel weights).
    Quantize(commands::quantize::Args),
    /// Remove the least important attention heads, feed-forward neurons or blocks.
    Prune(commands::prune::Args),
    /// Draw training/validation loss curves from metrics.jsonl files into a PNG.
    Plot(commands::plot::Args),
    /// Re-save a model directory in transformers' standard layout (and dtype).
    Convert(commands::convert::Args),
    /// Serve a model over HTTP (TEI- and OpenAI-compatible routes, batching across requests).
    Serve(Box<commands::serve::Args>),
    /// Contextual similarity of one word across sentences: heatmap PNG and CSV matrix.
    Similarity(commands::similarity::Args),
}

fn main() {
    let cli = Cli::parse();
    if !matches!(
        cli.command,
        Command::Pretrain(_) | Command::Finetune(_) | Command::Distill(_) | Command::Serve(_)
    ) {
        // Output piped into `head` and the like: a closed pipe ends the command quietly, as it
        // does other Unix tools. Training keeps Rust's default (a write error), so a closed
        // log pipe never kills a run before it checkpoints, nor a client hanging up the server.
        // SAFETY: restoring the default disposition of one signal before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let training = matches!(
        cli.command,
        Command::Pretrain(_) | Command::Finetune(_) | Command::Distill(_)
    );
    let mut threads = cli.threads;
    if training {
        // Under mpirun: the MPI world; the ranks on one machine share its cores.
        if let Err(e) = kiln::train::distributed::init() {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
        let local = kiln::train::distributed::local_ranks();
        if threads.is_none() && local > 1 {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            threads = Some((cores / local).max(1));
        }
    }
    kiln::engine::par::init_threads(threads);
    let result = match cli.command {
        Command::Info(a) => commands::info::run(a),
        Command::Embed(a) => commands::embed::run(a),
        Command::FillMask(a) => commands::fill_mask::run(a),
        Command::Generate(a) => commands::generate::run(a),
        Command::Similarity(a) => commands::similarity::run(a),
        Command::Serve(a) => commands::serve::run(*a),
        Command::Convert(a) => commands::convert::run(a),
        Command::Quantize(a) => commands::quantize::run(a),
        Command::Prune(a) => commands::prune::run(a),
        Command::Tokenizer(a) => commands::tokenizer::run(a),
        Command::Init(a) => commands::init::run(a),
        Command::Pretrain(a) => commands::pretrain::run(*a),
        Command::Plot(a) => commands::plot::run(a),
        Command::Finetune(a) => commands::finetune::run(*a),
        Command::Distill(a) => commands::distill::run(*a),
        Command::Eval(a) => commands::predict::eval(a),
        Command::Predict(a) => commands::predict::predict(a),
        Command::Merge(a) => commands::merge::merge(a),
    };
    if let Err(e) = result {
        let world = kiln::train::distributed::world();
        if world.is_distributed() {
            // One rank's failure ends them all at once, naming it.
            eprintln!("error (rank {} of {}): {e:#}", world.rank(), world.size());
            world.abort(1);
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
    kiln::train::distributed::finish();
}
