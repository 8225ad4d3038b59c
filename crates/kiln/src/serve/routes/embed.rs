//! `POST /embed` (TEI) and `POST /v1/embeddings` (OpenAI).

use super::{adapter, check_count, encode, run_encode, St};
use crate::serve::batcher::Seq;
use crate::serve::error::ApiError;
use crate::serve::request::{openai_input, texts, ApiJson, OpenAiInput, Sequence};
use axum::Json;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

fn yes() -> bool {
    true
}

/// TEI's `/embed` request.
#[derive(Deserialize)]
pub(crate) struct EmbedRequest {
    inputs: Value,
    #[serde(default = "yes")]
    normalize: bool,
    #[serde(default)]
    truncate: bool,
    #[serde(default)]
    adapter: Option<String>,
}

/// `[[…], …]`: one embedding per input (a single string is a list of one).
pub(crate) async fn tei(
    axum::extract::State(st): St,
    ApiJson(r): ApiJson<EmbedRequest>,
) -> Result<Json<Vec<Vec<f32>>>, ApiError> {
    let inputs: Vec<Sequence> = texts(&r.inputs, "inputs")?
        .into_iter()
        .map(Sequence::Single)
        .collect();
    check_count(&st, inputs.len(), "inputs")?;
    let adapter = adapter(&st, r.adapter)?;
    let (seqs, _) = encode(&st, &inputs, r.truncate, "inputs")?;
    let mut rows = run_encode(&st, adapter, seqs).await?;
    if r.normalize {
        rows.iter_mut()
            .for_each(|v| crate::infer::embed::l2_normalize(v));
    }
    Ok(Json(rows))
}

/// OpenAI's embeddings request.
#[derive(Deserialize)]
pub(crate) struct OpenAiRequest {
    input: Value,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<usize>,
    #[serde(default)]
    adapter: Option<String>,
}

/// `{"object": "list", "data": [...], "model", "usage"}`; embeddings L2-normalized, as
/// OpenAI's are; `"encoding_format": "base64"` packs each as little-endian f32 bytes.
pub(crate) async fn openai(
    axum::extract::State(st): St,
    ApiJson(r): ApiJson<OpenAiRequest>,
) -> Result<Json<Value>, ApiError> {
    let base64 = match r.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(f) => {
            return Err(ApiError::validation(format!(
                "`encoding_format`: \"{f}\" is neither \"float\" nor \"base64\""
            )))
        }
    };
    let adapter = adapter(&st, r.adapter)?;
    let (seqs, tokens) = match openai_input(&r.input)? {
        OpenAiInput::Texts(t) => {
            check_count(&st, t.len(), "input")?;
            let seqs: Vec<Sequence> = t.into_iter().map(Sequence::Single).collect();
            // OpenAI cuts nothing; an over-long input is an error, as there.
            encode(&st, &seqs, false, "input")?
        }
        OpenAiInput::Ids(ids) => {
            check_count(&st, ids.len(), "input")?;
            let mut seqs = Vec::with_capacity(ids.len());
            let mut tokens = 0;
            for (i, s) in ids.into_iter().enumerate() {
                if s.is_empty() {
                    return Err(ApiError::validation(format!("`input[{i}]` has no tokens")));
                }
                if let Some(bad) = s.iter().find(|&&t| t as usize >= st.vocab_size) {
                    return Err(ApiError::validation(format!(
                        "`input[{i}]`: token id {bad} is outside the vocabulary of {} tokens",
                        st.vocab_size
                    )));
                }
                if s.len() > st.max_input {
                    return Err(ApiError::too_large(format!(
                        "`input[{i}]` has {} tokens, more than this server's {} (--max-input-length)",
                        s.len(),
                        st.max_input
                    )));
                }
                tokens += s.len();
                seqs.push(Seq {
                    type_ids: vec![0; s.len()],
                    ids: s,
                });
            }
            (seqs, tokens)
        }
    };
    let mut rows = run_encode(&st, adapter, seqs).await?;
    if let Some(d) = r.dimensions {
        let width = rows.first().map_or(0, Vec::len);
        if d == 0 || d > width {
            return Err(ApiError::validation(format!(
                "`dimensions`: {d} is not between 1 and the model's {width}"
            )));
        }
        // Matryoshka-style: the leading dimensions, normalized again below.
        rows.iter_mut().for_each(|v| v.truncate(d));
    }
    let data: Vec<Value> = rows
        .iter_mut()
        .enumerate()
        .map(|(i, v)| {
            crate::infer::embed::l2_normalize(v);
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({ "object": "embedding", "index": i, "embedding": embedding })
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": r.model.unwrap_or_else(|| st.model_id.clone()),
        "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
    })))
}
