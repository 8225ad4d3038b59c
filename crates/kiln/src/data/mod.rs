//! Reading training data: text corpora (plain text, JSONL, gzip), streamed; packing into
//! fixed-length sequences; masked-LM masking; labelled task data (JSONL, CSV, TSV).

pub mod corpus;
pub mod mlm;
pub mod pack;
pub mod records;
pub mod shuffle;

pub use corpus::Corpus;
pub use pack::{Framing, Packer};
pub use records::{read_records, Record};
pub use shuffle::Shuffled;
