//! Parity with transformers on tiny random checkpoints exported by
//! `tests/fixtures/make_fixtures.py` (rerun: `~/.cache/kiln-ref-venv/bin/python
//! crates/kiln/tests/fixtures/make_fixtures.py`).

mod common;

use common::*;
use kiln::checkpoint::{self, Pretrained};
use kiln::infer::{GenerateOptions, Generator, Strategy};
use kiln::model::Batch;

fn encode_text(p: &Pretrained, text: &serde_json::Value) -> kiln::tokenize::Encoding {
    let tok = p.tokenizer().unwrap();
    match text {
        serde_json::Value::Array(pair) => tok
            .encode(pair[0].as_str().unwrap(), Some(pair[1].as_str().unwrap()))
            .unwrap(),
        t => {
            let s = t.as_str().unwrap();
            if p.config().arch == kiln::model::Arch::Gpt2 {
                tok.encode_plain(s).unwrap()
            } else {
                tok.encode(s, None).unwrap()
            }
        }
    }
}

/// Hidden states and logits of every fixture input, each run alone, against transformers.
fn check_model(dir: &str, expected_dir: &str) {
    let p = checkpoint::load(&fixture(dir)).unwrap();
    let exp = json(&fixture(expected_dir).join("expected.json"));
    let texts = exp["texts"].as_array().unwrap();
    for (i, input) in exp["inputs"].as_array().unwrap().iter().enumerate() {
        let want_ids = ids(&input["input_ids"]);
        let enc = encode_text(&p, &texts[i]);
        assert_eq!(enc.ids, want_ids, "{dir}: token ids of input {i}");
        let types = input.get("token_type_ids").map(ids);
        if let Some(t) = &types {
            assert_eq!(&enc.type_ids, t, "{dir}: token type ids of input {i}");
        }
        let batch = Batch::packed(&[(&want_ids, types.as_deref())]).unwrap();
        let hidden = p
            .model
            .forward(&batch, p.model.default_mask(), None)
            .unwrap();
        let d = max_diff(hidden.data(), &floats(&exp["last_hidden_state"][i]));
        assert!(
            d < PARITY_ATOL,
            "{dir}: hidden states of input {i} differ by {d}"
        );
        let n = want_ids.len();
        let logits = if let Some(head) = &p.mlm_head {
            head.forward(hidden.data(), n, &p.model.embeddings.word)
                .unwrap()
        } else {
            p.lm_head
                .as_ref()
                .unwrap()
                .forward(hidden.data(), n, &p.model.embeddings.word)
                .unwrap()
        };
        let d = max_diff(&logits, &floats(&exp["logits"][i]));
        assert!(d < PARITY_ATOL, "{dir}: logits of input {i} differ by {d}");
    }
}

#[test]
fn bert_mlm_matches_transformers() {
    check_model("tiny-bert", "tiny-bert");
}

#[test]
fn bert_with_legacy_names_and_vocab_txt_matches() {
    let p = checkpoint::load(&fixture("tiny-bert-legacy")).unwrap();
    assert_eq!(
        p.tokenizer().unwrap().kind(),
        kiln::tokenize::TokenizerKind::WordPiece
    );
    assert!(
        p.unused_tensors.is_empty(),
        "unused: {:?}",
        p.unused_tensors
    );
    check_model("tiny-bert-legacy", "tiny-bert");
}

#[test]
fn sharded_bf16_checkpoint_matches() {
    check_model("tiny-bert-sharded-bf16", "tiny-bert-sharded-bf16");
}

#[test]
fn gpt2_matches_transformers() {
    check_model("tiny-gpt2", "tiny-gpt2");
}

#[test]
fn gpt2_without_transformer_prefix_and_vocab_json_matches() {
    check_model("tiny-gpt2-noprefix", "tiny-gpt2");
}

#[test]
fn bert_pooler_matches() {
    let p = checkpoint::load(&fixture("tiny-bert-pooler")).unwrap();
    let exp = json(&fixture("tiny-bert-pooler").join("expected.json"));
    let pooler = p.pooler.as_ref().expect("pooler loaded");
    for (i, input) in exp["inputs"].as_array().unwrap().iter().enumerate() {
        let (x, t) = (ids(&input["input_ids"]), ids(&input["token_type_ids"]));
        let batch = Batch::packed(&[(&x, Some(&t))]).unwrap();
        let hidden = p
            .model
            .forward(&batch, p.model.default_mask(), None)
            .unwrap();
        let d = max_diff(hidden.data(), &floats(&exp["last_hidden_state"][i]));
        assert!(d < PARITY_ATOL, "hidden {i}: {d}");
        let pooled = pooler.forward(hidden.row(0), 1).unwrap();
        let d = max_diff(&pooled, &floats(&exp["pooler_output"][i]));
        assert!(d < PARITY_ATOL, "pooler {i}: {d}");
    }
}

/// transformers' padded batch (right padding + attention mask) equals Kiln's padded path and
/// Kiln's padding-free packed path on the real rows.
#[test]
fn padded_batch_equals_padding_free() {
    for dir in ["tiny-bert", "tiny-gpt2"] {
        let p = checkpoint::load(&fixture(dir)).unwrap();
        let exp = json(&fixture(dir).join("expected.json"));
        let pb = &exp["padded_batch"];
        let lens: Vec<usize> = pb["lengths"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let rows: Vec<Vec<u32>> = pb["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(ids)
            .collect();
        let types: Option<Vec<Vec<u32>>> = pb
            .get("token_type_ids")
            .map(|t| t.as_array().unwrap().iter().map(ids).collect());
        let maxlen = rows[0].len();
        let h = p.config().hidden_size;
        let want = floats(&pb["last_hidden_state"]);
        let seqs: Vec<(&[u32], Option<&[u32]>)> = (0..rows.len())
            .map(|b| {
                (
                    &rows[b][..lens[b]],
                    types.as_ref().map(|t| &t[b][..lens[b]]),
                )
            })
            .collect();
        let pad = p.config().pad_token_id.unwrap_or(0);
        let padded = p
            .model
            .forward(
                &Batch::padded(&seqs, pad).unwrap(),
                p.model.default_mask(),
                None,
            )
            .unwrap();
        let packed = p
            .model
            .forward(&Batch::packed(&seqs).unwrap(), p.model.default_mask(), None)
            .unwrap();
        let mut off = 0;
        for (b, &l) in lens.iter().enumerate() {
            let w = &want[b * maxlen * h..(b * maxlen + l) * h];
            let pr = &padded.data()[b * maxlen * h..(b * maxlen + l) * h];
            let pk = &packed.data()[off * h..(off + l) * h];
            assert!(max_diff(pr, w) < PARITY_ATOL, "{dir}: padded row {b}");
            assert!(max_diff(pk, pr) < 1e-5, "{dir}: packed vs padded row {b}");
            off += l;
        }
    }
}

#[test]
fn gpt2_greedy_and_beam_match_transformers() {
    for dir in ["tiny-gpt2", "tiny-gpt2-noprefix"] {
        let p = checkpoint::load(&fixture(dir)).unwrap();
        let exp = json(&fixture("tiny-gpt2").join("expected.json"));
        let g = Generator::new(&p).unwrap();
        for case in exp["greedy"].as_array().unwrap() {
            let opts = GenerateOptions {
                max_new_tokens: 12,
                strategy: Strategy::Greedy,
                seed: 0,
            };
            let out = g
                .generate(&ids(&case["prompt_ids"]), &opts, |_| {})
                .unwrap();
            assert_eq!(
                out,
                ids(&case["new_ids"]),
                "{dir}: greedy from {}",
                case["prompt"]
            );
        }
        for case in exp["beam"].as_array().unwrap() {
            let opts = GenerateOptions {
                max_new_tokens: case["max_new_tokens"].as_u64().unwrap() as usize,
                strategy: Strategy::Beam {
                    num_beams: case["num_beams"].as_u64().unwrap() as usize,
                    length_penalty: case["length_penalty"].as_f64().unwrap() as f32,
                },
                seed: 0,
            };
            let out = g
                .generate(&ids(&case["prompt_ids"]), &opts, |_| {})
                .unwrap();
            assert_eq!(
                out,
                ids(&case["new_ids"]),
                "{dir}: beam from {}",
                case["prompt"]
            );
        }
    }
}

/// The KV cache: token-by-token decoding equals one full forward pass.
#[test]
fn kv_cache_equals_full_forward() {
    let p = checkpoint::load(&fixture("tiny-gpt2")).unwrap();
    let ids: Vec<u32> = vec![5, 17, 99, 3, 250, 41, 7];
    let full = p
        .model
        .forward(
            &Batch::packed(&[(&ids, None)]).unwrap(),
            p.model.default_mask(),
            None,
        )
        .unwrap();
    let mut cache = p.model.new_cache();
    let first = p
        .model
        .forward(
            &Batch::continuation(&[&ids[..3]], &[0]).unwrap(),
            p.model.default_mask(),
            Some(std::slice::from_mut(&mut cache)),
        )
        .unwrap();
    assert!(max_diff(first.data(), &full.data()[..3 * 96]) < 1e-5);
    for (k, &t) in ids.iter().enumerate().skip(3) {
        let b = Batch::continuation(&[&[t]], &[cache.len]).unwrap();
        let out = p
            .model
            .forward(
                &b,
                p.model.default_mask(),
                Some(std::slice::from_mut(&mut cache)),
            )
            .unwrap();
        assert!(max_diff(out.data(), full.row(k)) < 1e-5, "position {k}");
    }
}

#[test]
fn fill_mask_matches_transformers() {
    let p = checkpoint::load(&fixture("tiny-bert")).unwrap();
    let exp = json(&fixture("tiny-bert").join("expected.json"));
    for case in exp["fill_mask"].as_array().unwrap() {
        let preds = kiln::infer::fill_mask(
            &p,
            p.tokenizer().unwrap(),
            case["text"].as_str().unwrap(),
            5,
        )
        .unwrap();
        assert_eq!(preds.len(), 1);
        let top = case["top"].as_array().unwrap();
        for (got, want) in preds[0].iter().zip(top) {
            assert_eq!(got.token_id as u64, want[0].as_u64().unwrap());
            assert!((got.score - want[1].as_f64().unwrap() as f32).abs() < 1e-5);
        }
    }
}

/// A model Kiln saves loads back bit-identically (transformers loading it is checked by the
/// fixture script's `--check-roundtrip`).
#[test]
fn save_then_load_is_bit_identical() {
    for dir in [
        "tiny-bert",
        "tiny-bert-legacy",
        "tiny-gpt2-noprefix",
        "tiny-bert-pooler",
    ] {
        let p = checkpoint::load(&fixture(dir)).unwrap();
        let out = std::env::temp_dir().join(format!("kiln-roundtrip-{}-{dir}", std::process::id()));
        checkpoint::save(&p, &out, checkpoint::SaveDtype::F32).unwrap();
        let q = checkpoint::load(&out).unwrap();
        let a = kiln::checkpoint::save::named_tensors(&p).unwrap();
        let b = kiln::checkpoint::save::named_tensors(&q).unwrap();
        assert_eq!(a, b, "{dir}");
        assert!(q.tokenizer.is_some());
        std::fs::remove_dir_all(&out).unwrap();
    }
}

/// f16 and bf16 stored weights load and compute in f32 (values equal to the rounded weights).
#[test]
fn half_precision_checkpoints_load() {
    let p = checkpoint::load(&fixture("tiny-gpt2")).unwrap();
    let exp = json(&fixture("tiny-gpt2").join("expected.json"));
    for (dtype, tol) in [
        (checkpoint::SaveDtype::F16, 2e-2f32),
        (checkpoint::SaveDtype::BF16, 1.5e-1),
    ] {
        let out = std::env::temp_dir().join(format!("kiln-half-{}-{dtype:?}", std::process::id()));
        checkpoint::save(&p, &out, dtype).unwrap();
        let q = checkpoint::load(&out).unwrap();
        let a = kiln::checkpoint::save::named_tensors(&p).unwrap();
        let b = kiln::checkpoint::save::named_tensors(&q).unwrap();
        for (name, t) in &a {
            let u = &b[name];
            let rounded: Vec<f32> = t
                .data()
                .iter()
                .map(|&v| match dtype {
                    checkpoint::SaveDtype::F16 => half::f16::from_f32(v).to_f32(),
                    _ => half::bf16::from_f32(v).to_f32(),
                })
                .collect();
            assert_eq!(u.data(), &rounded[..], "{name} {dtype:?}");
        }
        // The rounded model still computes close to the f32 one.
        let x = ids(&exp["inputs"][0]["input_ids"]);
        let h = q
            .model
            .forward(
                &Batch::packed(&[(&x, None)]).unwrap(),
                q.model.default_mask(),
                None,
            )
            .unwrap();
        let d = max_diff(h.data(), &floats(&exp["last_hidden_state"][0]));
        assert!(d < tol, "{dtype:?}: {d}");
        std::fs::remove_dir_all(&out).unwrap();
    }
}

/// Pair truncation strategies, as the `tokenizers` library (and so transformers) applies them.
#[test]
fn pair_truncation_strategies() {
    use kiln::tokenize::Truncation;
    let p = checkpoint::load(&fixture("tiny-bert")).unwrap();
    let mut tok = p.tokenizer().unwrap().clone();
    let (a, b) = ("the quick brown fox jumps over the lazy dog", "how are you");
    let full = tok.encode(a, Some(b)).unwrap();
    let count = |e: &kiln::tokenize::Encoding, s: usize| {
        e.sequence_ids.iter().filter(|x| **x == Some(s)).count()
    };
    let (na, nb) = (count(&full, 0), count(&full, 1));
    assert!(na > nb + 2);
    let max = full.ids.len() - 3;
    for (strategy, want_a, want_b) in [
        (Truncation::LongestFirst, na - 3, nb),
        (Truncation::OnlyFirst, na - 3, nb),
        (Truncation::OnlySecond, na, nb - 3),
    ] {
        tok.set_truncation(Some(max), strategy).unwrap();
        let e = tok.encode(a, Some(b)).unwrap();
        assert_eq!(e.ids.len(), max, "{strategy:?}");
        assert_eq!(
            (count(&e, 0), count(&e, 1)),
            (want_a, want_b),
            "{strategy:?}"
        );
        assert_eq!(e.ids[0], full.ids[0], "[CLS] kept");
        assert_eq!(e.ids.last(), full.ids.last(), "[SEP] kept");
    }
    // Single sentences are cut at the end, special tokens kept.
    tok.set_truncation(Some(5), Truncation::LongestFirst)
        .unwrap();
    let e = tok.encode(a, None).unwrap();
    assert_eq!(e.ids.len(), 5);
    assert!(e.special[0] && e.special[4]);
}

#[test]
fn decodings_advanced_together_give_each_ones_tokens_alone() {
    // Continuous batching: greedy and sampled continuations of prompts of different lengths,
    // stepped in one batch (finishing at different steps), equal their runs alone.
    let p = checkpoint::load(&fixture("tiny-gpt2")).unwrap();
    let exp = json(&fixture("tiny-gpt2").join("expected.json"));
    let g = Generator::new(&p).unwrap();
    let mut cases = Vec::new();
    for (i, case) in exp["greedy"].as_array().unwrap().iter().enumerate() {
        let prompt = ids(&case["prompt_ids"]);
        cases.push((
            prompt.clone(),
            GenerateOptions {
                max_new_tokens: 5 + 3 * i,
                strategy: Strategy::Greedy,
                seed: 0,
            },
        ));
        cases.push((
            prompt,
            GenerateOptions {
                max_new_tokens: 9,
                strategy: Strategy::Sample {
                    temperature: 0.9,
                    top_k: 20,
                    top_p: 0.95,
                },
                seed: 7 + i as u64,
            },
        ));
    }
    let alone: Vec<Vec<u32>> = cases
        .iter()
        .map(|(pr, o)| g.generate(pr, o, |_| {}).unwrap())
        .collect();
    let mut decs: Vec<_> = cases
        .iter()
        .map(|(pr, o)| g.start(pr, o).unwrap())
        .collect();
    let mut steps = 0;
    while decs.iter().any(|d| d.finished.is_none()) {
        let mut refs: Vec<_> = decs.iter_mut().collect();
        for (t, lp) in g.advance(&mut refs).unwrap().into_iter().flatten() {
            assert!(
                lp <= 0.0 && lp.is_finite(),
                "token {t}: log-probability {lp}"
            );
        }
        steps += 1;
        assert!(steps < 100);
    }
    for (i, d) in decs.iter().enumerate() {
        assert_eq!(d.tokens, alone[i], "case {i}");
    }
}
