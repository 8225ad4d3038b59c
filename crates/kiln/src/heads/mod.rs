//! Task heads on top of the transformer core, with Hugging Face tensor names.

pub mod lm;
pub mod mlm;
pub mod pooler;
pub mod rtd;

pub use lm::LmHead;
pub use mlm::MlmHead;
pub use pooler::Pooler;
pub use rtd::RtdHead;
pub mod task;

pub use task::{HeadKind, Labels, TaskHead};
