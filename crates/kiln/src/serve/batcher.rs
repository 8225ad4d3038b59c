//! The batcher: one inference thread owns the model. Requests queue jobs; the thread takes
//! the waiting encode jobs, first come first served, up to a token budget, packs their
//! sequences without padding into forward passes (one per adapter named in the batch), and
//! sends each job its rows. Whole-request jobs (tagging, QA, fill-mask) run alone in their
//! turn. The kernels run on Kiln's thread pool, never on the HTTP runtime's threads.

use super::error::ApiError;
use super::metrics::Metrics;
use crate::checkpoint::sentence::Pooling;
use crate::checkpoint::Pretrained;
use crate::infer::{Finish, GenerateOptions, Generator, Strategy};
use crate::model::Batch;
use crate::peft::AdapterSwitch;
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// One tokenized input.
#[derive(Clone, Debug, PartialEq)]
pub struct Seq {
    /// Token ids, special tokens included.
    pub ids: Vec<u32>,
    /// Segment ids.
    pub type_ids: Vec<u32>,
}

/// Where a job's answer goes.
pub type Reply<T> = oneshot::Sender<Result<T, ApiError>>;

/// Where an encode job's rows go.
pub type RowsReply = Reply<Vec<Vec<f32>>>;

/// A request run alone on the model with its adapter active; it answers with a JSON body
/// (serialized by the job, so f32 values keep their shortest form, as the CLI writes them).
pub type RunFn = Box<dyn FnOnce(&Pretrained) -> Result<String, ApiError> + Send>;

/// What a job asks of the model.
pub enum Work {
    /// One row per sequence, computed in packed batches shared with other requests.
    Encode {
        /// The sequences.
        seqs: Vec<Seq>,
        /// Their rows, in order.
        reply: RowsReply,
    },
    /// A continuation, stepped together with the others in flight (continuous batching).
    Generate {
        /// The prompt's token ids.
        prompt: Vec<u32>,
        /// Length and decoding strategy.
        opts: GenerateOptions,
        /// Each new token as it is chosen, then the end.
        events: Events,
    },
    /// A whole request.
    Run {
        /// The request's computation.
        f: RunFn,
        /// Its answer.
        reply: Reply<String>,
    },
}

/// A queued job.
pub struct Job {
    /// The adapter to run with (`None`: the base model).
    pub adapter: Option<String>,
    /// The work.
    pub work: Work,
    /// When it was queued.
    pub enqueued: Instant,
}

impl Job {
    /// Tokens the job puts into a batch.
    fn tokens(&self) -> usize {
        match &self.work {
            Work::Encode { seqs, .. } => seqs.iter().map(|s| s.ids.len()).sum(),
            Work::Generate { prompt, .. } => prompt.len(),
            Work::Run { .. } => 0,
        }
    }

    /// Whether the client stopped waiting (its connection closed): the work is skipped.
    fn abandoned(&self) -> bool {
        match &self.work {
            Work::Encode { reply, .. } => reply.is_closed(),
            Work::Generate { events, .. } => events.is_closed(),
            Work::Run { reply, .. } => reply.is_closed(),
        }
    }

    fn fail(self, e: ApiError) {
        // A client that left does not need its error.
        match self.work {
            Work::Encode { reply, .. } => drop(reply.send(Err(e))),
            Work::Generate { events, .. } => drop(events.send(GenEvent::End(Err(e)))),
            Work::Run { reply, .. } => drop(reply.send(Err(e))),
        }
    }
}

/// What a generation job hears from the model.
#[derive(Clone, Debug, PartialEq)]
pub enum GenEvent {
    /// A new token and its log-probability.
    Token {
        /// The token id.
        id: u32,
        /// Its log-probability under the model.
        logprob: f32,
    },
    /// The end: why, or what failed.
    End(Result<Finish, ApiError>),
}

/// Where a generation job's events go.
pub type Events = mpsc::UnboundedSender<GenEvent>;

/// What an encode batch computes per sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeKind {
    /// The pooled token vectors (not normalized; the request decides).
    Pool(Pooling),
    /// The sequence head's logits.
    Logits,
    /// Generation jobs only.
    Generate,
}

#[derive(Default)]
struct QueueState {
    jobs: VecDeque<Job>,
    closed: bool,
}

/// The job queue between the HTTP handlers and the inference thread.
pub struct Queue {
    state: Mutex<QueueState>,
    ready: Condvar,
    metrics: Arc<Metrics>,
}

impl Queue {
    /// An empty, open queue.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Queue {
            state: Mutex::new(QueueState::default()),
            ready: Condvar::new(),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        // A panic never happens while the lock is held (only queue bookkeeping runs under
        // it), so a poisoned lock still holds a consistent queue.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a job; once the server is shutting down the job is answered 503 instead.
    pub fn push(&self, job: Job) {
        let mut st = self.lock();
        if st.closed {
            drop(st);
            job.fail(ApiError::unavailable("the server is shutting down"));
            return;
        }
        st.jobs.push_back(job);
        self.metrics.queue_depth.set(st.jobs.len() as i64);
        drop(st);
        self.ready.notify_one();
    }

    /// Stops taking jobs; the inference thread finishes the queued ones and ends.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    /// The next batch, waiting for one: a run job alone, or the encode jobs at the head of
    /// the queue up to `max_tokens` (always at least one). `None` once closed and drained.
    /// Without `wait`, an empty batch when nothing is queued.
    fn take(&self, max_tokens: usize, wait: bool) -> Option<Vec<Job>> {
        let mut st = self.lock();
        while st.jobs.is_empty() {
            if st.closed {
                return None;
            }
            if !wait {
                return Some(Vec::new());
            }
            st = self.ready.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        let mut batch = Vec::new();
        let mut tokens = 0;
        while let Some(front) = st.jobs.front() {
            let is_run = matches!(front.work, Work::Run { .. });
            if !batch.is_empty() && (is_run || tokens + front.tokens() > max_tokens) {
                break;
            }
            tokens += front.tokens();
            batch.extend(st.jobs.pop_front());
            if is_run {
                break;
            }
        }
        self.metrics.queue_depth.set(st.jobs.len() as i64);
        Some(batch)
    }
}

/// Starts the inference thread; it owns `model` and ends when the queue closes.
/// `alive` turns false if it ever ends otherwise.
pub fn spawn(
    mut model: Pretrained,
    mut switch: AdapterSwitch,
    kind: EncodeKind,
    queue: Arc<Queue>,
    max_tokens: usize,
    alive: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("kiln-batcher".into())
        .spawn(move || {
            struct Alive(Arc<AtomicBool>);
            impl Drop for Alive {
                fn drop(&mut self) {
                    self.0.store(false, Ordering::SeqCst);
                }
            }
            let _alive = Alive(alive);
            let metrics = queue.metrics.clone();
            if kind == EncodeKind::Generate {
                generation_loop(&mut model, &mut switch, &queue, max_tokens, &metrics);
                return;
            }
            while let Some(batch) = queue.take(max_tokens, true) {
                let start = Instant::now();
                let mut live = Vec::with_capacity(batch.len());
                for job in batch {
                    metrics
                        .queue_seconds
                        .observe((start - job.enqueued).as_secs_f64());
                    if !job.abandoned() {
                        live.push(job);
                    }
                }
                run_batch(&mut model, &mut switch, kind, live, max_tokens, &metrics);
            }
        })
}

/// Runs one batch: encode jobs grouped by adapter (in order of first appearance), or a
/// run job.
fn run_batch(
    model: &mut Pretrained,
    switch: &mut AdapterSwitch,
    kind: EncodeKind,
    jobs: Vec<Job>,
    max_tokens: usize,
    metrics: &Metrics,
) {
    let mut groups: Vec<(Option<String>, Vec<Job>)> = Vec::new();
    for job in jobs {
        match groups.iter_mut().find(|(a, _)| *a == job.adapter) {
            Some((_, g)) => g.push(job),
            None => groups.push((job.adapter.clone(), vec![job])),
        }
    }
    for (adapter, jobs) in groups {
        if let Err(e) = switch.select(model, adapter.as_deref()) {
            let e = ApiError::from_kiln(e);
            jobs.into_iter().for_each(|j| j.fail(e.clone()));
            continue;
        }
        let mut encodes = Vec::new();
        for job in jobs {
            match job.work {
                Work::Run { f, reply } => {
                    let t = Instant::now();
                    let out = catch_unwind(AssertUnwindSafe(|| f(model)))
                        .unwrap_or_else(|_| Err(ApiError::backend(panic_message())));
                    metrics.inference_seconds.observe(t.elapsed().as_secs_f64());
                    metrics.batch_inputs.observe(1.0);
                    let _ = reply.send(out);
                }
                Work::Encode { seqs, reply } => encodes.push((seqs, reply)),
                Work::Generate { events, .. } => drop(events.send(GenEvent::End(Err(
                    ApiError::backend("this server does not generate"),
                )))),
            }
        }
        if !encodes.is_empty() {
            run_encodes(model, kind, encodes, max_tokens, metrics);
        }
    }
}

fn panic_message() -> String {
    "the model failed on this batch (an internal error; the server goes on); see the server's log"
        .into()
}

/// Packs the sequences of encode jobs into forward passes of at most `max_tokens` tokens and
/// answers each job with its rows. When a shared pass fails, each job is run alone, so one
/// request's failure is only its own.
fn run_encodes(
    model: &Pretrained,
    kind: EncodeKind,
    jobs: Vec<(Vec<Seq>, RowsReply)>,
    max_tokens: usize,
    metrics: &Metrics,
) {
    let shared = jobs.len() > 1;
    if let Err(jobs) = try_encodes(model, kind, jobs, max_tokens, metrics, shared) {
        for job in jobs {
            let _ = try_encodes(model, kind, vec![job], max_tokens, metrics, false);
        }
    }
}

/// One attempt of [`run_encodes`]; with `give_back`, a failure returns the jobs unanswered.
fn try_encodes(
    model: &Pretrained,
    kind: EncodeKind,
    jobs: Vec<(Vec<Seq>, RowsReply)>,
    max_tokens: usize,
    metrics: &Metrics,
    give_back: bool,
) -> Result<(), Vec<(Vec<Seq>, RowsReply)>> {
    let all: Vec<&Seq> = jobs.iter().flat_map(|(s, _)| s.iter()).collect();
    let mut rows: Vec<Vec<f32>> = Vec::with_capacity(all.len());
    let mut failed: Option<ApiError> = None;
    let mut i = 0;
    while i < all.len() && failed.is_none() {
        let mut end = i;
        let mut tokens = 0;
        while end < all.len() && (end == i || tokens + all[end].ids.len() <= max_tokens) {
            tokens += all[end].ids.len();
            end += 1;
        }
        let t = Instant::now();
        match catch_unwind(AssertUnwindSafe(|| encode(model, kind, &all[i..end]))) {
            Ok(Ok(r)) => rows.extend(r),
            Ok(Err(e)) => failed = Some(ApiError::from_kiln(e)),
            Err(_) => failed = Some(ApiError::backend(panic_message())),
        }
        metrics.inference_seconds.observe(t.elapsed().as_secs_f64());
        metrics.batch_inputs.observe((end - i) as f64);
        metrics.batch_tokens.observe(tokens as f64);
        metrics.tokens.inc_by(tokens as u64);
        i = end;
    }
    if failed.is_some() && give_back {
        return Err(jobs);
    }
    let mut rows = rows.into_iter();
    for (seqs, reply) in jobs {
        let _ = match &failed {
            Some(e) => reply.send(Err(e.clone())),
            None => reply.send(Ok(rows.by_ref().take(seqs.len()).collect())),
        };
    }
    Ok(())
}

/// One packed forward pass: a row per sequence.
pub fn encode(p: &Pretrained, kind: EncodeKind, seqs: &[&Seq]) -> crate::Result<Vec<Vec<f32>>> {
    let pairs: Vec<(&[u32], Option<&[u32]>)> = seqs
        .iter()
        .map(|s| (&s.ids[..], Some(&s.type_ids[..])))
        .collect();
    let batch = Batch::packed(&pairs)?;
    match kind {
        EncodeKind::Pool(pooling) => {
            let hidden = p.model.forward(&batch, p.model.default_mask(), None)?;
            let h = p.config().hidden_size;
            Ok(crate::infer::embed::pool(
                hidden.data(),
                h,
                &batch.seq_lens,
                pooling,
                false,
            ))
        }
        EncodeKind::Logits => {
            let logits = crate::infer::classify::sequence_logits(p, &batch)?;
            let k = logits.len() / seqs.len().max(1);
            Ok(logits.chunks(k.max(1)).map(<[f32]>::to_vec).collect())
        }
        EncodeKind::Generate => Err(crate::Error::Input(
            "a generation server does not encode".into(),
        )),
    }
}

/// A continuation in flight.
struct Active {
    adapter: Option<String>,
    dec: crate::infer::Decoding,
    events: Events,
}

/// Continuous batching: new requests join between steps (their prompts run as they arrive,
/// up to the token budget per round); every step chooses one token for each continuation in
/// flight and runs them all in one forward pass per adapter; finished ones leave at once.
/// Beam search keeps several hypotheses per request, so it runs whole in its turn.
fn generation_loop(
    model: &mut Pretrained,
    switch: &mut AdapterSwitch,
    queue: &Queue,
    max_tokens: usize,
    metrics: &Metrics,
) {
    let mut active: Vec<Active> = Vec::new();
    loop {
        let Some(jobs) = queue.take(max_tokens, active.is_empty()) else {
            break;
        };
        let now = Instant::now();
        for job in jobs {
            metrics
                .queue_seconds
                .observe((now - job.enqueued).as_secs_f64());
            if job.abandoned() {
                continue;
            }
            let Work::Generate {
                prompt,
                opts,
                events,
            } = job.work
            else {
                job.fail(ApiError::backend("this server only generates"));
                continue;
            };
            if let Err(e) = switch.select(model, job.adapter.as_deref()) {
                let _ = events.send(GenEvent::End(Err(ApiError::from_kiln(e))));
                continue;
            }
            let t = Instant::now();
            let started = catch_unwind(AssertUnwindSafe(|| {
                let g = Generator::new(model)?;
                if let Strategy::Beam { .. } = opts.strategy {
                    let toks = g.generate(&prompt, &opts, |_| {})?;
                    return Ok(Err(toks));
                }
                g.start(&prompt, &opts).map(Ok)
            }));
            metrics.inference_seconds.observe(t.elapsed().as_secs_f64());
            metrics.tokens.inc_by(prompt.len() as u64);
            match started {
                Ok(Ok(Ok(dec))) => active.push(Active {
                    adapter: job.adapter,
                    dec,
                    events,
                }),
                Ok(Ok(Err(beam))) => {
                    // Beam search gives no per-token log-probabilities; the hypothesis'
                    // tokens follow one another, then the end.
                    let eos = model.config().eos_token_id;
                    for &id in &beam {
                        let _ = events.send(GenEvent::Token {
                            id,
                            logprob: f32::NAN,
                        });
                    }
                    let finish = if beam.last().is_some_and(|&t| Some(t) == eos) {
                        Finish::Eos
                    } else {
                        Finish::Length
                    };
                    let _ = events.send(GenEvent::End(Ok(finish)));
                }
                Ok(Err(e)) => drop(events.send(GenEvent::End(Err(ApiError::from_kiln(e))))),
                Err(_) => drop(events.send(GenEvent::End(Err(ApiError::backend(panic_message()))))),
            }
        }
        // One step for every continuation, one pass per adapter.
        let mut adapters: Vec<Option<String>> = Vec::new();
        for a in &active {
            if !adapters.contains(&a.adapter) {
                adapters.push(a.adapter.clone());
            }
        }
        for adapter in adapters {
            let mut group: Vec<&mut Active> = active
                .iter_mut()
                .filter(|a| a.adapter == adapter && a.dec.finished.is_none())
                .collect();
            if group.is_empty() {
                continue;
            }
            let t = Instant::now();
            let stepped = match switch.select(model, adapter.as_deref()) {
                Err(e) => Err(ApiError::from_kiln(e)),
                Ok(()) => {
                    let mut decs: Vec<&mut crate::infer::Decoding> =
                        group.iter_mut().map(|a| &mut a.dec).collect();
                    match catch_unwind(AssertUnwindSafe(|| {
                        Generator::new(model).and_then(|g| g.advance(&mut decs))
                    })) {
                        Ok(r) => r.map_err(ApiError::from_kiln),
                        Err(_) => Err(ApiError::backend(panic_message())),
                    }
                }
            };
            metrics.inference_seconds.observe(t.elapsed().as_secs_f64());
            metrics.batch_inputs.observe(group.len() as f64);
            metrics.batch_tokens.observe(group.len() as f64);
            match stepped {
                Ok(chosen) => {
                    for (a, c) in group.iter_mut().zip(chosen) {
                        if let Some((id, logprob)) = c {
                            let _ = a.events.send(GenEvent::Token { id, logprob });
                        }
                        match a.dec.finished {
                            Some(Finish::NonFinite) => drop(a.events.send(GenEvent::End(Err(
                                ApiError::backend(
                                    "the model's output is not finite (NaN or infinity); its weights overflow on this input",
                                ),
                            )))),
                            Some(f) => drop(a.events.send(GenEvent::End(Ok(f)))),
                            None => {}
                        }
                    }
                }
                Err(e) => {
                    for a in group.iter_mut() {
                        let _ = a.events.send(GenEvent::End(Err(e.clone())));
                        a.dec.finished = Some(Finish::Length);
                    }
                }
            }
        }
        // Finished continuations and those whose client left make room.
        active.retain(|a| a.dec.finished.is_none() && !a.events.is_closed());
    }
}
