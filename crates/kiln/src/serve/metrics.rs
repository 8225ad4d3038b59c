//! The server's Prometheus metrics (`GET /metrics`): requests and their durations by route and
//! status, time queued and time in the model, batch sizes, tokens, queue depth.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// A request's labels: the route pattern and the numeric status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route (`/embed`; `unmatched` for paths no route has).
    pub route: String,
    /// The HTTP status code.
    pub status: u16,
}

/// Seconds from 100 µs to about 3.3 minutes.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(1e-4, 2.0, 21))
}

/// Counts from 1 to 32768.
fn counts() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 16))
}

/// Every metric the server keeps.
pub struct Metrics {
    registry: Registry,
    /// Requests answered.
    pub requests: Family<RouteLabels, Counter>,
    /// Request durations, from the first byte read to the answer.
    pub request_seconds: Family<RouteLabels, Histogram, fn() -> Histogram>,
    /// Time a job waited in the queue before its batch started.
    pub queue_seconds: Histogram,
    /// Time each batch spent in the model.
    pub inference_seconds: Histogram,
    /// Inputs per batch.
    pub batch_inputs: Histogram,
    /// Tokens per batch.
    pub batch_tokens: Histogram,
    /// Input tokens processed.
    pub tokens: Counter<u64, AtomicU64>,
    /// Jobs waiting for the model.
    pub queue_depth: Gauge,
    /// Inference requests being handled (what --max-concurrent-requests bounds).
    pub in_flight: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh metrics, registered under the `kiln_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kiln");
        let requests = Family::<RouteLabels, Counter>::default();
        let request_seconds =
            Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(seconds);
        let queue_seconds = seconds();
        let inference_seconds = seconds();
        let batch_inputs = counts();
        let batch_tokens = counts();
        let tokens = Counter::<u64, AtomicU64>::default();
        let queue_depth = Gauge::default();
        let in_flight = Gauge::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request durations, by route and status",
            request_seconds.clone(),
        );
        registry.register(
            "queue_duration_seconds",
            "Time a job waited for the model",
            queue_seconds.clone(),
        );
        registry.register(
            "inference_duration_seconds",
            "Time one batch spent in the model",
            inference_seconds.clone(),
        );
        registry.register("batch_inputs", "Inputs per batch", batch_inputs.clone());
        registry.register("batch_tokens", "Tokens per batch", batch_tokens.clone());
        registry.register(
            "input_tokens",
            "Input tokens run through the model",
            tokens.clone(),
        );
        registry.register(
            "queue_depth",
            "Jobs waiting for the model",
            queue_depth.clone(),
        );
        registry.register(
            "requests_in_flight",
            "Inference requests being handled",
            in_flight.clone(),
        );
        Metrics {
            registry,
            requests,
            request_seconds,
            queue_seconds,
            inference_seconds,
            batch_inputs,
            batch_tokens,
            tokens,
            queue_depth,
            in_flight,
        }
    }

    /// Counts one answered request.
    pub fn observe_request(&self, route: &str, status: u16, seconds: f64) {
        let labels = RouteLabels {
            route: route.to_string(),
            status,
        };
        self.requests.get_or_create(&labels).inc();
        self.request_seconds.get_or_create(&labels).observe(seconds);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
