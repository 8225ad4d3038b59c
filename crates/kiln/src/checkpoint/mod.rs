//! Hugging Face model directories: `config.json`, `model.safetensors` (or shards) and the
//! tokenizer. Loading accepts the names real checkpoints use; saving writes what transformers'
//! `from_pretrained` loads.

pub mod fingerprint;
pub mod hub;
pub mod load;
pub mod save;
pub mod sentence;
pub mod weights;

pub use fingerprint::fingerprint;
pub use load::{load, Pretrained};
pub use save::{named_tensors, save};
pub use weights::{SaveDtype, WeightStore};

use crate::error::{Error, Result};

/// Tokenizer and metadata files copied along with a model.
pub const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
];

/// The other top-level files of a model directory besides its weights: the config, a shard
/// index, and the sentence-transformers module list and settings.
pub const CONFIG_FILES: &[&str] = &[
    "config.json",
    "model.safetensors.index.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
];
use std::io::Write;
use std::path::Path;

/// Writes a file atomically: a temporary file beside it, flushed, then renamed into place, so a
/// crash never leaves a half-written file under the final name.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("kiln"),
        std::process::id()
    ));
    let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
    f.write_all(bytes)
        .map_err(|e| Error::io("write", &tmp, e))?;
    f.sync_all().map_err(|e| Error::io("sync", &tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| Error::io("rename", path, e))
}

/// Reads and parses a JSON file, naming the file on error.
pub fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}
