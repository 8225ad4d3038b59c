//! A tokenizer and a model trained by Kiln (`kiln tokenizer train`, `kiln init`, `kiln pretrain`)
//! give the same token ids and logits in Kiln as in transformers. Fixtures and expected values
//! come from `tests/fixtures/make_roundtrip_fixtures.py` (rerun:
//! `~/.cache/kiln-ref-venv/bin/python crates/kiln/tests/fixtures/make_roundtrip_fixtures.py`).

mod common;

use common::*;
use kiln::checkpoint;
use kiln::model::Batch;
use kiln::tokenize::TokenizerKind;

/// Ids and logits of every text, each run alone, against transformers.
fn check_model(key: &str, kind: TokenizerKind) {
    let exp = json(&fixture("kiln-trained-expected.json"));
    let want = &exp[key];
    let dir = want["dir"].as_str().unwrap();
    let p = checkpoint::load(&fixture(dir)).unwrap();
    assert!(
        p.unused_tensors.is_empty(),
        "{dir}: unused {:?}",
        p.unused_tensors
    );
    let tok = p.tokenizer().unwrap();
    assert_eq!(tok.kind(), kind, "{dir}: tokenizer kind");
    let vocab = want["vocab_size"].as_u64().unwrap() as usize;
    assert_eq!(p.config().vocab_size, vocab, "{dir}: config vocab_size");
    assert_eq!(tok.vocab_size(), vocab, "{dir}: tokenizer vocabulary");

    let texts = exp["texts"].as_array().unwrap();
    let mut worst = 0.0f32;
    for (i, input) in want["inputs"].as_array().unwrap().iter().enumerate() {
        let text = texts[i].as_str().unwrap();
        let want_ids = ids(&input["input_ids"]);
        let enc = tok.encode(text, None).unwrap();
        assert_eq!(enc.ids, want_ids, "{dir}: token ids of {text:?}");
        let types = input.get("token_type_ids").map(ids);
        if let Some(t) = &types {
            assert_eq!(&enc.type_ids, t, "{dir}: token type ids of {text:?}");
        }
        let batch = Batch::packed(&[(&enc.ids, types.as_deref())]).unwrap();
        let hidden = p
            .model
            .forward(&batch, p.model.default_mask(), None)
            .unwrap();
        let n = enc.ids.len();
        let word = &p.model.embeddings.word;
        let logits = match (&p.mlm_head, &p.lm_head) {
            (Some(head), _) => head.forward(hidden.data(), n, word).unwrap(),
            (None, Some(head)) => head.forward(hidden.data(), n, word).unwrap(),
            (None, None) => panic!("{dir}: no language-model head loaded"),
        };
        let d = max_diff(&logits, &floats(&want["logits"][i]));
        assert!(d < PARITY_ATOL, "{dir}: logits of {text:?} differ by {d}");
        worst = worst.max(d);
    }
    eprintln!("{dir}: max logits difference {worst:e}");
}

#[test]
fn kiln_trained_bert_matches_transformers() {
    check_model("bert", TokenizerKind::WordPiece);
}

#[test]
fn kiln_trained_gpt2_matches_transformers() {
    check_model("gpt2", TokenizerKind::Bpe);
}
