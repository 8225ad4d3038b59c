//! Reading requests: the JSON body (a malformed or oversized one is a JSON 422 or 413, never
//! axum's plain-text rejection) and the `inputs` shapes TEI and OpenAI accept.

use super::error::ApiError;
use super::AppState;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::sync::Arc;

/// A JSON request body of type `T`.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<AppState>> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, ApiError> {
        // A client that sends its headers but not its body would hold a concurrency slot
        // for as long as it likes; the body must arrive within --read-timeout.
        let limit = state.opts.read_timeout;
        let read = tokio::time::timeout(limit, Bytes::from_request(req, state))
            .await
            .map_err(|_| {
                ApiError::timeout(format!(
                    "the request body did not arrive within {} s (--read-timeout)",
                    limit.as_secs_f64()
                ))
            })?;
        let bytes = read.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::too_large("the request body is larger than the server's --payload-limit")
            } else {
                ApiError::validation(format!("cannot read the request body: {}", e.body_text()))
            }
        })?;
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        // The path names the field at fault (`parameters.top_k: invalid type ...`).
        serde_path_to_error::deserialize(&mut de)
            .map(ApiJson)
            .map_err(|e| {
                let at = e.path().to_string();
                let inner = e.into_inner();
                if at == "." {
                    ApiError::validation(format!("invalid JSON body: {inner}"))
                } else {
                    ApiError::validation(format!("invalid JSON body at `{at}`: {inner}"))
                }
            })
    }
}

/// One input of a classifier: a text, or a text pair.
#[derive(Clone, Debug, PartialEq)]
pub enum Sequence {
    /// One text.
    Single(String),
    /// A text pair (`[text_a, text_b]`).
    Pair(String, String),
}

/// `inputs` as a string or a list of strings (a single string is a list of one).
pub fn texts(v: &Value, field: &str) -> Result<Vec<String>, ApiError> {
    match v {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, x)| match x {
                Value::String(s) => Ok(s.clone()),
                other => Err(ApiError::validation(format!(
                    "`{field}[{i}]`: expected a string, found {}",
                    kind(other)
                ))),
            })
            .collect(),
        other => Err(ApiError::validation(format!(
            "`{field}`: expected a string or a list of strings, found {}",
            kind(other)
        ))),
    }
}

/// `inputs` of TEI's `/predict`: a text, one `[a, b]` pair, or a list of texts and pairs.
/// Returns the sequences and whether the request was a single input (answered unwrapped).
/// As in TEI, a list of exactly two strings is one pair.
pub fn sequences(v: &Value) -> Result<(Vec<Sequence>, bool), ApiError> {
    fn pair(items: &[Value]) -> Option<Sequence> {
        match items {
            [Value::String(a), Value::String(b)] => Some(Sequence::Pair(a.clone(), b.clone())),
            _ => None,
        }
    }
    match v {
        Value::String(s) => Ok((vec![Sequence::Single(s.clone())], true)),
        Value::Array(items) => {
            if let Some(p) = pair(items) {
                return Ok((vec![p], true));
            }
            let seqs = items
                .iter()
                .enumerate()
                .map(|(i, x)| match x {
                    Value::String(s) => Ok(Sequence::Single(s.clone())),
                    Value::Array(p) => pair(p).ok_or_else(|| {
                        ApiError::validation(format!(
                            "`inputs[{i}]`: a pair is a list of two strings; this one has {} item(s)",
                            p.len()
                        ))
                    }),
                    other => Err(ApiError::validation(format!(
                        "`inputs[{i}]`: expected a string or a [text_a, text_b] pair, found {}",
                        kind(other)
                    ))),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((seqs, false))
        }
        other => Err(ApiError::validation(format!(
            "`inputs`: expected a string, a [text_a, text_b] pair or a list of them, found {}",
            kind(other)
        ))),
    }
}

/// OpenAI's `input`: a string, a list of strings, a list of token ids, or a list of such lists.
#[derive(Clone, Debug, PartialEq)]
pub enum OpenAiInput {
    /// Texts to tokenize.
    Texts(Vec<String>),
    /// Token ids, as given.
    Ids(Vec<Vec<u32>>),
}

/// Reads OpenAI's `input`.
pub fn openai_input(v: &Value) -> Result<OpenAiInput, ApiError> {
    let ids = |x: &[Value], at: &str| -> Result<Vec<u32>, ApiError> {
        x.iter()
            .enumerate()
            .map(|(j, t)| {
                t.as_u64()
                    .and_then(|t| u32::try_from(t).ok())
                    .ok_or_else(|| {
                        ApiError::validation(format!(
                            "`input{at}[{j}]`: a token id is a non-negative integer"
                        ))
                    })
            })
            .collect()
    };
    match v {
        Value::Array(items) if items.first().is_some_and(Value::is_number) => {
            Ok(OpenAiInput::Ids(vec![ids(items, "")?]))
        }
        Value::Array(items) if items.first().is_some_and(Value::is_array) => items
            .iter()
            .enumerate()
            .map(|(i, x)| match x {
                Value::Array(inner) => ids(inner, &format!("[{i}]")),
                other => Err(ApiError::validation(format!(
                    "`input[{i}]`: expected a list of token ids, found {}",
                    kind(other)
                ))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(OpenAiInput::Ids),
        other => texts(other, "input").map(OpenAiInput::Texts),
    }
}

/// A JSON value's kind, for error messages.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn predict_inputs_read_as_tei_reads_them() {
        let (s, one) = sequences(&json!("a")).unwrap();
        assert_eq!((s, one), (vec![Sequence::Single("a".into())], true));
        // Two strings are one pair, as TEI's untagged enums read them.
        let (s, one) = sequences(&json!(["a", "b"])).unwrap();
        assert_eq!(
            (s, one),
            (vec![Sequence::Pair("a".into(), "b".into())], true)
        );
        let (s, one) = sequences(&json!(["a", "b", "c"])).unwrap();
        assert_eq!(s.len(), 3);
        assert!(!one);
        let (s, _) = sequences(&json!([["a", "b"], "c"])).unwrap();
        assert_eq!(
            s,
            vec![
                Sequence::Pair("a".into(), "b".into()),
                Sequence::Single("c".into())
            ]
        );
        let e = sequences(&json!([["a"], "c"])).unwrap_err();
        assert!(e.message.contains("inputs[0]"), "{}", e.message);
        assert!(sequences(&json!(3)).is_err());
    }

    #[test]
    fn openai_inputs_take_texts_and_token_ids() {
        assert_eq!(
            openai_input(&json!("x")).unwrap(),
            OpenAiInput::Texts(vec!["x".into()])
        );
        assert_eq!(
            openai_input(&json!([1, 2])).unwrap(),
            OpenAiInput::Ids(vec![vec![1, 2]])
        );
        assert_eq!(
            openai_input(&json!([[1], [2, 3]])).unwrap(),
            OpenAiInput::Ids(vec![vec![1], vec![2, 3]])
        );
        let e = openai_input(&json!([1, -2])).unwrap_err();
        assert!(e.message.contains("input[1]"), "{}", e.message);
        let e = texts(&json!(["a", 2]), "inputs").unwrap_err();
        assert!(e.message.contains("inputs[1]"), "{}", e.message);
    }
}
