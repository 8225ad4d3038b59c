//! `POST /tokenize` (TEI): the tokens of each input with their byte offsets.

use super::{check_count, St};
use crate::serve::error::ApiError;
use crate::serve::request::{texts, ApiJson};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;

fn yes() -> bool {
    true
}

/// TEI's `/tokenize` request.
#[derive(Deserialize)]
pub(crate) struct TokenizeRequest {
    inputs: Value,
    #[serde(default = "yes")]
    add_special_tokens: bool,
}

/// One token as TEI shows it: a special token's own spelling without offsets, otherwise the
/// input's bytes `start..stop`.
#[derive(Serialize)]
pub(crate) struct SimpleToken {
    id: u32,
    text: String,
    special: bool,
    start: Option<usize>,
    stop: Option<usize>,
}

/// `[[token, ...], ...]`, one list per input (a single string is a list of one).
pub(crate) async fn tokenize(
    axum::extract::State(st): St,
    ApiJson(r): ApiJson<TokenizeRequest>,
) -> Result<Json<Vec<Vec<SimpleToken>>>, ApiError> {
    let inputs = texts(&r.inputs, "inputs")?;
    check_count(&st, inputs.len(), "inputs")?;
    let mut out = Vec::with_capacity(inputs.len());
    for (i, text) in inputs.iter().enumerate() {
        let enc = if r.add_special_tokens {
            st.whole.encode(text, None)
        } else {
            st.whole.encode_plain(text)
        }
        .map_err(|e| ApiError::tokenizer(format!("`inputs[{i}]`: {e}")))?;
        out.push(
            enc.ids
                .iter()
                .enumerate()
                .map(|(k, &id)| {
                    let special = enc.special.get(k).copied().unwrap_or(false);
                    let (start, stop) = enc.offsets.get(k).copied().unwrap_or((0, 0));
                    let piece = (!special).then(|| text.get(start..stop)).flatten();
                    match piece {
                        Some(p) => SimpleToken {
                            id,
                            text: p.to_string(),
                            special,
                            start: Some(start),
                            stop: Some(stop),
                        },
                        None => SimpleToken {
                            id,
                            text: st.whole.id_to_token(id).unwrap_or_default(),
                            special,
                            start: None,
                            stop: None,
                        },
                    }
                })
                .collect(),
        );
    }
    Ok(Json(out))
}
