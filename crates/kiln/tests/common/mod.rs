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

/// `kiln::train::finetune` run to the end without reports (`resume` as given).
pub fn run_finetune(
    model: &std::path::Path,
    out: &std::path::Path,
    cfg: &kiln::train::FinetuneConfig,
    resume: bool,
) -> kiln::Result<kiln::train::Summary> {
    let stop = std::sync::atomic::AtomicBool::new(false);
    kiln::train::finetune(model, out, cfg, resume, &stop, |_| {}, |_| {})
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

/// The all-MiniLM-L6-v2 directory obtained by `scripts/get-minilm.sh`. Tests that need
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
        "all-MiniLM-L6-v2 not found at {}: run scripts/get-minilm.sh (or set KILN_MINILM_DIR)",
        dir.display()
    );
    dir
}

/// Gradients agree within this fraction of each tensor's largest gradient.
#[allow(dead_code)]
pub const GRAD_RTOL: f32 = 1e-4;
/// Absolute floor: the attention key bias has an exactly-zero gradient (softmax ignores a
/// shift shared by a query's scores), so both sides hold only f32 rounding noise.
#[allow(dead_code)]
pub const GRAD_ATOL: f32 = 1e-6;
/// Losses agree within this relative error.
#[allow(dead_code)]
pub const LOSS_RTOL: f32 = 1e-5;

/// Checks a loss against PyTorch's (`want`) and every gradient in `grads` against
/// `fixtures/cls-train-parity/{name}_grads.safetensors` (HF names, same parameter set), and
/// prints the gradient that came closest to its tolerance.
#[allow(dead_code)]
pub fn assert_loss_and_grads(
    name: &str,
    loss: f32,
    want: f32,
    grads: &kiln::checkpoint::Pretrained,
) {
    let ours = kiln::checkpoint::named_tensors(grads).unwrap();
    let file = fixture("cls-train-parity").join(format!("{name}_grads.safetensors"));
    assert_loss_and_named_grads(name, loss, want, &ours, &file);
}

/// [`assert_loss_and_grads`] for gradients already under their file's names (`grads_file`).
#[allow(dead_code)]
pub fn assert_loss_and_named_grads(
    name: &str,
    loss: f32,
    want: f32,
    ours: &std::collections::BTreeMap<String, kiln::engine::Tensor>,
    grads_file: &std::path::Path,
) {
    assert!(
        (loss - want).abs() <= LOSS_RTOL * want.abs(),
        "{name}: loss {loss} vs {want}"
    );
    let hf = kiln::checkpoint::WeightStore::open_files(&[grads_file.to_path_buf()]).unwrap();
    let mut hf_names = hf.names();
    hf_names.sort();
    assert_eq!(
        ours.keys().cloned().collect::<Vec<_>>(),
        hf_names,
        "{name}: same parameter set"
    );
    // The tensor that comes closest to its tolerance: (share of the tolerance, name, diff, max |g|).
    let mut worst = (0.0f32, String::new(), 0.0f32, 0.0f32);
    for (n, t) in ours {
        let w = hf.get(n).unwrap_or_else(|e| panic!("{e}"));
        let scale = w.data().iter().fold(1e-8f32, |m, v| m.max(v.abs()));
        let d = max_diff(t.data(), w.data());
        let tol = (GRAD_RTOL * scale).max(GRAD_ATOL);
        assert!(
            d <= tol,
            "{name}: gradient of {n} differs by {d} (max |g| {scale})"
        );
        if d / tol > worst.0 {
            worst = (d / tol, n.clone(), d, scale);
        }
    }
    eprintln!(
        "{name}: loss {loss} vs {want} (rel {:e}); closest gradient {} differs by {:e} (max |g| {:e}, {:.0}% of its tolerance)",
        ((loss - want) / want).abs(),
        worst.1,
        worst.2,
        worst.3,
        worst.0 * 100.0
    );
}

/// A freshly initialized two-layer model of `arch` (transformers' init, as `kiln init` makes)
/// with the tiny fixture's tokenizer, saved into `dir`; returns `dir`. Learning tests start
/// here: the parity fixtures' deliberately odd weights learn per-token rules far more slowly.
#[allow(dead_code)]
pub fn fresh_tiny_model(arch: kiln::model::Arch, dir: &std::path::Path) -> PathBuf {
    let tok_dir = fixture(match arch {
        kiln::model::Arch::Gpt2 => "tiny-gpt2",
        kiln::model::Arch::Bert | kiln::model::Arch::DistilBert | kiln::model::Arch::Electra => {
            "tiny-bert"
        }
        kiln::model::Arch::Albert => "tiny-albert-mlm",
        kiln::model::Arch::Roberta => "tiny-roberta",
        kiln::model::Arch::Lstm => return fresh_lstm(dir, true),
    });
    let tok = kiln::tokenize::Tokenizer::from_dir(&tok_dir)
        .unwrap()
        .unwrap();
    let shape = kiln::model::init::InitShape {
        layers: Some(2),
        max_positions: Some(64),
        ..Default::default()
    };
    let mc = kiln::model::init::new_config(arch, "tiny", &shape, &tok).unwrap();
    let fresh = kiln::model::init::random_model(mc, tok, tok_dir, 7).unwrap();
    kiln::checkpoint::save(&fresh, dir, kiln::checkpoint::SaveDtype::F32).unwrap();
    dir.to_path_buf()
}

/// A freshly initialized tiny LSTM (2 layers, cell 24, projection 16; ELMo's biLM when
/// `bidirectional`) with the tiny BERT fixture's tokenizer, saved into `dir`; returns `dir`.
#[allow(dead_code)]
pub fn fresh_lstm(dir: &std::path::Path, bidirectional: bool) -> PathBuf {
    let tok_dir = fixture("tiny-bert");
    let tok = kiln::tokenize::Tokenizer::from_dir(&tok_dir)
        .unwrap()
        .unwrap();
    let shape = kiln::model::init::InitShape {
        layers: Some(2),
        hidden: Some(24),
        proj: Some(16),
        bidirectional,
        ..Default::default()
    };
    let mc = kiln::model::init::new_config(kiln::model::Arch::Lstm, "tiny", &shape, &tok).unwrap();
    let fresh = kiln::model::init::random_model(mc, tok, tok_dir, 7).unwrap();
    kiln::checkpoint::save(&fresh, dir, kiln::checkpoint::SaveDtype::F32).unwrap();
    dir.to_path_buf()
}
