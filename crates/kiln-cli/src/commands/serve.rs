//! `kiln serve`.

use anyhow::{bail, Result};
use kiln::serve::{ServeOptions, ServeTask};
use std::io::Write;
use std::path::PathBuf;

/// Serve a model over HTTP: TEI-compatible `/embed`, `/predict`, `/rerank`, `/tokenize`,
/// TGI-compatible `/generate` and `/generate_stream`, OpenAI's `/v1/completions`,
/// OpenAI's `/v1/embeddings`, and `/tag`, `/qa`, `/fill-mask`, with batching across requests.
#[derive(clap::Args)]
pub struct Args {
    /// The model directory, or a hub id.
    #[arg(long)]
    model: PathBuf,
    /// embed, classify, tag, qa, fill-mask or generate [default: what the model directory is: a
    /// sentence-transformers directory embeds, a sequence head classifies, a token head tags,
    /// a span head answers questions, a masked-LM head fills masks, a causal-LM head
    /// generates, a bare encoder embeds].
    #[arg(long, value_parser = ["embed", "classify", "tag", "qa", "fill-mask", "generate"])]
    task: Option<String>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0: any free port; the address is printed).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// An adapter (LoRA or bottleneck, PEFT layout) requests may name as "adapter": NAME;
    /// repeat as NAME=DIR for several. A single unnamed adapter is the default.
    #[arg(long = "adapter", value_name = "NAME=DIR")]
    adapter: Vec<String>,
    /// The adapter of requests that name none [default: the base model].
    #[arg(long, value_name = "NAME")]
    default_adapter: Option<String>,
    /// Tokens per forward pass of a batch shared by concurrent requests.
    #[arg(long, default_value_t = 16384, value_name = "N")]
    max_batch_tokens: usize,
    /// Requests held at once; beyond them the server answers 429.
    #[arg(long, default_value_t = 512, value_name = "N")]
    max_concurrent_requests: usize,
    /// Inputs per request.
    #[arg(long, default_value_t = 32, value_name = "N")]
    max_client_batch_size: usize,
    /// Tokens per input; longer ones are refused (413) unless the request sends
    /// "truncate": true [default: the model's max_seq_length or positions].
    #[arg(long, value_name = "N")]
    max_input_length: Option<usize>,
    /// Largest request body, in bytes.
    #[arg(long, default_value_t = 2_000_000, value_name = "BYTES")]
    payload_limit: usize,
    /// Seconds a request's body may take to arrive; a slower one is answered 408 and frees
    /// its place.
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    read_timeout: f64,
    /// Require `Authorization: Bearer KEY` on every request.
    #[arg(long, value_name = "KEY")]
    api_key: Option<String>,
    /// The model's name in /info and OpenAI answers [default: the directory's name].
    #[arg(long, value_name = "NAME")]
    model_id: Option<String>,
}

pub fn run(a: Args) -> Result<()> {
    let mut p = super::load(&a.model)?;
    let mut default_adapter = a.default_adapter.clone();
    for (i, spec) in a.adapter.iter().enumerate() {
        let (name, dir) = match spec.split_once('=') {
            Some((n, d)) if !n.is_empty() => (n.to_string(), PathBuf::from(d)),
            _ if a.adapter.len() == 1 => {
                default_adapter.get_or_insert_with(|| "default".into());
                ("default".to_string(), PathBuf::from(spec))
            }
            _ => bail!(
                "--adapter {spec}: name each of several adapters, as NAME=DIR (adapter {})",
                i + 1
            ),
        };
        kiln::peft::files::load_adapter(&mut p, &dir, &name)?;
    }
    if !(a.read_timeout > 0.0 && a.read_timeout.is_finite()) {
        bail!("--read-timeout must be a positive number of seconds");
    }
    if a.api_key.as_deref() == Some("") {
        bail!("--api-key cannot be empty");
    }
    let opts = ServeOptions {
        host: a.host,
        port: a.port,
        task: a.task.as_deref().map(str::parse::<ServeTask>).transpose()?,
        max_batch_tokens: a.max_batch_tokens,
        max_concurrent_requests: a.max_concurrent_requests,
        max_client_batch_size: a.max_client_batch_size,
        max_input_length: a.max_input_length,
        payload_limit: a.payload_limit,
        read_timeout: std::time::Duration::from_secs_f64(a.read_timeout),
        api_key: a.api_key,
        default_adapter,
        model_id: a.model_id,
    };
    let model = a.model.display().to_string();
    kiln::serve::serve(p, opts, |addr| {
        // Scripts and tests wait for this line to know the port.
        println!("kiln serve: {model} listening on http://{addr}");
        let _ = std::io::stdout().flush();
    })?;
    eprintln!("kiln serve: stopped");
    Ok(())
}
