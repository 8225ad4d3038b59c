//! Text generation: text-generation-inference's `POST /generate` and `POST /generate_stream`
//! (server-sent events, one per token) and OpenAI's `POST /v1/completions` (streamed or not).
//! Decoding steps of concurrent requests run batched (see the batcher's generation loop).

use super::{adapter, St};
use crate::infer::{Finish, GenerateOptions, Strategy, TextStream};
use crate::serve::batcher::{GenEvent, Job, Work};
use crate::serve::error::ApiError;
use crate::serve::request::{kind, ApiJson};
use crate::serve::AppState;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tokio::sync::mpsc;

/// Stop sequences per request, as text-generation-inference allows.
const MAX_STOP: usize = 4;

/// TGI's `parameters`.
#[derive(Default, Deserialize)]
#[serde(default)]
pub(crate) struct Parameters {
    max_new_tokens: Option<usize>,
    do_sample: bool,
    temperature: Option<f32>,
    top_k: Option<usize>,
    top_p: Option<f32>,
    seed: Option<u64>,
    num_beams: Option<usize>,
    stop: Vec<String>,
    details: bool,
    return_full_text: bool,
    truncate: Option<usize>,
    adapter_id: Option<String>,
}

/// TGI's request.
#[derive(Deserialize)]
pub(crate) struct GenerateRequest {
    inputs: String,
    #[serde(default)]
    parameters: Parameters,
    #[serde(default)]
    adapter: Option<String>,
}

/// A validated generation request.
struct Plan {
    prompt: Vec<u32>,
    opts: GenerateOptions,
    stop: Vec<String>,
    adapter: Option<String>,
    /// The seed of a sampled continuation.
    seed: Option<u64>,
}

/// A seed for requests that sample without giving one.
fn fresh_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// Tokenizes the prompt (keeping its last `truncate` tokens when asked) and checks it fits.
fn prompt_ids(st: &AppState, text: &str, truncate: Option<usize>) -> Result<Vec<u32>, ApiError> {
    let mut ids = st
        .whole
        .encode_plain(text)
        .map_err(|e| ApiError::tokenizer(format!("`inputs`: {e}")))?
        .ids;
    if let Some(n) = truncate {
        if n == 0 {
            return Err(ApiError::validation("`truncate` must be at least 1"));
        }
        if ids.len() > n {
            ids.drain(..ids.len() - n);
        }
    }
    if ids.is_empty() {
        return Err(ApiError::validation(
            "`inputs`: the prompt is empty; give at least one token",
        ));
    }
    if ids.len() > st.max_input {
        return Err(ApiError::too_large(format!(
            "`inputs` has {} tokens, more than this server's {} (--max-input-length); send `truncate` to keep the last ones",
            ids.len(),
            st.max_input
        )));
    }
    Ok(ids)
}

/// TGI's semantics: sampling when `do_sample` or any sampling setting is given; beam search
/// with `num_beams` > 1; greedy otherwise.
fn plan(st: &AppState, r: GenerateRequest) -> Result<Plan, ApiError> {
    let p = r.parameters;
    let max_new = p.max_new_tokens.unwrap_or(100);
    if max_new == 0 {
        return Err(ApiError::validation("`max_new_tokens` must be at least 1"));
    }
    if let Some(t) = p.temperature {
        if t.is_nan() || t <= 0.0 {
            return Err(ApiError::validation(format!(
                "`temperature` must be strictly positive, got {t}"
            )));
        }
    }
    if let Some(tp) = p.top_p {
        if tp.is_nan() || tp <= 0.0 || tp > 1.0 {
            return Err(ApiError::validation(format!(
                "`top_p` must be in (0, 1], got {tp}"
            )));
        }
    }
    if p.top_k == Some(0) {
        return Err(ApiError::validation("`top_k` must be at least 1"));
    }
    if p.stop.len() > MAX_STOP {
        return Err(ApiError::validation(format!(
            "`stop` has {} sequences; at most {MAX_STOP}",
            p.stop.len()
        )));
    }
    if p.stop.iter().any(String::is_empty) {
        return Err(ApiError::validation("`stop` sequences cannot be empty"));
    }
    let sampling = p.do_sample
        || p.temperature.is_some_and(|t| t != 1.0)
        || p.top_k.is_some()
        || p.top_p.is_some_and(|tp| tp < 1.0);
    let beams = p.num_beams.unwrap_or(1);
    if beams == 0 {
        return Err(ApiError::validation("`num_beams` must be at least 1"));
    }
    if beams > 1 && sampling {
        return Err(ApiError::validation(
            "`num_beams` > 1 is beam search; it does not sample (drop do_sample, temperature, top_k, top_p)",
        ));
    }
    let seed = sampling.then(|| p.seed.unwrap_or_else(fresh_seed));
    let strategy = if beams > 1 {
        Strategy::Beam {
            num_beams: beams,
            length_penalty: 1.0,
        }
    } else if sampling {
        Strategy::Sample {
            temperature: p.temperature.unwrap_or(1.0),
            top_k: p.top_k.unwrap_or(0),
            top_p: p.top_p.unwrap_or(1.0),
        }
    } else {
        Strategy::Greedy
    };
    let adapter = adapter(st, r.adapter.or(p.adapter_id))?;
    Ok(Plan {
        prompt: prompt_ids(st, &r.inputs, p.truncate)?,
        opts: GenerateOptions {
            max_new_tokens: max_new,
            strategy,
            seed: seed.unwrap_or(0),
        },
        stop: p.stop,
        adapter,
        seed,
    })
}

/// Queues the continuation; its events arrive on the receiver.
fn start(st: &AppState, plan: &Plan) -> mpsc::UnboundedReceiver<GenEvent> {
    let (events, rx) = mpsc::unbounded_channel();
    st.queue.push(Job {
        adapter: plan.adapter.clone(),
        work: Work::Generate {
            prompt: plan.prompt.clone(),
            opts: plan.opts.clone(),
            events,
        },
        enqueued: Instant::now(),
    });
    rx
}

/// One generated token as TGI shows it.
struct TokenOut {
    id: u32,
    /// The text it made final (the pieces join to the generated text).
    text: String,
    logprob: f32,
    special: bool,
}

impl TokenOut {
    fn json(&self) -> Value {
        json!({
            "id": self.id,
            "text": self.text,
            "logprob": if self.logprob.is_finite() { json!(self.logprob) } else { Value::Null },
            "special": self.special,
        })
    }
}

/// Why a continuation ended, in TGI's words.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum End {
    Length,
    Eos,
    Stop,
}

impl End {
    fn tgi(self) -> &'static str {
        match self {
            End::Length => "length",
            End::Eos => "eos_token",
            End::Stop => "stop_sequence",
        }
    }

    fn openai(self) -> &'static str {
        match self {
            End::Length => "length",
            End::Eos | End::Stop => "stop",
        }
    }
}

/// Turns events into text, watching for stop sequences.
struct Collector<'a> {
    st: &'a AppState,
    stream: TextStream<'a>,
    stop: &'a [String],
    /// The text so far.
    text: String,
    tokens: Vec<TokenOut>,
    /// Where the first stop sequence begins in `text`.
    stopped_at: Option<usize>,
}

impl<'a> Collector<'a> {
    fn new(st: &'a AppState, stop: &'a [String]) -> Self {
        Collector {
            st,
            stream: TextStream::new(&st.whole),
            stop,
            text: String::new(),
            tokens: Vec::new(),
            stopped_at: None,
        }
    }

    /// The next event: a token (its text made final), or the end.
    fn event(&mut self, ev: GenEvent) -> Result<Option<End>, ApiError> {
        match ev {
            GenEvent::Token { id, logprob } => {
                let piece = self
                    .stream
                    .push(id)
                    .map_err(|e| ApiError::backend(e.to_string()))?;
                self.push(id, piece, logprob);
                Ok(self.stopped_at.map(|_| End::Stop))
            }
            GenEvent::End(Ok(f)) => {
                let rest = self
                    .stream
                    .finish()
                    .map_err(|e| ApiError::backend(e.to_string()))?;
                if !rest.is_empty() {
                    // The held-back tail belongs to the last token.
                    let from = self.text.len();
                    self.text.push_str(&rest);
                    if let Some(t) = self.tokens.last_mut() {
                        t.text.push_str(&rest);
                    }
                    self.find_stop(from);
                }
                Ok(Some(match f {
                    Finish::NonFinite => {
                        return Err(ApiError::backend("the model's output is not finite"))
                    }
                    _ if self.stopped_at.is_some() => End::Stop,
                    Finish::Eos => End::Eos,
                    Finish::Length => End::Length,
                }))
            }
            GenEvent::End(Err(e)) => Err(e),
        }
    }

    /// Looks for a stop sequence ending in the text added from byte `from` on (it may
    /// straddle the earlier text).
    fn find_stop(&mut self, from: usize) {
        if self.stopped_at.is_some() {
            return;
        }
        let longest = self.stop.iter().map(String::len).max().unwrap_or(0);
        let mut lo = from.saturating_sub(longest);
        while !self.text.is_char_boundary(lo) {
            lo -= 1;
        }
        self.stopped_at = self
            .stop
            .iter()
            .filter_map(|s| self.text[lo..].find(s.as_str()).map(|i| lo + i))
            .min();
    }

    fn push(&mut self, id: u32, piece: String, logprob: f32) {
        let from = self.text.len();
        self.text.push_str(&piece);
        self.find_stop(from);
        self.tokens.push(TokenOut {
            id,
            text: piece,
            logprob,
            special: Some(id) == self.st.eos,
        });
    }
}

/// `{"generated_text"}` (with `details`: finish reason, token count, seed, tokens).
pub(crate) async fn generate(
    axum::extract::State(st): St,
    ApiJson(r): ApiJson<GenerateRequest>,
) -> Result<Json<Value>, ApiError> {
    let details = r.parameters.details;
    let full = r.parameters.return_full_text;
    let prompt_text = r.inputs.clone();
    let plan = plan(&st, r)?;
    let mut rx = start(&st, &plan);
    let mut c = Collector::new(&st, &plan.stop);
    let end = loop {
        let ev = rx
            .recv()
            .await
            .ok_or_else(|| ApiError::unavailable("the inference thread stopped"))?;
        if let Some(end) = c.event(ev)? {
            break end;
        }
    };
    drop(rx);
    let mut text = c.text.clone();
    if full {
        text.insert_str(0, &prompt_text);
    }
    let mut out = json!({ "generated_text": text });
    if details {
        out["details"] = json!({
            "finish_reason": end.tgi(),
            "generated_tokens": c.tokens.len(),
            "seed": plan.seed,
            "tokens": c.tokens.iter().map(TokenOut::json).collect::<Vec<_>>(),
        });
    }
    Ok(Json(out))
}

/// Server-sent events from a channel.
fn sse(rx: mpsc::UnboundedReceiver<Event>) -> Response {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn data(v: &Value) -> Event {
    Event::default().data(v.to_string())
}

/// One event per token, as TGI streams: `{"index", "token", "generated_text": null,
/// "details": null}`, the last carrying the whole text and the finish reason; an error
/// mid-stream is an event `{"error", "error_type"}`.
pub(crate) async fn generate_stream(
    axum::extract::State(st): St,
    Extension(slot): Extension<super::Slot>,
    ApiJson(r): ApiJson<GenerateRequest>,
) -> Result<Response, ApiError> {
    let full = r.parameters.return_full_text;
    let prompt_text = r.inputs.clone();
    let plan = plan(&st, r)?;
    let mut rx = start(&st, &plan);
    let (tx, out) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        // The request keeps its place until the stream ends.
        let _slot = slot;
        let mut c = Collector::new(&st, &plan.stop);
        let mut sent = 0;
        loop {
            let Some(ev) = rx.recv().await else {
                let e = ApiError::unavailable("the inference thread stopped");
                let _ = tx.send(data(
                    &json!({ "error": e.message, "error_type": e.error_type }),
                ));
                return;
            };
            let end = match c.event(ev) {
                Ok(end) => end,
                Err(e) => {
                    let _ = tx.send(data(
                        &json!({ "error": e.message, "error_type": e.error_type }),
                    ));
                    return;
                }
            };
            // Each token goes out once the next one (or the end) is known, as the end may
            // complete the last one's text; the last event carries the whole text.
            let ready = if end.is_some() {
                c.tokens.len()
            } else {
                c.tokens.len().saturating_sub(1)
            };
            while sent < ready || (end.is_some() && sent == 0 && c.tokens.is_empty()) {
                let last = end.is_some() && sent + 1 >= c.tokens.len();
                let mut ev = json!({
                    "index": sent + 1,
                    "token": c.tokens.get(sent).map_or(Value::Null, TokenOut::json),
                    "generated_text": Value::Null,
                    "details": Value::Null,
                });
                if last {
                    let mut text = c.text.clone();
                    if full {
                        text.insert_str(0, &prompt_text);
                    }
                    ev["generated_text"] = json!(text);
                    ev["details"] = json!({
                        "finish_reason": end.map(End::tgi),
                        "generated_tokens": c.tokens.len(),
                        "seed": plan.seed,
                    });
                }
                if tx.send(data(&ev)).is_err() {
                    return; // the client left; dropping `rx` stops the continuation
                }
                sent += 1;
                if last {
                    return;
                }
            }
            if end.is_some() {
                return;
            }
        }
    });
    Ok(sse(out))
}

/// OpenAI's completions request.
#[derive(Deserialize)]
pub(crate) struct CompletionRequest {
    prompt: Value,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    max_tokens: Option<usize>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    n: Option<usize>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stop: Option<Value>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    echo: bool,
    #[serde(default)]
    adapter: Option<String>,
}

/// OpenAI's completion, or its stream of `text_completion` chunks ending with `[DONE]`.
/// Temperature 0 decodes greedily; otherwise it samples (default temperature 1, as OpenAI).
pub(crate) async fn completions(
    axum::extract::State(st): St,
    Extension(slot): Extension<super::Slot>,
    ApiJson(r): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let prompt = match &r.prompt {
        Value::String(s) => s.clone(),
        Value::Array(v) if v.len() == 1 && v[0].is_string() => {
            v[0].as_str().unwrap_or_default().to_string()
        }
        Value::Array(v) => {
            return Err(ApiError::validation(format!(
                "`prompt`: one prompt per request; this list has {}",
                v.len()
            )))
        }
        other => {
            return Err(ApiError::validation(format!(
                "`prompt`: expected a string, found {}",
                kind(other)
            )))
        }
    };
    if r.n.is_some_and(|n| n != 1) {
        return Err(ApiError::validation("`n`: one completion per request"));
    }
    let stop: Vec<String> = match &r.stop {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(v)) => v
            .iter()
            .map(|x| {
                x.as_str().map(str::to_string).ok_or_else(|| {
                    ApiError::validation("`stop`: expected a string or a list of strings")
                })
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(ApiError::validation(format!(
                "`stop`: expected a string or a list of strings, found {}",
                kind(other)
            )))
        }
    };
    let temperature = r.temperature.unwrap_or(1.0);
    if temperature.is_nan() || temperature < 0.0 {
        return Err(ApiError::validation(format!(
            "`temperature` must be 0 or more, got {temperature}"
        )));
    }
    let greedy = temperature == 0.0;
    let req = GenerateRequest {
        inputs: prompt.clone(),
        parameters: Parameters {
            max_new_tokens: Some(r.max_tokens.unwrap_or(16)),
            do_sample: !greedy,
            temperature: (!greedy).then_some(temperature),
            top_p: if greedy { None } else { r.top_p },
            seed: r.seed,
            stop,
            ..Default::default()
        },
        adapter: r.adapter,
    };
    let plan = plan(&st, req)?;
    let n = st.completions.fetch_add(1, Ordering::Relaxed);
    let id = format!("cmpl-{:x}-{n}", fresh_seed() as u32);
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let model = r.model.unwrap_or_else(|| st.model_id.clone());
    let mut rx = start(&st, &plan);
    let prompt_tokens = plan.prompt.len();
    if !r.stream {
        let mut c = Collector::new(&st, &plan.stop);
        let end = loop {
            let ev = rx
                .recv()
                .await
                .ok_or_else(|| ApiError::unavailable("the inference thread stopped"))?;
            if let Some(end) = c.event(ev)? {
                break end;
            }
        };
        drop(rx);
        let mut text = c.text.clone();
        if let Some(at) = c.stopped_at {
            // OpenAI's text leaves the stop sequence out.
            text.truncate(at);
        }
        if r.echo {
            text.insert_str(0, &prompt);
        }
        return Ok(Json(json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [{ "index": 0, "text": text, "logprobs": Value::Null, "finish_reason": end.openai() }],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": c.tokens.len(),
                "total_tokens": prompt_tokens + c.tokens.len(),
            },
        }))
        .into_response());
    }
    let (tx, out) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _slot = slot;
        let chunk = |text: &str, finish: Option<&str>| {
            data(&json!({
                "id": id,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [{ "index": 0, "text": text, "logprobs": Value::Null, "finish_reason": finish }],
            }))
        };
        if r.echo && tx.send(chunk(&prompt, None)).is_err() {
            return;
        }
        let mut c = Collector::new(&st, &plan.stop);
        // Bytes of text already sent; text after a stop sequence's start is never sent.
        let mut shown = 0;
        loop {
            let Some(ev) = rx.recv().await else {
                return;
            };
            let end = match c.event(ev) {
                Ok(end) => end,
                Err(e) => {
                    let _ = tx.send(data(
                        &json!({ "error": e.message, "error_type": e.error_type }),
                    ));
                    return;
                }
            };
            let upto = c.stopped_at.unwrap_or(c.text.len());
            if upto > shown {
                if tx.send(chunk(&c.text[shown..upto], None)).is_err() {
                    return;
                }
                shown = upto;
            }
            if let Some(end) = end {
                let _ = tx.send(chunk("", Some(end.openai())));
                let _ = tx.send(Event::default().data("[DONE]"));
                return;
            }
        }
    });
    Ok(sse(out))
}
