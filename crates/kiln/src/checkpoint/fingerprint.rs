//! A fingerprint of a model directory's contents, so a resumed run can check that its
//! checkpoint was made from the model it is given (the path alone may have been reused).

use crate::error::{Error, Result};
use std::path::Path;
use xxhash_rust::xxh3::Xxh3;

/// Whether a file of a model directory determines the model: config, weights, tokenizer.
fn is_model_file(name: &str) -> bool {
    name.ends_with(".safetensors")
        || matches!(
            name,
            "config.json"
                | "model.safetensors.index.json"
                | "adapter_config.json"
                | "tokenizer.json"
                | "vocab.txt"
                | "vocab.json"
                | "merges.txt"
        )
}

/// A hex digest of the model files of `dir` (names and bytes, in name order). XXH3 reads
/// memory at several GB/s, so a whole model is hashed in well under a second.
pub fn fingerprint(dir: &Path) -> Result<String> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io("read", dir, e))?;
    let mut names: Vec<String> = rd
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| is_model_file(n))
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(Error::MissingFile {
            path: dir.join("config.json"),
            hint: "expected a model directory".into(),
        });
    }
    let mut h = Xxh3::new();
    for name in names {
        let path = dir.join(&name);
        let f = std::fs::File::open(&path).map_err(|e| Error::io("open", &path, e))?;
        let len = f.metadata().map_err(|e| Error::io("read", &path, e))?.len();
        h.update(name.as_bytes());
        h.update(&len.to_le_bytes());
        if len > 0 {
            // SAFETY: read-only map of a file we only read; a concurrent writer could change
            // the digest, never memory safety of this read.
            let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| Error::io("map", &path, e))?;
            h.update(&map);
        }
    }
    Ok(format!("{:016x}", h.digest()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_bytes_same_fingerprint_any_change_another() {
        let d = std::env::temp_dir().join(format!("kiln-fp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("config.json"), b"{}").unwrap();
        std::fs::write(d.join("model.safetensors"), [1u8, 2, 3]).unwrap();
        std::fs::write(d.join("metrics.jsonl"), b"ignored").unwrap();
        let a = fingerprint(&d).unwrap();
        std::fs::write(d.join("metrics.jsonl"), b"still ignored").unwrap();
        assert_eq!(fingerprint(&d).unwrap(), a);
        std::fs::write(d.join("model.safetensors"), [1u8, 2, 4]).unwrap();
        assert_ne!(fingerprint(&d).unwrap(), a);
        std::fs::remove_dir_all(&d).unwrap();
        assert!(fingerprint(&d).is_err());
    }
}
