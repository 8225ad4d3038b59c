//! Models named by Hugging Face hub id (`sentence-transformers/all-MiniLM-L6-v2`), as
//! transformers, TEI and candle users name them: looked up in the local hub cache (the layout
//! transformers and `huggingface_hub` write, so a model already downloaded by Python tools is
//! found offline), else downloaded into it with the `hf-hub` client. Endpoint, cache, token and
//! offline mode come from the environment variables those tools read.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// The hub cache: `HF_HUB_CACHE`, else `HF_HOME/hub`, else `XDG_CACHE_HOME/huggingface/hub`,
/// else `~/.cache/huggingface/hub` (huggingface_hub's order).
pub fn cache_dir() -> PathBuf {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(c) = var("HF_HUB_CACHE").or_else(|| var("HUGGINGFACE_HUB_CACHE")) {
        return c;
    }
    let home = var("HF_HOME").unwrap_or_else(|| {
        var("XDG_CACHE_HOME")
            .or_else(|| var("HOME").map(|h| h.join(".cache")))
            .unwrap_or_else(|| PathBuf::from(".cache"))
            .join("huggingface")
    });
    home.join("hub")
}

/// Whether `s` can be a hub id: `name` or `owner/name` of letters, digits, `-`, `_`, `.`.
pub fn is_hub_id(s: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && !p.starts_with('.')
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    match s.split_once('/') {
        Some((owner, name)) => part(owner) && part(name),
        None => part(s),
    }
}

/// The cache folder of a model repository.
pub fn repo_dir(cache: &Path, id: &str) -> PathBuf {
    cache.join(format!("models--{}", id.replace('/', "--")))
}

/// Whether a downloaded snapshot holds a model Kiln can load.
fn complete(dir: &Path) -> bool {
    let weights = dir.join("model.safetensors").is_file()
        || dir.join("model.safetensors.index.json").is_file();
    (dir.join("config.json").is_file() || dir.join("modules.json").is_file()) && weights
}

/// The snapshot `refs/main` points to, when it holds a loadable model.
fn cached_snapshot(repo: &Path) -> Option<PathBuf> {
    let sha = std::fs::read_to_string(repo.join("refs/main")).ok()?;
    let dir = repo.join("snapshots").join(sha.trim());
    complete(&dir).then_some(dir)
}

fn offline() -> bool {
    ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"].iter().any(|k| {
        std::env::var(k)
            .is_ok_and(|v| ["1", "ON", "YES", "TRUE"].contains(&v.to_uppercase().as_str()))
    })
}

/// The files of a repository that make a Kiln model directory: config, safetensors weights,
/// tokenizer, sentence-transformers modules. (Repositories also carry ONNX, TensorFlow and
/// PyTorch-pickle copies of the weights, which are skipped.)
fn wanted(name: &str) -> bool {
    match name.split_once('/') {
        None => {
            super::TOKENIZER_FILES.contains(&name)
                || super::CONFIG_FILES.contains(&name)
                || name.ends_with(".safetensors")
        }
        // sentence-transformers module folders: `1_Pooling/config.json`, ...
        Some((folder, file)) => {
            folder
                .split_once('_')
                .is_some_and(|(n, _)| n.parse::<u32>().is_ok())
                && !file.contains('/')
                && file.ends_with(".json")
        }
    }
}

/// A local model directory for `--model`: the path itself when it is a directory; otherwise a
/// hub id, from the hub cache or downloaded (unless `HF_HUB_OFFLINE` is set).
pub fn resolve(model: &Path) -> Result<PathBuf> {
    let text = model.to_string_lossy();
    if model.is_dir() || !is_hub_id(&text) {
        return Ok(model.to_path_buf());
    }
    let cache = cache_dir();
    let repo = repo_dir(&cache, &text);
    if let Some(dir) = cached_snapshot(&repo) {
        return Ok(dir);
    }
    let fail = |msg: String| Error::Hub {
        id: text.to_string(),
        cache: repo.clone(),
        msg,
    };
    if offline() {
        return Err(fail(
            "HF_HUB_OFFLINE is set, so it was not downloaded".into(),
        ));
    }
    download(&text, &cache, &repo).map_err(fail)
}

fn download(id: &str, cache: &Path, repo: &Path) -> std::result::Result<PathBuf, String> {
    use hf_hub::api::sync::ApiBuilder;
    let endpoint = std::env::var("HF_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| "https://huggingface.co".into());
    let token = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty());
    let api = ApiBuilder::from_cache(hf_hub::Cache::new(cache.to_path_buf()))
        .with_endpoint(endpoint.trim_end_matches('/').to_string())
        .with_token(token)
        .with_progress(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .build()
        .map_err(|e| e.to_string())?;
    let api = api.model(id.to_string());
    let info = api
        .info()
        .map_err(|e| format!("cannot reach the hub at {endpoint} ({e})"))?;
    let files: Vec<&str> = info
        .siblings
        .iter()
        .map(|s| s.rfilename.as_str())
        .filter(|f| wanted(f))
        .collect();
    if !files.iter().any(|f| f.ends_with(".safetensors")) {
        return Err(
            "the repository has no safetensors weights (Kiln does not read PyTorch pickles)".into(),
        );
    }
    for f in &files {
        api.get(f).map_err(|e| format!("downloading {f}: {e}"))?;
    }
    let dir = repo.join("snapshots").join(&info.sha);
    if !complete(&dir) {
        return Err(format!(
            "{} lacks config.json or its weights after the download",
            dir.display()
        ));
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_and_files_are_told_apart() {
        for id in [
            "gpt2",
            "sentence-transformers/all-MiniLM-L6-v2",
            "org/m_1.5",
        ] {
            assert!(is_hub_id(id), "{id}");
        }
        for not in [
            "./model",
            "/abs/path",
            "a/b/c",
            "../up",
            "",
            "org/",
            "with space",
        ] {
            assert!(!is_hub_id(not), "{not}");
        }
        for f in [
            "config.json",
            "model.safetensors",
            "model-00001-of-00002.safetensors",
            "1_Pooling/config.json",
        ] {
            assert!(wanted(f), "{f}");
        }
        for f in [
            "pytorch_model.bin",
            "onnx/model.onnx",
            "onnx/config.json",
            "README.md",
            "tf_model.h5",
        ] {
            assert!(!wanted(f), "{f}");
        }
    }
}
