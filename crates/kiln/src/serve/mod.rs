//! `kiln serve`: an HTTP server for a model — text-embeddings-inference's routes (`/embed`,
//! `/predict`, `/rerank`, `/tokenize`, `/info`, `/health`, `/metrics`) and OpenAI's
//! `/v1/embeddings` in their request and response shapes, plus `/tag`, `/qa` and `/fill-mask`
//! answering as `kiln predict` and `kiln fill-mask` do; for a causal LM, text-generation-
//! inference's `/generate` and `/generate_stream` (server-sent events) and OpenAI's
//! `/v1/completions`, with continuous batching of the decoding steps.
//!
//! The HTTP side runs on tokio and axum; tokenization happens in the handlers; the model
//! runs on one inference thread ([`batcher`]) that packs the inputs of concurrent requests
//! into shared batches by a token budget. Requests beyond `--max-concurrent-requests` are
//! answered 429 at once, so memory stays bounded under any load. SIGINT or SIGTERM stops
//! accepting, finishes what is in flight and returns.

pub mod batcher;
pub mod error;
pub mod metrics;
pub mod request;
mod routes;
pub mod task;

pub use error::ApiError;
pub use task::ServeTask;

use crate::checkpoint::Pretrained;
use crate::error::{Error, Result};
use crate::heads::Labels;
use crate::infer::EmbedOptions;
use crate::peft::AdapterSwitch;
use crate::tokenize::{Tokenizer, Truncation};
use batcher::{EncodeKind, Queue};
use metrics::Metrics;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Server settings: `kiln serve`'s flags.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Address to listen on.
    pub host: String,
    /// Port (0: any free port; the bound address is reported to `on_ready`).
    pub port: u16,
    /// The task, when not the model directory's own.
    pub task: Option<ServeTask>,
    /// Tokens per forward pass of a shared batch.
    pub max_batch_tokens: usize,
    /// Requests held at once; more are answered 429.
    pub max_concurrent_requests: usize,
    /// Inputs per request.
    pub max_client_batch_size: usize,
    /// Tokens per input (default: the model's `max_seq_length` or position limit); longer
    /// inputs are refused (413) unless the request asks to truncate.
    pub max_input_length: Option<usize>,
    /// Request body bytes.
    pub payload_limit: usize,
    /// Time a request's body may take to arrive (408 after it).
    pub read_timeout: std::time::Duration,
    /// When set, every request must carry `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// The adapter of requests that name none (default: the bare base model).
    pub default_adapter: Option<String>,
    /// The model's name in `/info` and OpenAI answers (default: the directory's name).
    pub model_id: Option<String>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            host: "127.0.0.1".into(),
            port: 8080,
            task: None,
            max_batch_tokens: 16384,
            max_concurrent_requests: 512,
            max_client_batch_size: 32,
            max_input_length: None,
            payload_limit: 2_000_000,
            read_timeout: std::time::Duration::from_secs(30),
            api_key: None,
            default_adapter: None,
            model_id: None,
        }
    }
}

/// A classifier's outputs, per adapter (adapters carry their own heads).
#[derive(Clone, Debug)]
pub(crate) struct HeadInfo {
    pub labels: Labels,
    pub outputs: usize,
}

/// What the handlers share.
pub(crate) struct AppState {
    pub opts: ServeOptions,
    pub task: ServeTask,
    pub model_id: String,
    pub model_type: String,
    /// The tokenizer without truncation (to measure inputs) and with it (`"truncate": true`).
    pub whole: Tokenizer,
    pub cut: Tokenizer,
    pub max_input: usize,
    pub vocab_size: usize,
    pub pooling: Option<crate::checkpoint::sentence::Pooling>,
    pub queue: Arc<Queue>,
    pub metrics: Arc<Metrics>,
    pub alive: Arc<AtomicBool>,
    pub limiter: Arc<tokio::sync::Semaphore>,
    /// Loaded adapters, sorted.
    pub adapters: Vec<String>,
    /// Sequence heads by adapter (`None`: the base model), for the classify task.
    pub heads: HashMap<Option<String>, HeadInfo>,
    /// The end-of-text token of a generating model.
    pub eos: Option<u32>,
    /// Numbers OpenAI completion ids.
    pub completions: std::sync::atomic::AtomicU64,
}

/// Serves `model` until SIGINT or SIGTERM. `on_ready` gets the bound address once the server
/// accepts connections.
pub fn serve(
    model: Pretrained,
    opts: ServeOptions,
    on_ready: impl FnOnce(SocketAddr),
) -> Result<()> {
    serve_until(model, opts, on_ready, shutdown_signal())
}

/// Serves `model` until `shutdown` completes, then stops accepting, finishes the requests in
/// flight and returns.
pub fn serve_until(
    mut model: Pretrained,
    opts: ServeOptions,
    on_ready: impl FnOnce(SocketAddr),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    for (flag, v) in [
        ("--max-batch-tokens", opts.max_batch_tokens),
        ("--max-concurrent-requests", opts.max_concurrent_requests),
        ("--max-client-batch-size", opts.max_client_batch_size),
        ("--payload-limit", opts.payload_limit),
        ("--read-timeout", opts.read_timeout.as_millis() as usize),
    ] {
        if v == 0 {
            return Err(Error::Input(format!("{flag} must be at least 1")));
        }
    }
    let task = match opts.task {
        Some(t) => t,
        None => ServeTask::of_model(&model)?,
    };
    let (adapters, switch, heads) = check_adapters(&mut model, task, &opts)?;
    let max_pos = model.config().max_positions;
    let embed_defaults = EmbedOptions::defaults_for(&model);
    let max_input = match opts.max_input_length {
        Some(0) => return Err(Error::Input("--max-input-length must be at least 1".into())),
        Some(n) if n > max_pos => {
            return Err(Error::Input(format!(
                "--max-input-length {n} exceeds the model's {max_pos} positions"
            )))
        }
        Some(n) => n,
        None if task == ServeTask::Embed => embed_defaults.max_length,
        // A prompt leaves room for at least one new token.
        None if task == ServeTask::Generate => max_pos.saturating_sub(1).max(1),
        None => max_pos,
    };
    let mut whole = model.tokenizer()?.clone();
    whole.set_truncation(None, Truncation::LongestFirst)?;
    let mut cut = whole.clone();
    cut.set_truncation(Some(max_input), Truncation::LongestFirst)?;
    let model_id = opts.model_id.clone().unwrap_or_else(|| {
        model.dir.file_name().map_or_else(
            || model.dir.display().to_string(),
            |n| n.to_string_lossy().into(),
        )
    });
    let metrics = Arc::new(Metrics::new());
    let queue = Arc::new(Queue::new(metrics.clone()));
    let alive = Arc::new(AtomicBool::new(true));
    let kind = match task {
        ServeTask::Embed => EncodeKind::Pool(embed_defaults.pooling),
        ServeTask::Generate => EncodeKind::Generate,
        _ => EncodeKind::Logits,
    };
    let state = Arc::new(AppState {
        task,
        model_id,
        model_type: model.config().arch.model_type().to_string(),
        whole,
        cut,
        max_input,
        vocab_size: model.config().vocab_size,
        pooling: (task == ServeTask::Embed).then_some(embed_defaults.pooling),
        queue: queue.clone(),
        metrics,
        alive: alive.clone(),
        limiter: Arc::new(tokio::sync::Semaphore::new(opts.max_concurrent_requests)),
        adapters,
        heads,
        eos: model
            .config()
            .eos_token_id
            .or_else(|| model.tokenizer.as_ref().and_then(|t| t.eos_id())),
        completions: std::sync::atomic::AtomicU64::new(0),
        opts: opts.clone(),
    });
    let worker = batcher::spawn(
        model,
        switch,
        kind,
        queue.clone(),
        opts.max_batch_tokens,
        alive,
    )
    .map_err(|e| Error::Input(format!("cannot start the inference thread: {e}")))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("kiln-http")
        .enable_all()
        .build()
        .map_err(|e| Error::Input(format!("cannot start the HTTP runtime: {e}")))?;
    let addr = format!("{}:{}", opts.host, opts.port);
    let served = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| Error::Input(format!("cannot listen on {addr} (--host, --port): {e}")))?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::Input(format!("cannot read the bound address: {e}")))?;
        on_ready(local);
        axum::serve(listener, routes::router(state))
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|e| Error::Input(format!("the HTTP server failed: {e}")))
    });
    // Every connection is closed now; the queue holds nothing a client waits for.
    queue.close();
    let _ = worker.join();
    served
}

/// The loaded adapters (sorted), the switch between them, and the classifier heads by adapter.
type Adapters = (
    Vec<String>,
    AdapterSwitch,
    HashMap<Option<String>, HeadInfo>,
);

/// The loaded adapters (sorted), a switch with the base model bare, and, for the classify
/// task, each adapter's head. Fails when neither the base model nor any adapter can do
/// `task`, or `--default-adapter` names none of them.
fn check_adapters(
    model: &mut Pretrained,
    task: ServeTask,
    opts: &ServeOptions,
) -> Result<Adapters> {
    let mut adapters: Vec<String> = match &model.peft {
        Some(st) => std::iter::once(st.name.clone())
            .chain(st.stash.keys().cloned())
            .collect(),
        None => Vec::new(),
    };
    adapters.sort();
    if let Some(d) = &opts.default_adapter {
        if !adapters.contains(d) {
            return Err(Error::Input(format!(
                "--default-adapter {d}: no adapter of that name (loaded: {})",
                if adapters.is_empty() {
                    "none; give them with --adapter NAME=DIR".to_string()
                } else {
                    adapters.join(", ")
                }
            )));
        }
    }
    let mut switch = AdapterSwitch::default();
    let mut heads = HashMap::new();
    let mut usable = 0;
    let mut first_err = None;
    let names: Vec<Option<String>> = std::iter::once(None)
        .chain(adapters.iter().cloned().map(Some))
        .collect();
    for name in names {
        switch.select(model, name.as_deref())?;
        let label = name
            .clone()
            .map_or("the base model".into(), |n| format!("adapter {n}"));
        match task.check(model) {
            Ok(()) => usable += 1,
            Err(e) => {
                if name.is_some() || (opts.default_adapter.is_none() && adapters.is_empty()) {
                    return Err(Error::Input(format!(
                        "{label} cannot serve --task {}: {e}",
                        task.name()
                    )));
                }
                first_err.get_or_insert(e);
                continue;
            }
        }
        if task == ServeTask::Classify {
            if let Some(t) = &model.task {
                heads.insert(
                    name,
                    HeadInfo {
                        labels: t.labels.clone(),
                        outputs: t.linear.out_features(),
                    },
                );
            }
        }
    }
    if usable == 0 {
        return Err(first_err.unwrap_or_else(|| Error::Input("nothing to serve".into())));
    }
    switch.select(model, None)?;
    Ok((adapters, switch, heads))
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
