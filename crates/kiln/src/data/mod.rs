//! Reading training data: text corpora (plain text, JSONL, gzip), streamed; packing into
//! fixed-length sequences; masked-LM masking.

pub mod corpus;
pub mod mlm;
pub mod pack;

pub use corpus::Corpus;
pub use pack::{Framing, Packer};
