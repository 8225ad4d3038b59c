//! Inference tasks behind the CLI: sentence embeddings, fill-mask, text generation, the
//! contextual word-similarity picture, and the fine-tuned heads (classify, tag, extractive QA).

pub mod classify;
pub mod embed;
pub mod fill_mask;
pub mod generate;
pub mod predict;
pub mod qa;
pub mod similarity;
pub mod tag;
pub mod text_stream;

pub use embed::{EmbedOptions, Embedder};
pub use fill_mask::{fill_mask, MaskPrediction};
pub use generate::{Decoding, Finish, GenerateOptions, Generator, Strategy};
pub use predict::{Predictor, TaskForm};
pub use text_stream::TextStream;
