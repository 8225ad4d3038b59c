//! The router: routes by task, the middleware (metrics, API key, body limit, concurrency
//! limit), and what the handlers share (tokenizing under the limits, queueing jobs).

mod classify;
mod embed;
mod generate;
mod records;
mod status;
mod tokenize;

use super::batcher::{Job, RunFn, Seq, Work};
use super::error::ApiError;
use super::request::Sequence;
use super::{AppState, ServeTask};
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::oneshot;

type St = State<Arc<AppState>>;

/// Every route of the server's task, wrapped in the middleware.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    let mut inference = Router::new();
    inference = match state.task {
        ServeTask::Embed => inference
            .route("/embed", post(embed::tei))
            .route("/v1/embeddings", post(embed::openai)),
        ServeTask::Classify => inference
            .route("/predict", post(classify::predict))
            .route("/rerank", post(classify::rerank)),
        ServeTask::Tag => inference.route("/tag", post(records::tag)),
        ServeTask::Qa => inference.route("/qa", post(records::qa)),
        ServeTask::FillMask => inference.route("/fill-mask", post(records::fill_mask)),
        ServeTask::Generate => inference
            .route("/generate", post(generate::generate))
            .route("/generate_stream", post(generate::generate_stream))
            .route("/v1/completions", post(generate::completions)),
    };
    let inference = inference.layer(middleware::from_fn_with_state(state.clone(), limit));
    Router::new()
        .route("/health", get(status::health))
        .route("/info", get(status::info))
        .route("/metrics", get(status::metrics))
        .route("/tokenize", post(tokenize::tokenize))
        .merge(inference)
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .layer(DefaultBodyLimit::max(state.opts.payload_limit))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// A path no route has: 404 naming the routes there are.
async fn not_found(State(st): St) -> ApiError {
    ApiError::not_found(format!(
        "no such route; this server runs task {} (routes: {}, /tokenize, /info, /health, /metrics)",
        st.task.name(),
        st.task.routes().join(", ")
    ))
}

/// Counts every answer by route and status, with its duration.
async fn observe(State(st): St, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let t = Instant::now();
    let res = next.run(req).await;
    st.metrics
        .observe_request(&route, res.status().as_u16(), t.elapsed().as_secs_f64());
    res
}

/// `--api-key`: every request carries `Authorization: Bearer <key>`.
async fn auth(State(st): St, req: Request, next: Next) -> Response {
    if let Some(key) = &st.opts.api_key {
        let given = req
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        // Compared in constant time, so the key cannot be guessed byte by byte from timing.
        let ok = given.is_some_and(|g| {
            g.len() == key.len()
                && g.bytes()
                    .zip(key.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        });
        if !ok {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

/// A request's place among `--max-concurrent-requests`, held until the request is done: the
/// middleware holds it until the answer is made, a stream's task until the stream ends.
#[derive(Clone)]
pub(crate) struct Slot(#[allow(dead_code)] Arc<SlotInner>);

pub(crate) struct SlotInner {
    _permit: tokio::sync::OwnedSemaphorePermit,
    metrics: Arc<super::metrics::Metrics>,
}

impl Drop for SlotInner {
    fn drop(&mut self) {
        self.metrics.in_flight.dec();
    }
}

/// `--max-concurrent-requests`: a request beyond it is answered 429 at once.
async fn limit(State(st): St, mut req: Request, next: Next) -> Response {
    match st.limiter.clone().try_acquire_owned() {
        Ok(permit) => {
            st.metrics.in_flight.inc();
            let slot = Slot(Arc::new(SlotInner {
                _permit: permit,
                metrics: st.metrics.clone(),
            }));
            req.extensions_mut().insert(slot.clone());
            let res = next.run(req).await;
            drop(slot);
            res
        }
        Err(_) => ApiError::overloaded(st.opts.max_concurrent_requests).into_response(),
    }
}

/// The adapter a request runs with: its own (one of those loaded), else `--default-adapter`.
pub(crate) fn adapter(st: &AppState, asked: Option<String>) -> Result<Option<String>, ApiError> {
    match asked {
        Some(a) if st.adapters.contains(&a) => Ok(Some(a)),
        Some(a) => Err(ApiError::validation(format!(
            "`adapter`: no adapter \"{a}\" (loaded: {})",
            if st.adapters.is_empty() {
                "none".to_string()
            } else {
                st.adapters.join(", ")
            }
        ))),
        None => Ok(st.opts.default_adapter.clone()),
    }
}

/// Checks the number of inputs of a request.
pub(crate) fn check_count(st: &AppState, n: usize, field: &str) -> Result<(), ApiError> {
    if n == 0 {
        return Err(ApiError::validation(format!("`{field}` cannot be empty")));
    }
    if n > st.opts.max_client_batch_size {
        return Err(ApiError::too_large(format!(
            "`{field}` has {n} inputs; this server takes at most {} per request (--max-client-batch-size)",
            st.opts.max_client_batch_size
        )));
    }
    Ok(())
}

/// Tokenizes inputs with special tokens; an input over `--max-input-length` is refused (413)
/// unless `truncate`, then cut to it. Returns the sequences and their token count.
pub(crate) fn encode(
    st: &AppState,
    inputs: &[Sequence],
    truncate: bool,
    field: &str,
) -> Result<(Vec<Seq>, usize), ApiError> {
    let mut out = Vec::with_capacity(inputs.len());
    let mut tokens = 0;
    for (i, s) in inputs.iter().enumerate() {
        let (a, b) = match s {
            Sequence::Single(a) => (a.as_str(), None),
            Sequence::Pair(a, b) => (a.as_str(), Some(b.as_str())),
        };
        let mut enc = st
            .whole
            .encode(a, b)
            .map_err(|e| ApiError::tokenizer(format!("`{field}[{i}]`: {e}")))?;
        if enc.ids.len() > st.max_input {
            if !truncate {
                return Err(ApiError::too_large(format!(
                    "`{field}[{i}]` has {} tokens, more than this server's {} (--max-input-length); send \"truncate\": true to cut it",
                    enc.ids.len(),
                    st.max_input
                )));
            }
            enc = st
                .cut
                .encode(a, b)
                .map_err(|e| ApiError::tokenizer(format!("`{field}[{i}]`: {e}")))?;
        }
        tokens += enc.ids.len();
        out.push(Seq {
            ids: enc.ids,
            type_ids: enc.type_ids,
        });
    }
    Ok((out, tokens))
}

/// Queues sequences for shared batches and waits for their rows.
pub(crate) async fn run_encode(
    st: &AppState,
    adapter: Option<String>,
    seqs: Vec<Seq>,
) -> Result<Vec<Vec<f32>>, ApiError> {
    let (reply, answer) = oneshot::channel();
    st.queue.push(Job {
        adapter,
        work: Work::Encode { seqs, reply },
        enqueued: Instant::now(),
    });
    let rows = answer
        .await
        .map_err(|_| ApiError::unavailable("the inference thread stopped"))??;
    if rows.iter().flatten().any(|v| !v.is_finite()) {
        return Err(ApiError::backend(
            "the model's output is not finite (NaN or infinity); its weights overflow on this input",
        ));
    }
    Ok(rows)
}

/// Queues a whole request and waits for its JSON answer.
pub(crate) async fn run_whole(
    st: &AppState,
    adapter: Option<String>,
    f: RunFn,
) -> Result<Response, ApiError> {
    let (reply, answer) = oneshot::channel();
    st.queue.push(Job {
        adapter,
        work: Work::Run { f, reply },
        enqueued: Instant::now(),
    });
    let body = answer
        .await
        .map_err(|_| ApiError::unavailable("the inference thread stopped"))??;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}
