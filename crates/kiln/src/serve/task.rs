//! What a served model does, read from its directory, and the routes each task answers.

use crate::checkpoint::Pretrained;
use crate::error::{Error, Result};
use crate::heads::HeadKind;
use crate::model::Arch;

/// The task a server runs; it decides which inference routes exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServeTask {
    /// Sentence embeddings: `/embed`, `/v1/embeddings`.
    Embed,
    /// Sequence classification: `/predict`, and `/rerank` for one-output cross-encoders.
    Classify,
    /// A tag per word: `/tag`.
    Tag,
    /// Extractive question answering: `/qa`.
    Qa,
    /// Masked-token prediction: `/fill-mask`.
    FillMask,
    /// Text generation with a causal LM: `/generate`, `/generate_stream`, `/v1/completions`.
    Generate,
}

impl std::str::FromStr for ServeTask {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "embed" => Ok(ServeTask::Embed),
            "classify" => Ok(ServeTask::Classify),
            "tag" => Ok(ServeTask::Tag),
            "qa" => Ok(ServeTask::Qa),
            "fill-mask" => Ok(ServeTask::FillMask),
            "generate" => Ok(ServeTask::Generate),
            _ => Err(Error::Input(format!(
                "--task: \"{s}\" is not a served task (embed, classify, tag, qa, fill-mask, generate)"
            ))),
        }
    }
}

impl ServeTask {
    /// The name `--task` takes and `/info` reports.
    pub fn name(self) -> &'static str {
        match self {
            ServeTask::Embed => "embed",
            ServeTask::Classify => "classify",
            ServeTask::Tag => "tag",
            ServeTask::Qa => "qa",
            ServeTask::FillMask => "fill-mask",
            ServeTask::Generate => "generate",
        }
    }

    /// The inference routes of the task.
    pub fn routes(self) -> &'static [&'static str] {
        match self {
            ServeTask::Embed => &["/embed", "/v1/embeddings"],
            ServeTask::Classify => &["/predict", "/rerank"],
            ServeTask::Tag => &["/tag"],
            ServeTask::Qa => &["/qa"],
            ServeTask::FillMask => &["/fill-mask"],
            ServeTask::Generate => &["/generate", "/generate_stream", "/v1/completions"],
        }
    }

    /// The task of a model directory, as a user of transformers would expect it: a
    /// sentence-transformers directory embeds; a task head classifies, tags or answers; a
    /// masked-LM head fills masks; a causal-LM head generates; a bare encoder embeds (mean
    /// pooling).
    pub fn of_model(p: &Pretrained) -> Result<ServeTask> {
        if p.sentence.is_some() {
            return Ok(ServeTask::Embed);
        }
        if let Some(t) = &p.task {
            return Ok(match t.kind {
                HeadKind::Sequence => ServeTask::Classify,
                HeadKind::Token => ServeTask::Tag,
                HeadKind::Span => ServeTask::Qa,
            });
        }
        if p.lm_head.is_some() {
            return Ok(ServeTask::Generate);
        }
        if p.config().arch == Arch::Gpt2 {
            return Err(Error::Input(format!(
                "{} is a GPT-2 without a language-model head; serve it with --task embed",
                p.dir.display()
            )));
        }
        if p.mlm_head.is_some() {
            return Ok(ServeTask::FillMask);
        }
        Ok(ServeTask::Embed)
    }

    /// Checks that `p` (with its active adapter) has what the task needs.
    pub fn check(self, p: &Pretrained) -> Result<()> {
        match self {
            ServeTask::Embed => Ok(()),
            ServeTask::Classify => crate::infer::classify::sequence_head(p).map(|_| ()),
            ServeTask::Tag => crate::infer::tag::token_head(p).map(|_| ()),
            ServeTask::Qa => crate::infer::qa::span_head(p).map(|_| ()),
            ServeTask::FillMask => match p.mlm_head {
                Some(_) => Ok(()),
                None => Err(Error::Input(format!(
                    "{} has no masked-LM head to fill masks with; it has {}",
                    p.dir.display(),
                    p.head_description()
                ))),
            },
            ServeTask::Generate => crate::infer::Generator::new(p).map(|_| ()),
        }
    }
}
