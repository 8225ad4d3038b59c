//! Reading training data: text corpora (plain text, JSONL, gzip), streamed.

pub mod corpus;

pub use corpus::Corpus;
