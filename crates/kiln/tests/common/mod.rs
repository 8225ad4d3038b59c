//! Shared helpers of the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// Agreement with transformers' outputs (dropout off, f32).
pub const PARITY_ATOL: f32 = 1e-4;

/// The fixture directory (made by `tests/fixtures/make_fixtures.py`).
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Reads a fixture JSON file.
pub fn json(path: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

pub fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Largest absolute difference, asserting equal lengths.
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The all-MiniLM-L6-v2 directory obtained by `../shared/models/get-minilm.sh`. Tests that need
/// it fail (not skip) when it is missing: `.ci/run` obtains it.
pub fn minilm_dir() -> PathBuf {
    let dir = std::env::var("KILN_MINILM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            let cache = std::env::var("KILN_MODEL_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|_| {
                    PathBuf::from(std::env::var("HOME").unwrap_or_default())
                        .join(".cache/kiln-models")
                });
            cache.join("all-MiniLM-L6-v2")
        });
    assert!(
        dir.join("model.safetensors").exists(),
        "all-MiniLM-L6-v2 not found at {}: run ../shared/models/get-minilm.sh (or set KILN_MINILM_DIR)",
        dir.display()
    );
    dir
}
