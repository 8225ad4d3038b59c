//! `POST /predict` and `POST /rerank` (TEI) on a sequence classifier.

use super::{adapter, check_count, encode, run_encode, St};
use crate::serve::error::ApiError;
use crate::serve::request::{sequences, texts, ApiJson, Sequence};
use crate::serve::{AppState, HeadInfo};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

/// The head of the request's adapter.
fn head<'a>(st: &'a AppState, adapter: &Option<String>) -> Result<&'a HeadInfo, ApiError> {
    st.heads.get(adapter).ok_or_else(|| {
        ApiError::validation(format!(
            "the base model has no classification head; name one of the adapters with `adapter` (loaded: {})",
            st.adapters.join(", ")
        ))
    })
}

/// Scores from logits as TEI gives them: softmax over several outputs, the sigmoid of one;
/// the logits themselves with `raw_scores`.
fn scores(logits: &[f32], raw: bool) -> Vec<f32> {
    if raw {
        return logits.to_vec();
    }
    if logits.len() == 1 {
        return vec![1.0 / (1.0 + (-logits[0]).exp())];
    }
    let mut p = logits.to_vec();
    crate::engine::softmax::softmax_rows(&mut p, logits.len());
    p
}

/// TEI's `/predict` request.
#[derive(Deserialize)]
pub(crate) struct PredictRequest {
    inputs: Value,
    #[serde(default)]
    truncate: bool,
    #[serde(default)]
    raw_scores: bool,
    #[serde(default)]
    adapter: Option<String>,
}

/// Per input, every label with its score, highest first: `[{"score", "label"}, ...]` for a
/// single input, a list of those for a list.
pub(crate) async fn predict(
    axum::extract::State(st): St,
    ApiJson(r): ApiJson<PredictRequest>,
) -> Result<Json<Value>, ApiError> {
    let (inputs, single) = sequences(&r.inputs)?;
    check_count(&st, inputs.len(), "inputs")?;
    let adapter = adapter(&st, r.adapter)?;
    let head = head(&st, &adapter)?.clone();
    let (seqs, _) = encode(&st, &inputs, r.truncate, "inputs")?;
    let rows = run_encode(&st, adapter, seqs).await?;
    let answers: Vec<Value> = rows
        .iter()
        .map(|logits| {
            let mut ranked: Vec<(usize, f32)> = scores(logits, r.raw_scores)
                .into_iter()
                .enumerate()
                .collect();
            ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
            Value::Array(
                ranked
                    .into_iter()
                    .map(|(id, score)| json!({ "score": score, "label": head.labels.json(id) }))
                    .collect(),
            )
        })
        .collect();
    let mut answers = answers.into_iter();
    Ok(Json(match (single, answers.next()) {
        (true, Some(one)) => one,
        (_, first) => Value::Array(first.into_iter().chain(answers).collect()),
    }))
}

/// TEI's `/rerank` request.
#[derive(Deserialize)]
pub(crate) struct RerankRequest {
    query: String,
    texts: Value,
    #[serde(default)]
    truncate: bool,
    #[serde(default)]
    raw_scores: bool,
    #[serde(default)]
    return_text: bool,
    #[serde(default)]
    adapter: Option<String>,
}

/// `[{"index", "score"(, "text")}]`, highest score first: the cross-encoder's score of each
/// (query, text) pair.
pub(crate) async fn rerank(
    axum::extract::State(st): St,
    ApiJson(r): ApiJson<RerankRequest>,
) -> Result<Json<Value>, ApiError> {
    let docs = texts(&r.texts, "texts")?;
    check_count(&st, docs.len(), "texts")?;
    let adapter = adapter(&st, r.adapter)?;
    let head = head(&st, &adapter)?;
    if head.outputs != 1 {
        return Err(ApiError::validation(format!(
            "/rerank needs a cross-encoder with one output; this classifier has {} labels (use /predict)",
            head.outputs
        )));
    }
    let pairs: Vec<Sequence> = docs
        .iter()
        .map(|t| Sequence::Pair(r.query.clone(), t.clone()))
        .collect();
    let (seqs, _) = encode(&st, &pairs, r.truncate, "texts")?;
    let rows = run_encode(&st, adapter, seqs).await?;
    let mut ranked: Vec<(usize, f32)> = rows
        .iter()
        .map(|l| scores(l, r.raw_scores)[0])
        .enumerate()
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(Json(Value::Array(
        ranked
            .into_iter()
            .map(|(i, score)| {
                if r.return_text {
                    json!({ "index": i, "score": score, "text": docs[i] })
                } else {
                    json!({ "index": i, "score": score })
                }
            })
            .collect(),
    )))
}
