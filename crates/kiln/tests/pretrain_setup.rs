//! The first steps of pre-training: a tokenizer trained on a corpus, and a randomly initialized
//! model for it.

mod common;

use common::*;
use kiln::data::Corpus;
use kiln::model::init::{new_config, random_model, InitShape};
use kiln::model::Arch;
use kiln::tokenize::train::{train_tokenizer, TrainKind, TrainOptions};
use kiln::tokenize::Tokenizer;
use std::io::Write;
use std::path::PathBuf;

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-pre-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// English sentences from the apple fixture plus Chinese lines, as JSONL (gzip) and plain text.
fn corpus(dir: &std::path::Path) -> Corpus {
    let en = std::fs::read_to_string(fixture("apple_sentences.txt")).unwrap();
    let txt = dir.join("en.txt");
    std::fs::write(&txt, en.repeat(3)).unwrap();
    let gz = dir.join("zh.jsonl.gz");
    let mut w = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).unwrap(),
        flate2::Compression::fast(),
    );
    for s in [
        "我喜欢吃苹果。",
        "苹果公司发布了新手机。",
        "今天天气很好，我们去公园散步。",
        "自然语言处理很有趣。",
    ] {
        writeln!(w, "{}", serde_json::json!({ "text": s })).unwrap();
    }
    w.finish().unwrap();
    Corpus::new(vec![txt, gz], "text").unwrap()
}

fn train(kind: TrainKind, vocab: usize, dir: &std::path::Path) -> Tokenizer {
    // GPT-2 style byte-level BPE keeps case; the others lower-case.
    let lowercase = kind != TrainKind::Bpe;
    let opts = TrainOptions {
        kind,
        vocab_size: vocab,
        lowercase,
        min_frequency: 1,
        show_progress: false,
    };
    train_tokenizer(&corpus(dir), &opts, &dir.join("tok")).unwrap()
}

#[test]
fn wordpiece_splits_cjk_and_uses_bert_template() {
    let dir = scratch("wp");
    let tok = train(TrainKind::WordPiece, 300, &dir);
    for (i, t) in ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .iter()
        .enumerate()
    {
        assert_eq!(tok.token_to_id(t), Some(i as u32), "{t}");
    }
    let enc = tok.encode("我喜欢苹果", Some("Apple pie")).unwrap();
    let pieces: Vec<String> = enc
        .ids
        .iter()
        .map(|&i| tok.id_to_token(i).unwrap())
        .collect();
    assert_eq!(
        &pieces[..7],
        &["[CLS]", "我", "喜", "欢", "苹", "果", "[SEP]"]
    );
    assert_eq!(pieces.last().unwrap(), "[SEP]");
    assert_eq!(enc.type_ids[0], 0);
    assert_eq!(*enc.type_ids.last().unwrap(), 1);
    // The saved directory reloads, via tokenizer.json and via vocab.txt alone, to the same ids.
    let again = Tokenizer::from_dir(&dir.join("tok")).unwrap().unwrap();
    assert_eq!(
        again.encode("the apple was sweet", None).unwrap().ids,
        tok.encode("the apple was sweet", None).unwrap().ids
    );
    std::fs::remove_file(dir.join("tok/tokenizer.json")).unwrap();
    let from_vocab = Tokenizer::from_dir(&dir.join("tok")).unwrap().unwrap();
    assert_eq!(
        from_vocab.encode("the apple was sweet", None).unwrap().ids,
        tok.encode("the apple was sweet", None).unwrap().ids
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn byte_level_bpe_round_trips_any_text() {
    let dir = scratch("bpe");
    let tok = train(TrainKind::Bpe, 400, &dir);
    assert_eq!(tok.vocab_size(), 400);
    assert_eq!(tok.token_to_id("<|endoftext|>"), Some(0));
    for text in [
        "Apple opened a store.",
        "naïve café ☃ 🙂 苹果",
        "  spaces\tand\ttabs ",
    ] {
        let ids = tok.encode_plain(text).unwrap().ids;
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
    }
    assert!(dir.join("tok/vocab.json").exists() && dir.join("tok/merges.txt").exists());
    let files = Tokenizer::from_dir(&dir.join("tok")).unwrap().unwrap();
    assert_eq!(
        files.encode_plain("apple pie").unwrap().ids,
        tok.encode_plain("apple pie").unwrap().ids
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn unigram_trains_and_reloads() {
    let dir = scratch("uni");
    let tok = train(TrainKind::Unigram, 120, &dir);
    assert!(tok.vocab_size() <= 120);
    let enc = tok.encode("the apple", None).unwrap();
    assert_eq!(tok.id_to_token(enc.ids[0]).unwrap(), "[CLS]");
    let again = Tokenizer::from_dir(&dir.join("tok")).unwrap().unwrap();
    assert_eq!(again.encode("the apple", None).unwrap().ids, enc.ids);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn malformed_corpus_line_is_named() {
    let dir = scratch("badcorpus");
    let f = dir.join("c.jsonl");
    std::fs::write(&f, "{\"text\": \"ok\"}\n{\"txt\": \"wrong field\"}\n").unwrap();
    let opts = TrainOptions {
        kind: TrainKind::Bpe,
        vocab_size: 300,
        lowercase: false,
        min_frequency: 1,
        show_progress: false,
    };
    let err = train_tokenizer(
        &Corpus::new(vec![f], "text").unwrap(),
        &opts,
        &dir.join("tok"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("c.jsonl line 2") && err.contains("\"text\""),
        "{err}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn init_follows_transformers_and_is_seeded() {
    let dir = scratch("init");
    let tok = train(TrainKind::WordPiece, 300, &dir);
    let shape = InitShape {
        layers: Some(3),
        hidden: Some(64),
        heads: Some(2),
        intermediate: Some(100),
        max_positions: Some(40),
        ..Default::default()
    };
    let cfg = new_config(Arch::Bert, "tiny", &shape, &tok).unwrap();
    assert_eq!(
        (
            cfg.num_layers,
            cfg.hidden_size,
            cfg.num_heads,
            cfg.intermediate_size,
            cfg.max_positions
        ),
        (3, 64, 2, 100, 40)
    );
    assert_eq!(cfg.vocab_size, tok.vocab_size());
    let a = random_model(cfg.clone(), tok.clone(), dir.join("tok"), 7).unwrap();
    let b = random_model(cfg.clone(), tok.clone(), dir.join("tok"), 7).unwrap();
    let c = random_model(cfg, tok.clone(), dir.join("tok"), 8).unwrap();
    let ta = kiln::checkpoint::save::named_tensors(&a).unwrap();
    assert_eq!(ta, kiln::checkpoint::save::named_tensors(&b).unwrap());
    // The size estimate `init` checks before allocating counts the base model exactly.
    let base: usize = ta
        .iter()
        .filter(|(n, _)| n.starts_with("bert."))
        .map(|(_, t)| t.numel())
        .sum();
    assert_eq!(a.config().parameter_count(), base as u128);
    assert_ne!(ta, kiln::checkpoint::save::named_tensors(&c).unwrap());
    let w = &ta["bert.encoder.layer.0.intermediate.dense.weight"];
    let std = (w.data().iter().map(|v| v * v).sum::<f32>() / w.numel() as f32).sqrt();
    assert!((std - 0.02).abs() < 0.002, "std {std}");
    assert!(ta["bert.encoder.layer.0.intermediate.dense.bias"]
        .data()
        .iter()
        .all(|&v| v == 0.0));
    assert!(ta["bert.encoder.layer.2.output.LayerNorm.weight"]
        .data()
        .iter()
        .all(|&v| v == 1.0));
    assert!(
        ta["bert.embeddings.word_embeddings.weight"]
            .row(0)
            .iter()
            .all(|&v| v == 0.0),
        "padding row"
    );
    // Saved, it loads back as a masked-LM model.
    kiln::checkpoint::save(&a, &dir.join("model"), kiln::checkpoint::SaveDtype::F32).unwrap();
    let p = kiln::checkpoint::load(&dir.join("model")).unwrap();
    assert!(p.mlm_head.is_some() && p.tokenizer.is_some());
    assert_eq!(kiln::checkpoint::save::named_tensors(&p).unwrap(), ta);

    let bpe_dir = scratch("init-bpe");
    let bpe = train(TrainKind::Bpe, 400, &bpe_dir);
    let g = random_model(
        new_config(Arch::Gpt2, "tiny", &InitShape::default(), &bpe).unwrap(),
        bpe,
        dir.join("tok"),
        1,
    )
    .unwrap();
    let tg = kiln::checkpoint::save::named_tensors(&g).unwrap();
    let proj = &tg["transformer.h.1.attn.c_proj.weight"];
    let pstd = (proj.data().iter().map(|v| v * v).sum::<f32>() / proj.numel() as f32).sqrt();
    assert!(
        (pstd - 0.02 / 2.0).abs() < 0.001,
        "GPT-2 residual projection std {pstd} (0.02/sqrt(2*2 layers))"
    );
    assert!(!tg.contains_key("lm_head.weight"), "tied head is not saved");
    std::fs::remove_dir_all(dir).unwrap();
    std::fs::remove_dir_all(bpe_dir).unwrap();
}

#[test]
fn corpus_split_is_disjoint_complete_and_stable() {
    let dir = scratch("split");
    let f = dir.join("lines.txt");
    std::fs::create_dir_all(&dir).unwrap();
    let lines: Vec<String> = (0..400).map(|i| format!("text number {i}")).collect();
    std::fs::write(&f, lines.join("\n")).unwrap();
    let all = Corpus::new(vec![f], "text").unwrap();
    let (train, valid) = all.split(0.1, 7).unwrap();
    let a: Vec<String> = train.texts().map(|t| t.unwrap()).collect();
    let b: Vec<String> = valid.texts().map(|t| t.unwrap()).collect();
    assert_eq!(a.len() + b.len(), 400);
    assert!((20..=60).contains(&b.len()), "{} held out", b.len());
    assert!(a.iter().all(|t| !b.contains(t)));
    let again: Vec<String> = valid.texts().map(|t| t.unwrap()).collect();
    assert_eq!(b, again);
    let (_, other_seed) = all.split(0.1, 8).unwrap();
    let c: Vec<String> = other_seed.texts().map(|t| t.unwrap()).collect();
    assert_ne!(b, c);
    assert!(all.split(1.5, 7).is_err());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn shuffle_buffer_reorders_within_its_pool_deterministically() {
    let dir = scratch("shuffle");
    let tok = train(TrainKind::WordPiece, 300, &dir);
    let c = corpus(&dir);
    let framing = kiln::data::Framing::Bert { cls: 2, sep: 3 };
    let stream: Vec<Vec<u32>> = {
        let mut p = kiln::data::Packer::new(&c, &tok, framing, 8);
        (0..60)
            .map(|_| p.next_sequence().unwrap().unwrap())
            .collect()
    };
    let draw = |seed: u64| -> Vec<Vec<u32>> {
        let p = kiln::data::Packer::new(&c, &tok, framing, 8);
        let mut s = kiln::data::Shuffled::new(p, 10, seed);
        (0..40)
            .map(|_| s.next_sequence().unwrap().unwrap())
            .collect()
    };
    let a = draw(1);
    assert_eq!(a, draw(1), "deterministic for a seed");
    assert_ne!(a, draw(2));
    assert_ne!(a, stream[..40].to_vec(), "reordered");
    // The k-th draw comes from the first k + 10 sequences of the stream, each at most once.
    let mut used = [false; 60];
    for (k, s) in a.iter().enumerate() {
        let at = (0..k + 10)
            .find(|&i| !used[i] && &stream[i] == s)
            .unwrap_or_else(|| panic!("draw {k} not in its pool"));
        used[at] = true;
    }
    // Capacity 1 is stream order.
    let p = kiln::data::Packer::new(&c, &tok, framing, 8);
    let mut s = kiln::data::Shuffled::new(p, 1, 9);
    let plain: Vec<Vec<u32>> = (0..40)
        .map(|_| s.next_sequence().unwrap().unwrap())
        .collect();
    assert_eq!(plain, stream[..40].to_vec());
    std::fs::remove_dir_all(dir).unwrap();
}
