//! Real weights: all-MiniLM-L6-v2 sentence embeddings against sentence-transformers'
//! (expected values in `fixtures/minilm_expected.json`, made by `make_fixtures.py`).

mod common;

use common::*;
use kiln::checkpoint;
use kiln::checkpoint::sentence::Pooling;
use kiln::infer::embed::cosine;
use kiln::infer::{EmbedOptions, Embedder};

/// Required agreement with sentence-transformers.
const MIN_COSINE: f32 = 0.99999;

#[test]
fn minilm_embeddings_match_sentence_transformers() {
    let p = checkpoint::load(&minilm_dir()).unwrap();
    assert!(p.unused_tensors.is_empty(), "{:?}", p.unused_tensors);
    let exp = json(&fixture("minilm_expected.json"));
    let opts = EmbedOptions::defaults_for(&p);
    // The sentence-transformers settings, not tokenizer.json's truncation (128), are the defaults.
    assert_eq!(
        opts,
        EmbedOptions {
            pooling: Pooling::Mean,
            normalize: true,
            max_length: 256,
            batch_size: 32,
            layer: Default::default(),
        }
    );
    let sentences: Vec<&str> = exp["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert!(sentences.len() >= 20);
    let emb = Embedder::new(&p, opts.clone()).unwrap();
    let got = emb.embed(&sentences).unwrap();
    let mut tok = p.tokenizer().unwrap().clone();
    tok.set_truncation(Some(256), Default::default()).unwrap();
    for (i, s) in sentences.iter().enumerate() {
        assert_eq!(
            tok.encode(s, None).unwrap().ids,
            ids(&exp["input_ids"][i]),
            "token ids of {s:?}"
        );
        let want = floats(&exp["embeddings"][i]);
        let c = cosine(&got[i], &want);
        assert!(c >= MIN_COSINE, "sentence {i} {s:?}: cosine {c}");
    }
    // Batched (one packed batch) equals one by one.
    let one_by_one = Embedder::new(
        &p,
        EmbedOptions {
            batch_size: 1,
            ..opts
        },
    )
    .unwrap()
    .embed(&sentences)
    .unwrap();
    for (a, b) in got.iter().zip(&one_by_one) {
        assert!(max_diff(a, b) < 1e-5);
    }
}

#[test]
fn minilm_layer_outputs_match_transformers() {
    let p = checkpoint::load(&minilm_dir()).unwrap();
    let exp = json(&fixture("minilm_expected.json"));
    for i in 0..3 {
        let x = ids(&exp["input_ids"][i]);
        let batch = kiln::model::Batch::packed(&[(&x, None)]).unwrap();
        let hidden = p
            .model
            .forward(&batch, p.model.default_mask(), None)
            .unwrap();
        let d = max_diff(hidden.data(), &floats(&exp["last_hidden_state_first3"][i]));
        assert!(d < PARITY_ATOL, "sentence {i}: {d}");
    }
}
