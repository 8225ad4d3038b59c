//! One configured transformer core. BERT and GPT-2 are the same [`Transformer`] with different
//! switches ([`NormPlacement`], activation, [`MaskKind`](crate::engine::MaskKind), embeddings
//! norm, final norm) and a name table in [`arch`] that maps checkpoint tensor names to its slots.

pub mod arch;
pub mod batch;
pub mod block;
pub mod config;
pub mod embeddings;
pub mod init;
pub mod kv_cache;
pub mod lstm;
pub mod resize;
pub mod transformer;

pub use arch::Arch;
pub use batch::Batch;
pub use block::Block;
pub use config::{ModelConfig, NormPlacement};
pub use embeddings::Embeddings;
pub use kv_cache::KvCache;
pub use transformer::Transformer;
