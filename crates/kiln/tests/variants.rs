//! BERT's variants against transformers (fixtures from `tests/fixtures/make_variant_fixtures.py`:
//! tiny random RoBERTa and DistilBERT models of odd sizes with every head): Kiln's tokenizer
//! gives transformers' ids, the hidden states and every head's logits match, RoBERTa's position
//! ids skip the pad rows, saving writes the checkpoint transformers wrote, and one training
//! step's loss and every gradient match PyTorch.

mod common;

use common::*;
use kiln::checkpoint::{self, Pretrained, SaveDtype, WeightStore};
use kiln::heads::HeadKind;
use kiln::infer::classify::sequence_logits;
use kiln::infer::qa::span_logits;
use kiln::infer::tag::token_logits;
use kiln::model::{Arch, Batch};
use kiln::train::backprop::{mlm_loss, rtd_loss, zeros_like};
use kiln::train::classify::sequence_loss;
use std::path::PathBuf;

fn expected() -> serde_json::Value {
    json(&fixture("variants-expected.json"))
}

fn models(exp: &serde_json::Value) -> Vec<(String, serde_json::Value)> {
    exp.as_object()
        .unwrap()
        .iter()
        .filter(|(_, v)| v.is_object())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-variants-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// The last hidden state and the head's outputs of one sequence run alone (QA: start and end
/// logits interleaved per token, as Kiln's span head writes them).
fn outputs(p: &Pretrained, ids: &[u32], head: &str) -> (Vec<f32>, Vec<f32>) {
    outputs_typed(p, ids, None, head)
}

/// [`outputs`] with token type ids.
fn outputs_typed(
    p: &Pretrained,
    ids: &[u32],
    types: Option<&[u32]>,
    head: &str,
) -> (Vec<f32>, Vec<f32>) {
    let batch = Batch::packed(&[(ids, types)]).unwrap();
    let hidden = p
        .model
        .forward(&batch, p.model.default_mask(), None)
        .unwrap();
    let logits = match head {
        "mlm" => {
            let m = p.mlm_head.as_ref().expect("a masked-LM head");
            m.forward(hidden.data(), ids.len(), &p.model.embeddings.word)
                .unwrap()
        }
        "cls" => sequence_logits(p, &batch).unwrap(),
        "tag" => token_logits(p, &batch).unwrap(),
        "qa" => span_logits(p, &batch).unwrap(),
        "disc" => {
            let r = p.rtd_head.as_ref().expect("a discriminator head");
            r.forward(hidden.data(), ids.len()).unwrap()
        }
        _ => Vec::new(),
    };
    (hidden.data().to_vec(), logits)
}

/// The fixture's head outputs of an example in Kiln's layout.
fn want_logits(e: &serde_json::Value) -> Vec<f32> {
    if e.get("start_logits").is_some() {
        let (s, t) = (floats(&e["start_logits"]), floats(&e["end_logits"]));
        s.iter().zip(&t).flat_map(|(a, b)| [*a, *b]).collect()
    } else {
        e.get("logits").map(floats).unwrap_or_default()
    }
}

#[test]
fn every_variant_and_head_matches_transformers() {
    let exp = expected();
    for (dir, m) in models(&exp) {
        let p = checkpoint::load(&fixture(&dir)).unwrap();
        assert!(p.unused_tensors.is_empty(), "{dir}: {:?}", p.unused_tensors);
        let head = m["head"].as_str().unwrap();
        let arch = p.config().arch;
        match m["class"].as_str().unwrap() {
            c if c.starts_with("Roberta") => assert_eq!(arch, Arch::Roberta),
            _ => assert_eq!(arch, Arch::DistilBert),
        }
        let kind = p.task.as_ref().map(|t| t.kind);
        let want_kind = match head {
            "cls" => Some(HeadKind::Sequence),
            "tag" => Some(HeadKind::Token),
            "qa" => Some(HeadKind::Span),
            _ => None,
        };
        assert_eq!(kind, want_kind, "{dir}: head");
        assert_eq!(p.mlm_head.is_some(), head == "mlm", "{dir}: masked-LM head");
        if let Some(names) = m["labels"].as_array() {
            let names: Vec<&str> = names.iter().map(|n| n.as_str().unwrap()).collect();
            assert_eq!(
                p.task.as_ref().unwrap().labels.names,
                names,
                "{dir}: labels"
            );
        }
        let tok = p.tokenizer().unwrap();
        let mut worst = 0.0f32;
        for e in m["examples"].as_array().unwrap() {
            let text = e["text"].as_str().unwrap();
            let want_ids = ids(&e["input_ids"]);
            let enc = tok.encode(text, e["text_b"].as_str()).unwrap();
            assert_eq!(enc.ids, want_ids, "{dir}: token ids of {text:?}");
            let (hidden, logits) = outputs(&p, &want_ids, head);
            let d = max_diff(&hidden, &floats(&e["last_hidden_state"]));
            assert!(
                d < PARITY_ATOL,
                "{dir}: hidden states of {text:?} differ by {d}"
            );
            let w = want_logits(e);
            let dl = max_diff(&logits, &w);
            assert!(
                logits.len() == w.len() && dl < PARITY_ATOL,
                "{dir}: {head} outputs of {text:?} differ by {dl}"
            );
            worst = worst.max(d).max(dl);
        }
        // RoBERTa counts positions from the first real token: the real tokens of a left-padded
        // batch compute what they compute alone, which is what Kiln (never padding) computes.
        if arch == Arch::Roberta {
            let b = &m["left_padded_batch"];
            let texts = b["texts"].as_array().unwrap();
            for (i, text) in texts.iter().enumerate() {
                let enc = tok.encode(text.as_str().unwrap(), None).unwrap();
                let (hidden, _) = outputs(&p, &enc.ids, head);
                let want = floats(&b["last_hidden_state"][i]);
                let d = max_diff(&hidden, &want);
                assert!(
                    hidden.len() == want.len() && d < PARITY_ATOL,
                    "{dir}: left-padded text {i} differs by {d}"
                );
            }
        }
        eprintln!("{dir}: max difference {worst:e}");
    }
}

/// Saving writes the tensors transformers wrote, under the same names; config.json keeps the
/// architecture's schema; the reloaded model computes the same outputs.
#[test]
fn saved_variants_are_the_transformers_checkpoints() {
    let exp = expected();
    for (dir, m) in models(&exp) {
        let p = checkpoint::load(&fixture(&dir)).unwrap();
        let out = scratch(&dir);
        checkpoint::save(&p, &out, SaveDtype::F32).unwrap();
        let (hf, ours) = (
            WeightStore::open_dir(&fixture(&dir)).unwrap(),
            WeightStore::open_dir(&out).unwrap(),
        );
        let (mut hf_names, mut our_names) = (hf.names(), ours.names());
        hf_names.sort();
        our_names.sort();
        assert_eq!(our_names, hf_names, "{dir}: tensor names");
        for n in &hf_names {
            assert_eq!(
                hf.get(n).unwrap().data(),
                ours.get(n).unwrap().data(),
                "{dir}: values of {n}"
            );
        }
        let (a, b) = (
            json(&fixture(&dir).join("config.json")),
            json(&out.join("config.json")),
        );
        for field in [
            "architectures",
            "model_type",
            "max_position_embeddings",
            "pad_token_id",
            "vocab_size",
            "id2label",
        ] {
            assert_eq!(a.get(field), b.get(field), "{dir}: config {field}");
        }
        let q = checkpoint::load(&out).unwrap();
        let e = &m["examples"][0];
        let head = m["head"].as_str().unwrap();
        assert_eq!(
            outputs(&p, &ids(&e["input_ids"]), head),
            outputs(&q, &ids(&e["input_ids"]), head),
            "{dir}: reloaded outputs"
        );
        std::fs::remove_dir_all(out).unwrap();
    }
}

fn examples(file: &serde_json::Value) -> Vec<Vec<u32>> {
    file["examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| ids(&e["input_ids"]))
        .collect()
}

/// The labelled positions of a masked-LM fixture's examples in their packed batch (rows), and
/// their target ids.
fn mlm_targets(file: &serde_json::Value) -> (Vec<usize>, Vec<i64>) {
    let (mut positions, mut targets) = (Vec::new(), Vec::new());
    let mut at = 0;
    for e in file["examples"].as_array().unwrap() {
        let labels = e["labels"].as_array().unwrap();
        for (i, l) in labels.iter().enumerate() {
            let l = l.as_i64().unwrap();
            if l != -100 {
                positions.push(at + i);
                targets.push(l);
            }
        }
        at += labels.len();
    }
    (positions, targets)
}

fn packed(seqs: &[Vec<u32>]) -> Batch {
    let s: Vec<(&[u32], Option<&[u32]>)> = seqs.iter().map(|i| (&i[..], None)).collect();
    Batch::packed(&s).unwrap()
}

/// Examples with their token type ids.
fn typed(file: &serde_json::Value) -> Vec<(Vec<u32>, Vec<u32>)> {
    file["examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (ids(&e["input_ids"]), ids(&e["token_type_ids"])))
        .collect()
}

fn packed_typed(seqs: &[(Vec<u32>, Vec<u32>)]) -> Batch {
    let s: Vec<(&[u32], Option<&[u32]>)> =
        seqs.iter().map(|(i, t)| (&i[..], Some(&t[..]))).collect();
    Batch::packed(&s).unwrap()
}

/// One training step's loss and every parameter's gradient against PyTorch: sequence
/// classification (RoBERTa's `classifier.dense` / DistilBERT's ReLU `pre_classifier` in the
/// backward pass) and masked LM (tied decoders).
#[test]
fn training_gradients_match_pytorch() {
    let dir = fixture("variant-train-parity");
    for (model, name) in [
        ("tiny-roberta-cls", "roberta_cls"),
        ("tiny-distilbert-cls", "distilbert_cls"),
    ] {
        let p = checkpoint::load(&fixture(model)).unwrap();
        let f = json(&dir.join(format!("{name}.json")));
        let labels = floats(&f["labels"]);
        let mut g = zeros_like(&p);
        let loss = sequence_loss(&p, &packed(&examples(&f)), &labels, &mut g, 1.0, None).unwrap();
        let ours = checkpoint::named_tensors(&g).unwrap();
        let file = dir.join(format!("{name}_grads.safetensors"));
        assert_loss_and_named_grads(name, loss, f["loss"].as_f64().unwrap() as f32, &ours, &file);
    }
    for (model, name) in [
        ("tiny-roberta", "roberta_mlm"),
        ("tiny-distilbert", "distilbert_mlm"),
    ] {
        let p = checkpoint::load(&fixture(model)).unwrap();
        let f = json(&dir.join(format!("{name}.json")));
        let seqs = examples(&f);
        let (positions, targets) = mlm_targets(&f);
        let mut g = zeros_like(&p);
        let loss = mlm_loss(&p, &packed(&seqs), &positions, &targets, &mut g, 1.0, None).unwrap();
        let ours = checkpoint::named_tensors(&g).unwrap();
        let file = dir.join(format!("{name}_grads.safetensors"));
        assert_loss_and_named_grads(name, loss, f["loss"].as_f64().unwrap() as f32, &ours, &file);
    }
}

/// Extractive QA frames a question and its context as each tokenizer frames a pair:
/// `[CLS] q [SEP] c [SEP]` with segments 0/1 (DistilBERT's tokenizer is BERT's), RoBERTa's
/// `<s> q </s></s> c </s>` in one segment — the ids transformers' tokenizers gave the fixtures.
#[test]
fn qa_windows_are_framed_as_the_tokenizer_frames_pairs() {
    use kiln::train::qa::{encode_features, QaExample, Windows};
    let exp = expected();
    for dir in ["tiny-roberta-qa", "tiny-distilbert-qa"] {
        let p = checkpoint::load(&fixture(dir)).unwrap();
        let tok = p.tokenizer().unwrap();
        let mut pairs = 0;
        for e in exp[dir]["examples"].as_array().unwrap() {
            let Some(context) = e["text_b"].as_str() else {
                continue;
            };
            let ex = std::sync::Arc::new(QaExample {
                id: 0.into(),
                question: e["text"].as_str().unwrap().into(),
                context: context.into(),
                answers: Vec::new(),
            });
            let w = Windows {
                max_length: 38,
                doc_stride: 8,
                max_question: 30,
            };
            let f = encode_features(tok, &[ex], &w).unwrap();
            assert_eq!(f.len(), 1, "{dir}: one window");
            assert_eq!(f[0].ids, ids(&e["input_ids"]), "{dir}: window ids");
            if let Some(t) = e.get("token_type_ids") {
                assert_eq!(f[0].type_ids, ids(t), "{dir}: segments");
            }
            pairs += 1;
        }
        assert!(pairs > 0, "{dir}: the fixture has question/context pairs");
    }
}

/// ELECTRA (fixtures from `make_electra_fixtures.py`; embeddings 20 wide projected to a hidden
/// width of 36): hidden states and every head Kiln has against transformers, with and without
/// the projection; the generator's tied head; saved checkpoints; training gradients.
#[test]
fn electra_matches_transformers() {
    let exp = json(&fixture("electra-expected.json"));
    for (dir, m) in models(&exp) {
        let p = checkpoint::load(&fixture(&dir)).unwrap();
        assert_eq!(p.config().arch, Arch::Electra, "{dir}");
        let head = m["head"].as_str().unwrap();
        assert!(p.unused_tensors.is_empty(), "{dir}: {:?}", p.unused_tensors);
        assert_eq!(
            p.rtd_head.is_some(),
            head == "disc",
            "{dir}: discriminator head"
        );
        assert_eq!(
            p.model.embeddings.project.is_some(),
            dir != "tiny-electra-same",
            "{dir}: embeddings_project"
        );
        let tok = p.tokenizer().unwrap();
        let mut worst = 0.0f32;
        for e in m["examples"].as_array().unwrap() {
            let text = e["text"].as_str().unwrap();
            let (want_ids, types) = (ids(&e["input_ids"]), ids(&e["token_type_ids"]));
            let enc = tok.encode(text, e["text_b"].as_str()).unwrap();
            assert_eq!(enc.ids, want_ids, "{dir}: token ids of {text:?}");
            let h = head;
            let (hidden, logits) = outputs_typed(&p, &want_ids, Some(&types), h);
            let d = max_diff(&hidden, &floats(&e["last_hidden_state"]));
            assert!(
                d < PARITY_ATOL,
                "{dir}: hidden states of {text:?} differ by {d}"
            );
            if h != "none" {
                let w = want_logits(e);
                let dl = max_diff(&logits, &w);
                assert!(
                    logits.len() == w.len() && dl < PARITY_ATOL,
                    "{dir}: {head} outputs of {text:?} differ by {dl}"
                );
                worst = worst.max(dl);
            }
            worst = worst.max(d);
        }
        eprintln!("{dir}: max difference {worst:e}");
        // Saved: the tensors transformers wrote.
        let out = scratch(&dir);
        checkpoint::save(&p, &out, SaveDtype::F32).unwrap();
        let (hf, ours) = (
            WeightStore::open_dir(&fixture(&dir)).unwrap(),
            WeightStore::open_dir(&out).unwrap(),
        );
        let mut hf_names = hf.names();
        let mut our_names = ours.names();
        hf_names.sort();
        our_names.sort();
        assert_eq!(our_names, hf_names, "{dir}: tensor names");
        let saved = json(&out.join("config.json"));
        assert_eq!(
            saved["embedding_size"], m["config"]["embedding_size"],
            "{dir}"
        );
        assert_eq!(saved["architectures"][0], m["class"], "{dir}");
        std::fs::remove_dir_all(out).unwrap();
    }
    let dir = fixture("electra-train-parity");
    let p = checkpoint::load(&fixture("tiny-electra-cls")).unwrap();
    let f = json(&dir.join("electra_cls.json"));
    let mut g = zeros_like(&p);
    let labels = floats(&f["labels"]);
    let loss = sequence_loss(&p, &packed_typed(&typed(&f)), &labels, &mut g, 1.0, None).unwrap();
    let ours = checkpoint::named_tensors(&g).unwrap();
    let file = dir.join("electra_cls_grads.safetensors");
    assert_loss_and_named_grads(
        "electra_cls",
        loss,
        f["loss"].as_f64().unwrap() as f32,
        &ours,
        &file,
    );
    let p = checkpoint::load(&fixture("tiny-electra-gen")).unwrap();
    let f = json(&dir.join("electra_mlm.json"));
    let seqs = typed(&f);
    let (positions, targets) = mlm_targets(&f);
    let mut g = zeros_like(&p);
    let loss = mlm_loss(
        &p,
        &packed_typed(&seqs),
        &positions,
        &targets,
        &mut g,
        1.0,
        None,
    )
    .unwrap();
    let ours = checkpoint::named_tensors(&g).unwrap();
    let file = dir.join("electra_mlm_grads.safetensors");
    assert_loss_and_named_grads(
        "electra_mlm",
        loss,
        f["loss"].as_f64().unwrap() as f32,
        &ours,
        &file,
    );
    // The discriminator: binary cross-entropy over every token of the batch.
    let p = checkpoint::load(&fixture("tiny-electra-disc")).unwrap();
    let f = json(&dir.join("electra_disc.json"));
    let labels: Vec<f32> = f["examples"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| floats(&e["labels"]))
        .collect();
    let mut g = zeros_like(&p);
    let (loss, logits) =
        rtd_loss(&p, &packed_typed(&typed(&f)), &labels, &mut g, 1.0, None).unwrap();
    let want: Vec<f32> = f["logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(floats)
        .collect();
    let d = max_diff(&logits, &want);
    assert!(
        logits.len() == want.len() && d < PARITY_ATOL,
        "electra_disc logits differ by {d}"
    );
    let ours = checkpoint::named_tensors(&g).unwrap();
    let file = dir.join("electra_disc_grads.safetensors");
    assert_loss_and_named_grads(
        "electra_disc",
        loss,
        f["loss"].as_f64().unwrap() as f32,
        &ours,
        &file,
    );
}

/// What `kiln pretrain --objective electra` wrote (`make_kiln_electra_fixtures.py` ran the
/// binary and loaded both directories in transformers, strictly): Kiln's outputs of the
/// discriminator and the generator equal transformers'.
#[test]
fn kiln_electra_outputs_load_in_transformers() {
    let exp = json(&fixture("kiln-electra-expected.json"));
    for (sub, head) in [("discriminator", "disc"), ("generator", "mlm")] {
        let p = checkpoint::load(&fixture("kiln-electra-pt").join(sub)).unwrap();
        assert!(p.unused_tensors.is_empty(), "{sub}: {:?}", p.unused_tensors);
        let tok = p.tokenizer().unwrap();
        let cases = exp[sub].as_array().unwrap();
        assert!(!cases.is_empty());
        for e in cases {
            let text = e["text"].as_str().unwrap();
            let want_ids = ids(&e["input_ids"]);
            assert_eq!(
                tok.encode(text, None).unwrap().ids,
                want_ids,
                "{sub}: {text}"
            );
            let (_, logits) = outputs(&p, &want_ids, head);
            let want = floats(&e["logits"]);
            let d = max_diff(&logits, &want);
            assert!(
                logits.len() == want.len() && d < PARITY_ATOL,
                "{sub}: outputs of {text:?} differ by {d}"
            );
        }
    }
}

/// ALBERT (fixtures from `make_albert_fixtures.py`: tables 20 wide, hidden 36, every layer
/// running one shared block, and a model of 2 groups of 2 inner blocks): SentencePiece-style
/// token ids, hidden states and every head against transformers; saved names; training
/// gradients, where the shared block's sum over its three layers.
#[test]
fn albert_matches_transformers() {
    let exp = json(&fixture("albert-expected.json"));
    for (dir, m) in models(&exp) {
        let p = checkpoint::load(&fixture(&dir)).unwrap();
        assert_eq!(p.config().arch, Arch::Albert, "{dir}");
        let head = m["head"].as_str().unwrap();
        // AlbertForPreTraining's sentence-order head is not Kiln's: listed as unused.
        assert!(
            p.unused_tensors
                .iter()
                .all(|n| n.starts_with("sop_classifier.")),
            "{dir}: {:?}",
            p.unused_tensors
        );
        let cfg = p.config();
        let (layers, inner) = (
            m["config"]["num_hidden_layers"].as_u64().unwrap() as usize,
            m["config"]["inner_group_num"].as_u64().unwrap() as usize,
        );
        assert_eq!(cfg.num_layers, layers * inner, "{dir}: layers run");
        assert_eq!(
            p.model.blocks.len(),
            m["config"]["num_hidden_groups"].as_u64().unwrap() as usize * inner,
            "{dir}: blocks stored"
        );
        assert!(p.model.embeddings.project.is_some(), "{dir}");
        let tok = p.tokenizer().unwrap();
        let mut worst = 0.0f32;
        for e in m["examples"].as_array().unwrap() {
            let text = e["text"].as_str().unwrap();
            let (want_ids, types) = (ids(&e["input_ids"]), ids(&e["token_type_ids"]));
            let enc = tok.encode(text, e["text_b"].as_str()).unwrap();
            assert_eq!(enc.ids, want_ids, "{dir}: token ids of {text:?}");
            assert_eq!(enc.type_ids, types, "{dir}: segments of {text:?}");
            let (hidden, logits) = outputs_typed(&p, &want_ids, Some(&types), head);
            let d = max_diff(&hidden, &floats(&e["last_hidden_state"]));
            assert!(
                d < PARITY_ATOL,
                "{dir}: hidden states of {text:?} differ by {d}"
            );
            if head != "none" {
                let w = want_logits(e);
                let dl = max_diff(&logits, &w);
                assert!(
                    logits.len() == w.len() && dl < PARITY_ATOL,
                    "{dir}: {head} outputs of {text:?} differ by {dl}"
                );
                worst = worst.max(dl);
            }
            if let (Some(pooled), Some(pooler)) = (e.get("pooler_output"), &p.pooler) {
                let cls = &hidden[..cfg.hidden_size];
                let ours = pooler.forward(cls, 1).unwrap();
                let dp = max_diff(&ours, &floats(pooled));
                assert!(dp < PARITY_ATOL, "{dir}: pooler output differs by {dp}");
            }
            worst = worst.max(d);
        }
        eprintln!("{dir}: max difference {worst:e}");
        // Saved: the tensors transformers wrote (the shared block once).
        let out = scratch(&dir);
        checkpoint::save(&p, &out, SaveDtype::F32).unwrap();
        let (hf, ours) = (
            WeightStore::open_dir(&fixture(&dir)).unwrap(),
            WeightStore::open_dir(&out).unwrap(),
        );
        let mut hf_names: Vec<String> = hf
            .names()
            .into_iter()
            .filter(|n| !n.starts_with("sop_classifier."))
            .collect();
        let mut our_names = ours.names();
        hf_names.sort();
        our_names.sort();
        assert_eq!(our_names, hf_names, "{dir}: tensor names");
        for n in &our_names {
            assert_eq!(
                ours.get(n).unwrap().data(),
                hf.get(n).unwrap().data(),
                "{dir}: {n} changed in the round trip"
            );
        }
        let saved = json(&out.join("config.json"));
        for k in [
            "num_hidden_layers",
            "num_hidden_groups",
            "inner_group_num",
            "embedding_size",
        ] {
            assert_eq!(saved[k], m["config"][k], "{dir}: {k}");
        }
        std::fs::remove_dir_all(out).unwrap();
    }
    let dir = fixture("albert-train-parity");
    let p = checkpoint::load(&fixture("tiny-albert-cls")).unwrap();
    let f = json(&dir.join("albert_cls.json"));
    let mut g = zeros_like(&p);
    let labels = floats(&f["labels"]);
    let loss = sequence_loss(&p, &packed_typed(&typed(&f)), &labels, &mut g, 1.0, None).unwrap();
    let ours = checkpoint::named_tensors(&g).unwrap();
    assert_loss_and_named_grads(
        "albert_cls",
        loss,
        f["loss"].as_f64().unwrap() as f32,
        &ours,
        &dir.join("albert_cls_grads.safetensors"),
    );
    let p = checkpoint::load(&fixture("tiny-albert-mlm")).unwrap();
    let f = json(&dir.join("albert_mlm.json"));
    let (positions, targets) = mlm_targets(&f);
    let mut g = zeros_like(&p);
    let loss = mlm_loss(
        &p,
        &packed_typed(&typed(&f)),
        &positions,
        &targets,
        &mut g,
        1.0,
        None,
    )
    .unwrap();
    let ours = checkpoint::named_tensors(&g).unwrap();
    assert_loss_and_named_grads(
        "albert_mlm",
        loss,
        f["loss"].as_f64().unwrap() as f32,
        &ours,
        &dir.join("albert_mlm_grads.safetensors"),
    );
}

/// sentence-transformers directories of each variant (the model with `modules.json`, mean
/// pooling and `Normalize`, as sentence-transformers saves them): `embed` gives the normalized
/// mean of transformers' last hidden states.
#[test]
fn sentence_transformers_directories_of_the_variants_embed() {
    for (file, dir) in [
        ("variants-expected.json", "tiny-roberta"),
        ("variants-expected.json", "tiny-distilbert"),
        ("electra-expected.json", "tiny-electra-same"),
        ("albert-expected.json", "tiny-albert-groups"),
    ] {
        let exp = json(&fixture(file));
        let m = &exp[dir];
        let out = scratch(&format!("st-{dir}"));
        std::fs::create_dir_all(out.join("1_Pooling")).unwrap();
        std::fs::create_dir_all(out.join("2_Normalize")).unwrap();
        for f in std::fs::read_dir(fixture(dir)).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), out.join(f.file_name())).unwrap();
        }
        let modules = serde_json::json!([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
        ]);
        std::fs::write(out.join("modules.json"), modules.to_string()).unwrap();
        let h = m["hidden"].as_u64().unwrap();
        let pooling = serde_json::json!({"word_embedding_dimension": h,
            "pooling_mode_cls_token": false, "pooling_mode_mean_tokens": true,
            "pooling_mode_max_tokens": false, "pooling_mode_mean_sqrt_len_tokens": false});
        std::fs::write(out.join("1_Pooling/config.json"), pooling.to_string()).unwrap();
        std::fs::write(
            out.join("sentence_bert_config.json"),
            r#"{"max_seq_length": 32, "do_lower_case": false}"#,
        )
        .unwrap();
        let p = checkpoint::load(&out).unwrap();
        assert!(p.sentence.is_some(), "{dir}: read as sentence-transformers");
        let opts = kiln::infer::embed::EmbedOptions::defaults_for(&p);
        assert!(opts.normalize && opts.max_length == 32, "{dir}: {opts:?}");
        let e = kiln::infer::embed::Embedder::new(&p, opts).unwrap();
        let mut compared = 0;
        for ex in m["examples"].as_array().unwrap() {
            if ex.get("text_b").is_some_and(|t| !t.is_null()) {
                continue;
            }
            let text = ex["text"].as_str().unwrap();
            let got = e.embed(&[text]).unwrap().remove(0);
            let hidden = floats(&ex["last_hidden_state"]);
            let h = h as usize;
            let n = hidden.len() / h;
            let mut want: Vec<f32> = (0..h)
                .map(|j| (0..n).map(|i| hidden[i * h + j]).sum::<f32>() / n as f32)
                .collect();
            kiln::infer::embed::l2_normalize(&mut want);
            let d = max_diff(&got, &want);
            assert!(
                d < PARITY_ATOL,
                "{dir}: embedding of {text:?} differs by {d}"
            );
            compared += 1;
        }
        assert!(compared > 0, "{dir}: no single-text example");
        std::fs::remove_dir_all(out).unwrap();
    }
}

/// A RoBERTa directory with only `vocab.json` + `merges.txt` (no `tokenizer.json`) tokenizes as
/// transformers does: `<s> a </s></s> b </s>`, `<mask>` taking the space before it.
#[test]
fn roberta_vocab_and_merges_tokenize_as_transformers() {
    let exp = expected();
    let out = scratch("roberta-bpe");
    std::fs::create_dir_all(&out).unwrap();
    for f in std::fs::read_dir(fixture("tiny-roberta")).unwrap() {
        let f = f.unwrap();
        if f.file_name() != "tokenizer.json" {
            std::fs::copy(f.path(), out.join(f.file_name())).unwrap();
        }
    }
    let classic = kiln::tokenize::Tokenizer::from_dir(&out).unwrap().unwrap();
    let json_tok = kiln::tokenize::Tokenizer::from_dir(&fixture("tiny-roberta"))
        .unwrap()
        .unwrap();
    let mut compared = 0;
    for e in exp["tiny-roberta"]["examples"].as_array().unwrap() {
        let (a, b) = (e["text"].as_str().unwrap(), e["text_b"].as_str());
        let enc = classic.encode(a, b).unwrap();
        assert_eq!(enc.ids, ids(&e["input_ids"]), "{a:?} / {b:?}");
        compared += 1;
    }
    assert!(compared > 0);
    for text in [
        "the apple<mask> from the tree",
        "a <mask> b",
        "Hello, world!",
    ] {
        assert_eq!(
            classic.encode(text, None).unwrap().ids,
            json_tok.encode(text, None).unwrap().ids,
            "{text:?}"
        );
    }
    assert_eq!(classic.mask_id(), json_tok.mask_id());
    std::fs::remove_dir_all(out).unwrap();
}

/// RoBERTa's and ELECTRA's classification heads drop out the first token before their dense
/// layer as well as after it: in training mode (every dropout on) the backward pass's gradients
/// match central finite differences of the loss under the same masks.
#[test]
fn classification_heads_train_with_both_dropouts() {
    let f = json(&fixture("variant-train-parity").join("roberta_cls.json"));
    for dir in ["tiny-roberta-cls", "tiny-electra-cls"] {
        let mut p = checkpoint::load(&fixture(dir)).unwrap();
        assert!(p.task.as_ref().unwrap().dropout > 0.0, "{dir}");
        let ids_only: Vec<(Vec<u32>, Vec<u32>)> = f["examples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let ids: Vec<u32> = ids(&e["input_ids"])
                    .into_iter()
                    .map(|i| i % p.config().vocab_size as u32)
                    .collect();
                let n = ids.len();
                (ids, vec![0; n])
            })
            .collect();
        let batch = packed_typed(&ids_only);
        let labels = vec![2.0, 0.0, 1.0, 2.0];
        let seed = Some(7u64);
        let loss_of = |p: &Pretrained| -> f64 {
            let mut g = zeros_like(p);
            sequence_loss(p, &batch, &labels, &mut g, 1.0, seed).unwrap() as f64
        };
        let mut g = zeros_like(&p);
        sequence_loss(&p, &batch, &labels, &mut g, 1.0, seed).unwrap();
        let grads: std::collections::BTreeMap<String, Vec<f32>> =
            kiln::train::backprop::parameters(&mut g)
                .into_iter()
                .map(|(n, t, _)| (n, t.data().to_vec()))
                .collect();
        for name in ["pooler.weight", "task.weight", "blocks.1.ffn_out.weight"] {
            let gt = &grads[name];
            let mut order: Vec<usize> = (0..gt.len()).collect();
            order.sort_by(|&a, &b| gt[b].abs().total_cmp(&gt[a].abs()));
            for &k in order.iter().take(3) {
                let eps = 1e-3f32;
                let mut at = |delta: f32| {
                    let nudge = |p: &mut Pretrained, d: f32| {
                        for (n, t, _) in kiln::train::backprop::parameters(p) {
                            if n == name {
                                t.data_mut()[k] += d;
                            }
                        }
                    };
                    nudge(&mut p, delta);
                    let l = loss_of(&p);
                    nudge(&mut p, -delta);
                    l
                };
                let fd = (at(eps) - at(-eps)) / (2.0 * eps as f64);
                let an = gt[k] as f64;
                assert!(
                    (fd - an).abs() <= 0.03 * an.abs() + 2e-4,
                    "{dir} {name}[{k}]: finite difference {fd} vs backward {an}"
                );
            }
        }
        // The masks before the dense layer are part of the loss: dropout on changes it.
        let mut g = zeros_like(&p);
        let eval = sequence_loss(&p, &batch, &labels, &mut g, 1.0, None).unwrap();
        assert_ne!(eval as f64, loss_of(&p), "{dir}");
    }
}
