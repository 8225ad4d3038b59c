//! Kiln: pre-train, fine-tune, compress and run transformer language models on the CPU.
//!
//! The crate is laid out as the architecture: [`engine`] (tensors and fused kernels),
//! [`model`] (one configured transformer core and the per-architecture name tables), [`heads`]
//! (task heads), [`peft`] (LoRA and bottleneck adapters), [`tokenize`] (input encoding), [`checkpoint`] (Hugging Face model directories),
//! and [`infer`] (the inference tasks behind the CLI).

pub mod checkpoint;
pub mod compress;
pub mod data;
pub mod engine;
pub mod error;
pub mod heads;
pub mod infer;
pub mod metrics;
pub mod model;
pub mod peft;
pub mod plot;
pub mod serve;
pub mod tokenize;
pub mod train;

pub use error::{Error, Result};
