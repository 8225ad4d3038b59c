//! `GET /health`, `GET /info`, `GET /metrics`.

use super::St;
use crate::serve::error::ApiError;
use crate::serve::ServeTask;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;

/// 200 while the inference thread runs (the model is loaded before the server listens).
pub(crate) async fn health(axum::extract::State(st): St) -> Result<Json<Value>, ApiError> {
    if st.alive.load(Ordering::SeqCst) {
        Ok(Json(json!({ "status": "ok" })))
    } else {
        Err(ApiError::unavailable("the inference thread stopped"))
    }
}

/// The model, the task and the server's limits.
pub(crate) async fn info(axum::extract::State(st): St) -> Json<Value> {
    let model_type = match st.task {
        ServeTask::Embed => json!({ "embedding": {
            "pooling": st.pooling.map(|p| format!("{p:?}").to_lowercase()) } }),
        ServeTask::Classify => {
            let head = st
                .heads
                .get(&st.opts.default_adapter)
                .or_else(|| st.heads.values().next());
            let id2label: serde_json::Map<String, Value> = head
                .map(|h| {
                    h.labels
                        .names
                        .iter()
                        .enumerate()
                        .map(|(i, n)| (i.to_string(), json!(n)))
                        .collect()
                })
                .unwrap_or_default();
            json!({ "classifier": { "id2label": id2label } })
        }
        other => json!({ other.name(): {} }),
    };
    Json(json!({
        "model_id": st.model_id,
        "model_type": model_type,
        "architecture": st.model_type,
        "task": st.task.name(),
        "routes": st.task.routes(),
        "adapters": st.adapters,
        "default_adapter": st.opts.default_adapter,
        "max_input_length": st.max_input,
        "max_batch_tokens": st.opts.max_batch_tokens,
        "max_concurrent_requests": st.opts.max_concurrent_requests,
        "max_client_batch_size": st.opts.max_client_batch_size,
        "payload_limit": st.opts.payload_limit,
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

/// Prometheus' text format.
pub(crate) async fn metrics(axum::extract::State(st): St) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        st.metrics.render(),
    )
}
