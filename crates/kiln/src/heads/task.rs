//! Fine-tuning heads, one linear layer over the transformer's output, under the names
//! transformers uses:
//!
//! | kind | BERT | GPT-2 |
//! |---|---|---|
//! | sequence classification / regression | pooler → dropout → `classifier` | last token → `score` (no bias) |
//! | token classification | dropout → `classifier` | dropout → `classifier` |
//! | extractive QA (start/end logits) | `qa_outputs` | – |
//!
//! The label set lives in `config.json` as transformers writes it (`id2label`, `label2id`,
//! `problem_type`), plus `kiln_integer_labels` so predictions write integer labels back as
//! integers.

use crate::engine::Linear;
use crate::error::{Error, Result};
use crate::model::Arch;

/// What a task head predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadKind {
    /// One class (or one value) per sequence.
    Sequence,
    /// One class per token.
    Token,
    /// Start and end logits per token (extractive QA).
    Span,
}

impl HeadKind {
    /// The transformers class for `arch`, if it has one.
    pub fn architecture(self, arch: Arch) -> Option<&'static str> {
        let c = arch.names().classes;
        match self {
            HeadKind::Sequence => c.sequence,
            HeadKind::Token => c.token,
            HeadKind::Span => c.span,
        }
    }

    /// The kind a transformers class name stands for.
    pub fn from_architecture(name: &str) -> Option<Self> {
        if name.ends_with("ForSequenceClassification") {
            Some(HeadKind::Sequence)
        } else if name.ends_with("ForTokenClassification") {
            Some(HeadKind::Token)
        } else if name.ends_with("ForQuestionAnswering") {
            Some(HeadKind::Span)
        } else {
            None
        }
    }

    /// The Hugging Face module name of the output layer.
    pub fn module(self, arch: Arch) -> &'static str {
        arch.names().heads[self as usize]
    }
}

/// The label set of a head.
#[derive(Clone, Debug, PartialEq)]
pub struct Labels {
    /// Label names in id order (for regression: one name).
    pub names: Vec<String>,
    /// One real-valued output trained with mean squared error.
    pub regression: bool,
    /// The training data wrote labels as integers (predictions write them back so).
    pub integer: bool,
}

impl Labels {
    /// Reads `id2label` / `num_labels` / `problem_type` from a raw `config.json`.
    pub fn from_config(raw: &serde_json::Value) -> Option<Labels> {
        let map = raw.get("id2label").and_then(|m| m.as_object());
        let n = map.map(|m| m.len()).or_else(|| {
            raw.get("num_labels")
                .and_then(|n| n.as_u64())
                .map(|n| n as usize)
        })?;
        let mut names: Vec<String> = (0..n).map(|i| format!("LABEL_{i}")).collect();
        if let Some(m) = map {
            for (k, v) in m {
                if let (Ok(i), Some(name)) = (k.parse::<usize>(), v.as_str()) {
                    if i < n {
                        names[i] = name.to_string();
                    }
                }
            }
        }
        let regression = raw.get("problem_type").and_then(|p| p.as_str()) == Some("regression")
            || (n == 1 && raw.get("problem_type").is_none());
        let integer = raw
            .get("kiln_integer_labels")
            .and_then(|b| b.as_bool())
            .unwrap_or(false);
        Some(Labels {
            names,
            regression,
            integer,
        })
    }

    /// Writes the label set into a raw `config.json`.
    pub fn write(&self, raw: &mut serde_json::Value) {
        let id2label: serde_json::Map<String, serde_json::Value> = self
            .names
            .iter()
            .enumerate()
            .map(|(i, n)| (i.to_string(), n.clone().into()))
            .collect();
        let label2id: serde_json::Map<String, serde_json::Value> = self
            .names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i.into()))
            .collect();
        raw["id2label"] = id2label.into();
        raw["label2id"] = label2id.into();
        raw["num_labels"] = self.names.len().into();
        raw["problem_type"] = if self.regression {
            "regression"
        } else {
            "single_label_classification"
        }
        .into();
        raw["kiln_integer_labels"] = self.integer.into();
    }

    /// Outputs of the head: one per label, one for regression.
    pub fn outputs(&self) -> usize {
        if self.regression {
            1
        } else {
            self.names.len()
        }
    }

    /// The id of a label name.
    pub fn id(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// A label as a prediction shows it: its name ("positive"), or, for classes the training
    /// data wrote as integers without names, the integer.
    pub fn json(&self, id: usize) -> serde_json::Value {
        let name = self.names.get(id).cloned().unwrap_or_default();
        match name.parse::<i64>() {
            Ok(i) if self.integer => i.into(),
            _ => name.into(),
        }
    }
}

/// Dropout before a head's output layer, as transformers sets it: BERT, RoBERTa and ELECTRA heads use
/// `classifier_dropout`, else the hidden dropout; GPT-2's token classifier
/// `classifier_dropout`, else 0.1 (never `resid_pdrop`); GPT-2's sequence `score` none;
/// DistilBERT `seq_classif_dropout`, `dropout` and `qa_dropout`; ALBERT
/// `classifier_dropout_prob` (none before `qa_outputs`).
pub fn head_dropout(config: &crate::model::ModelConfig, kind: HeadKind) -> f32 {
    let explicit = config.raw["classifier_dropout"].as_f64();
    let key = |k: &str, default: f64| config.raw[k].as_f64().unwrap_or(default);
    (match (config.arch, kind) {
        (Arch::Gpt2, HeadKind::Sequence) => 0.0,
        (Arch::Gpt2, _) => explicit.unwrap_or(0.1),
        (Arch::Bert | Arch::Roberta | Arch::Electra, HeadKind::Span) => 0.0,
        (Arch::Bert | Arch::Roberta | Arch::Electra, _) => {
            explicit.unwrap_or(config.hidden_dropout)
        }
        (Arch::Albert, HeadKind::Span) => 0.0,
        (Arch::Albert, _) => key("classifier_dropout_prob", 0.1),
        (Arch::DistilBert, HeadKind::Sequence) => key("seq_classif_dropout", 0.2),
        (Arch::DistilBert, HeadKind::Token) => config.hidden_dropout,
        (Arch::DistilBert, HeadKind::Span) => key("qa_dropout", 0.1),
        // An LSTM's heads drop out as its layers do.
        (Arch::Lstm, _) => explicit.unwrap_or(config.hidden_dropout),
    }) as f32
}

/// A fine-tuning head: its kind, its output layer and its labels.
#[derive(Clone, Debug)]
pub struct TaskHead {
    /// What it predicts.
    pub kind: HeadKind,
    /// The output layer, `[outputs, hidden]`.
    pub linear: Linear,
    /// The labels (for QA: "start", "end").
    pub labels: Labels,
    /// Dropout before the output layer in training (`classifier_dropout`, else the hidden
    /// dropout, as transformers does).
    pub dropout: f32,
}

impl TaskHead {
    /// Checks that the output layer matches the label set.
    pub fn check(&self) -> Result<()> {
        let want = match self.kind {
            HeadKind::Span => 2,
            _ => self.labels.outputs(),
        };
        if self.linear.out_features() != want {
            return Err(Error::Input(format!(
                "the {} layer has {} outputs but the config names {want} labels",
                match self.kind {
                    HeadKind::Span => "qa_outputs",
                    _ => "classifier",
                },
                self.linear.out_features()
            )));
        }
        Ok(())
    }
}
