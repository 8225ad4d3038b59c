//! `POST /tag`, `POST /qa` and `POST /fill-mask`: whole requests run in their turn on the
//! model, answering with the JSON objects `kiln predict` and `kiln fill-mask` write.

use super::{adapter, check_count, run_whole, St};
use crate::data::records::Record;
use crate::infer::{Predictor, TaskForm};
use crate::serve::error::ApiError;
use crate::serve::request::{kind, texts, ApiJson};
use crate::train::FinetuneConfig;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Value};

/// The request of `/tag` and `/qa`.
#[derive(Deserialize)]
pub(crate) struct RecordsRequest {
    inputs: Value,
    #[serde(default)]
    adapter: Option<String>,
}

/// The records of `inputs`: one object or a list of them, fields as in `kiln predict`'s
/// JSON lines; for tagging a string is its whitespace-separated words.
fn records(inputs: &Value, strings_are_words: bool) -> Result<Vec<Record>, ApiError> {
    let items: Vec<&Value> = match inputs {
        Value::Array(v) => v.iter().collect(),
        other => vec![other],
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let fields = match v {
                Value::Object(m) => m.clone(),
                Value::String(s) if strings_are_words => {
                    let words: Vec<Value> = s.split_whitespace().map(|w| json!(w)).collect();
                    let mut m = serde_json::Map::new();
                    m.insert("tokens".into(), Value::Array(words));
                    m
                }
                other => {
                    return Err(ApiError::validation(format!(
                        "`inputs[{i}]`: expected {}, found {}",
                        if strings_are_words {
                            "an object with \"tokens\" or a string"
                        } else {
                            "an object with \"question\" and \"context\""
                        },
                        kind(other)
                    )))
                }
            };
            Ok(Record {
                fields,
                path: "inputs".into(),
                line: i + 1,
            })
        })
        .collect()
}

/// A predictor's error at a record, said as the request's input (`inputs[2]`), not a line.
fn at_input(e: crate::Error) -> ApiError {
    let msg = e.to_string();
    let rewritten = msg
        .strip_prefix("inputs line ")
        .and_then(|rest| rest.split_once(": "))
        .and_then(|(n, m)| Some(format!("`inputs[{}]`: {m}", n.parse::<usize>().ok()? - 1)));
    match e {
        crate::Error::Input(_) => ApiError::validation(rewritten.unwrap_or(msg)),
        other => ApiError::from_kiln(other),
    }
}

async fn run_records(
    st: &crate::serve::AppState,
    r: RecordsRequest,
    form: TaskForm,
) -> Result<Response, ApiError> {
    let recs = records(&r.inputs, form == TaskForm::Tag)?;
    check_count(st, recs.len(), "inputs")?;
    let adapter = adapter(st, r.adapter)?;
    run_whole(
        st,
        adapter,
        Box::new(move |p| {
            let pr = Predictor::new(p, Some(form), FinetuneConfig::default(), None)
                .map_err(ApiError::from_kiln)?;
            let answers = pr.predict(&recs).map_err(at_input)?;
            Ok(Value::Array(answers).to_string())
        }),
    )
    .await
}

/// One `{"tags": [...], ...}` per input, as `kiln predict` tags.
pub(crate) async fn tag(
    axum::extract::State(st): St,
    ApiJson(r): ApiJson<RecordsRequest>,
) -> Result<Response, ApiError> {
    run_records(&st, r, TaskForm::Tag).await
}

/// One `{"answer", "score", "start", "end"}` per input, as `kiln predict` answers.
pub(crate) async fn qa(
    axum::extract::State(st): St,
    ApiJson(r): ApiJson<RecordsRequest>,
) -> Result<Response, ApiError> {
    run_records(&st, r, TaskForm::Qa).await
}

fn five() -> usize {
    5
}

/// The `/fill-mask` request.
#[derive(Deserialize)]
pub(crate) struct FillMaskRequest {
    inputs: Value,
    #[serde(default = "five")]
    top_k: usize,
    #[serde(default)]
    adapter: Option<String>,
}

/// One `{"text", "masks": [[{"token_id", "token", "score"}, ...], ...]}` per input.
pub(crate) async fn fill_mask(
    axum::extract::State(st): St,
    ApiJson(r): ApiJson<FillMaskRequest>,
) -> Result<Response, ApiError> {
    let inputs = texts(&r.inputs, "inputs")?;
    check_count(&st, inputs.len(), "inputs")?;
    if r.top_k == 0 || r.top_k > st.vocab_size {
        return Err(ApiError::validation(format!(
            "`top_k`: {} is not between 1 and the vocabulary's {} tokens",
            r.top_k, st.vocab_size
        )));
    }
    let adapter = adapter(&st, r.adapter)?;
    let top_k = r.top_k;
    run_whole(
        &st,
        adapter,
        Box::new(move |p| {
            let tok = p.tokenizer().map_err(ApiError::from_kiln)?;
            let mut rows = Vec::with_capacity(inputs.len());
            #[derive(serde::Serialize)]
            struct Row<'a> {
                text: &'a str,
                masks: Vec<Vec<crate::infer::MaskPrediction>>,
            }
            for (i, text) in inputs.iter().enumerate() {
                let masks = crate::infer::fill_mask(p, tok, text, top_k).map_err(|e| {
                    let mut a = ApiError::from_kiln(e);
                    a.message = format!("`inputs[{i}]`: {}", a.message);
                    a
                })?;
                rows.push(Row { text, masks });
            }
            serde_json::to_string(&rows).map_err(|e| ApiError::backend(e.to_string()))
        }),
    )
    .await
}
