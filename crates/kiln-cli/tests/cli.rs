//! End-to-end runs of the `kiln` binary on the tiny fixtures.

use std::io::Write;
use std::process::{Command, Stdio};

mod common;
use common::*;

/// Parses one JSON value per output line.
fn json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

fn kiln(args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn embed_writes_one_line_per_input_in_order() {
    let m = fixture("tiny-bert");
    let (ok, out, err) = kiln(
        &[
            "embed",
            "--model",
            m.to_str().unwrap(),
            "--normalize",
            "--threads",
            "1",
        ],
        "first\nsecond one\nthird\n",
    );
    assert!(ok, "{err}");
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 3);
    for l in &lines {
        let v: Vec<f64> = l["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(v.len(), 96);
        assert!((v.iter().map(|x| x * x).sum::<f64>().sqrt() - 1.0).abs() < 1e-5);
    }
    // Same sentence alone gives the same vector (order kept, batching invisible).
    let (_, one, _) = kiln(
        &["embed", "--model", m.to_str().unwrap(), "--normalize"],
        "second one\n",
    );
    let a: serde_json::Value = serde_json::from_str(one.trim()).unwrap();
    let x = a["embedding"].as_array().unwrap();
    let y = lines[1]["embedding"].as_array().unwrap();
    for (p, q) in x.iter().zip(y) {
        assert!((p.as_f64().unwrap() - q.as_f64().unwrap()).abs() < 1e-5);
    }
}

#[test]
fn fill_mask_lists_one_entry_per_mask() {
    let m = fixture("tiny-bert");
    let (ok, out, err) = kiln(
        &["fill-mask", "--model", m.to_str().unwrap(), "--top-k", "3"],
        "a [MASK] b [MASK]\nno mask here\n",
    );
    assert!(ok, "{err}");
    let lines = json_lines(&out);
    assert_eq!(lines[0]["masks"].as_array().unwrap().len(), 2);
    assert_eq!(lines[0]["masks"][0].as_array().unwrap().len(), 3);
    assert_eq!(lines[1]["masks"].as_array().unwrap().len(), 0);
    let s: f64 = lines[0]["masks"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["score"].as_f64().unwrap())
        .sum();
    assert!(s > 0.0 && s <= 1.0 + 1e-6);
}

#[test]
fn generate_json_matches_transformers_greedy() {
    let m = fixture("tiny-gpt2");
    let (ok, out, err) = kiln(
        &[
            "generate",
            "--model",
            m.to_str().unwrap(),
            "--prompt",
            "The cat sat on the",
            "--max-new-tokens",
            "12",
            "--json",
        ],
        "",
    );
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let ids: Vec<u64> = v["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![231, 362, 125, 122, 137, 125, 186, 186, 137, 137, 137, 186]
    );
    assert_eq!(v["prompt"], "The cat sat on the");
}

#[test]
fn streamed_text_equals_the_json_text_when_tokens_split_characters() {
    // The tiny GPT-2's byte-level vocabulary spells these characters byte by byte, and its
    // random continuations end tokens part-way through characters.
    let m = fixture("tiny-gpt2");
    let prompts = [
        "你好",
        "The cat",
        "日本語のテキスト",
        "émoji 😀 ok",
        "Hello",
    ];
    let input = prompts.join("\n") + "\n";
    let args = |json: bool| {
        let mut a = vec![
            "generate",
            "--model",
            m.to_str().unwrap(),
            "--max-new-tokens",
            "30",
        ];
        if json {
            a.push("--json");
        }
        a
    };
    let (ok, plain, err) = kiln(&args(false), &input);
    assert!(ok, "{err}");
    let (ok, json, err) = kiln(&args(true), &input);
    assert!(ok, "{err}");
    let plain: Vec<&str> = plain.lines().collect();
    let json = json_lines(&json);
    assert_eq!(plain.len(), prompts.len());
    for ((line, j), prompt) in plain.iter().zip(&json).zip(prompts) {
        let expected = format!("{prompt}{}", j["text"].as_str().unwrap());
        assert_eq!(*line, expected, "prompt {prompt}");
    }
}

#[test]
fn sampling_is_reproducible_with_a_seed() {
    let m = fixture("tiny-gpt2");
    let args = [
        "generate",
        "--model",
        m.to_str().unwrap(),
        "--prompt",
        "Hello",
        "--strategy",
        "sample",
        "--top-k",
        "20",
        "--top-p",
        "0.9",
        "--seed",
        "7",
        "--json",
    ];
    let (ok, a, err) = kiln(&args, "");
    assert!(ok, "{err}");
    let (_, b, _) = kiln(&args, "");
    assert_eq!(a, b);
}

#[test]
fn info_json_describes_the_model() {
    let m = fixture("tiny-gpt2-noprefix");
    let (ok, out, err) = kiln(&["info", m.to_str().unwrap(), "--json"], "");
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["architecture"], "GPT2LMHeadModel");
    assert_eq!(v["layers"], 3);
    assert_eq!(v["hidden"], 96);
    assert_eq!(v["tokenizer"], "bpe");
}

#[test]
fn errors_are_messages_not_panics() {
    let (ok, _, err) = kiln(&["info", "/nonexistent/model"], "");
    assert!(
        !ok && err.contains("/nonexistent/model") && !err.contains("panicked"),
        "{err}"
    );
    let m = fixture("tiny-bert");
    let (ok, _, err) = kiln(
        &["generate", "--model", m.to_str().unwrap(), "--prompt", "hi"],
        "",
    );
    assert!(!ok && err.contains("causal-LM head"), "{err}");
    let (ok, _, err) = kiln(
        &[
            "fill-mask",
            "--model",
            fixture("tiny-gpt2").to_str().unwrap(),
        ],
        "x\n",
    );
    assert!(!ok && err.contains("masked-LM head"), "{err}");
}

#[test]
fn bad_input_line_is_named_and_leaves_no_partial_output() {
    let m = fixture("tiny-bert");
    let out = std::env::temp_dir().join(format!("kiln-cli-out-{}.jsonl", std::process::id()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "embed",
            "--model",
            m.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"fine\nbad \xff byte\n")
        .unwrap();
    let res = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(
        !res.status.success() && err.contains("line 2") && err.contains("UTF-8"),
        "{err}"
    );
    assert!(!out.exists());
    let leftovers = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!(".kiln-cli-out-{}", std::process::id()))
        });
    assert!(!leftovers);
}

#[test]
fn tokenizer_init_pretrain_plot_lifecycle() {
    let dir = std::env::temp_dir().join(format!("kiln-cli-life-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let d = |n: &str| dir.join(n).to_string_lossy().into_owned();
    let corpus = fixture("apple_sentences.txt")
        .to_string_lossy()
        .into_owned();
    let run = |args: &[&str]| {
        let (ok, out, err) = kiln(args, "");
        assert!(ok, "kiln {args:?} failed: {err}");
        (out, err)
    };
    run(&[
        "tokenizer",
        "train",
        "--corpus",
        &corpus,
        "--kind",
        "wordpiece",
        "--vocab-size",
        "200",
        "--lowercase",
        "--out",
        &d("tok"),
    ]);
    run(&[
        "init",
        "--arch",
        "bert",
        "--size",
        "tiny",
        "--layers",
        "1",
        "--tokenizer",
        &d("tok"),
        "--out",
        &d("init"),
    ]);
    let (_, err) = run(&[
        "pretrain",
        "--model",
        &d("init"),
        "--objective",
        "mlm",
        "--corpus",
        &corpus,
        "--valid-fraction",
        "0.2",
        "--seq-len",
        "16",
        "--batch-size",
        "4",
        "--max-steps",
        "6",
        "--eval-every",
        "3",
        "--log-every",
        "2",
        "--threads",
        "1",
        "--out",
        &d("run"),
    ]);
    // Not a terminal: plain metrics lines, then the summary.
    assert!(err.contains("\"valid_loss\""), "{err}");
    assert!(
        err.contains("done at step 6/6") && err.contains("MLM accuracy"),
        "{err}"
    );
    let metrics = d("run/metrics.jsonl");
    assert_eq!(
        std::fs::read_to_string(&metrics).unwrap().lines().count(),
        4
    );
    run(&["plot", &metrics, "--output", &d("loss.png")]);
    let png = std::fs::read(d("loss.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    // The final model is the output directory itself.
    run(&["info", &d("run")]);
    // A bad flag combination and a bad metrics file are named.
    let (ok, _, err) = kiln(
        &[
            "pretrain",
            "--model",
            &d("init"),
            "--corpus",
            &corpus,
            "--valid",
            &corpus,
            "--valid-fraction",
            "0.2",
            "--max-steps",
            "1",
            "--out",
            &d("bad"),
        ],
        "",
    );
    assert!(!ok && err.contains("--valid-fraction"), "{err}");
    std::fs::write(d("m.jsonl"), "{\"step\": 1, \"loss\": 2.0}\nnot json\n").unwrap();
    let (ok, _, err) = kiln(&["plot", &d("m.jsonl"), "--output", &d("x.png")], "");
    assert!(!ok && err.contains("m.jsonl line 2"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn finetune_eval_predict_classify() {
    let dir = std::env::temp_dir().join(format!("kiln-cli-ft-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let d = |n: &str| dir.join(n).to_string_lossy().into_owned();
    let mut data = String::new();
    for i in 0..40 {
        let (text, label) = if i % 2 == 0 {
            ("open water with rain", 1)
        } else {
            ("every small cafe", 0)
        };
        data.push_str(&format!("{{\"text\": \"{text}\", \"label\": {label}}}\n"));
    }
    std::fs::write(d("train.jsonl"), &data).unwrap();
    std::fs::write(
        d("labels.json"),
        "{\"label\": [\"negative\", \"positive\"]}",
    )
    .unwrap();
    let model = fixture("tiny-bert").to_string_lossy().into_owned();
    let (ok, _, err) = kiln(
        &[
            "finetune",
            "--model",
            &model,
            "--task",
            "classify",
            "--train",
            &d("train.jsonl"),
            "--valid",
            &d("train.jsonl"),
            "--labels",
            &d("labels.json"),
            "--max-steps",
            "12",
            "--lr",
            "2e-3",
            "--batch-size",
            "8",
            "--eval-every",
            "6",
            "--threads",
            "1",
            "--out",
            &d("out"),
        ],
        "",
    );
    assert!(ok, "{err}");
    assert!(err.contains("best accuracy"), "{err}");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d("out/config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "BertForSequenceClassification");
    assert_eq!(config["id2label"]["1"], "positive");
    let (ok, out, err) = kiln(
        &[
            "eval",
            "--model",
            &d("out"),
            "--task",
            "classify",
            "--data",
            &d("train.jsonl"),
            "--json",
        ],
        "",
    );
    assert!(ok, "{err}");
    let m: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(m["accuracy"].as_f64().unwrap() >= 0.0 && m["macro_f1"].is_number());
    assert_eq!(m["examples"], 40);
    // A malformed line: named without --skip-invalid, counted and reported with it.
    std::fs::write(d("bad.jsonl"), format!("{data}not json\n")).unwrap();
    let eval_bad = |extra: &[&str]| {
        let (bad, out) = (d("bad.jsonl"), d("out"));
        let mut args = vec![
            "eval", "--model", &out, "--task", "classify", "--data", &bad, "--json",
        ];
        args.extend_from_slice(extra);
        kiln(&args, "")
    };
    let (ok, _, err) = eval_bad(&[]);
    assert!(!ok && err.contains("bad.jsonl line 41"), "{err}");
    let (ok, out, err) = eval_bad(&["--skip-invalid"]);
    assert!(
        ok && err.contains("bad.jsonl: skipped 1 malformed line(s)"),
        "{err}"
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(out.trim()).unwrap()["examples"],
        40
    );
    let (ok, out, err) = kiln(
        &[
            "predict",
            "--model",
            &d("out"),
            "--task",
            "classify",
            "--input",
            &d("train.jsonl"),
        ],
        "",
    );
    assert!(ok, "{err}");
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 40);
    for l in &lines {
        // The data wrote integer labels and the labels file names them: predictions give the
        // names, with probabilities in id order.
        assert!(l["label"] == "negative" || l["label"] == "positive", "{l}");
        let probs = l["probabilities"].as_array().unwrap();
        assert_eq!(probs.len(), 2);
        let sum: f64 = probs.iter().map(|p| p.as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-5);
    }
    let (ok, _, err) = kiln(
        &[
            "finetune",
            "--model",
            &model,
            "--task",
            "summarize",
            "--train",
            &d("train.jsonl"),
            "--max-steps",
            "1",
            "--out",
            &d("x"),
        ],
        "",
    );
    assert!(!ok && err.contains("--task"), "{err}");
    // Classification data given to the QA task: the file, line and missing field are named.
    let (ok, _, err) = kiln(
        &[
            "finetune",
            "--model",
            &model,
            "--task",
            "qa",
            "--train",
            &d("train.jsonl"),
            "--max-steps",
            "1",
            "--out",
            &d("x"),
        ],
        "",
    );
    assert!(
        !ok && err.contains("train.jsonl line 1") && err.contains("\"context\""),
        "{err}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// `finetune --method lora|adapter`, `predict --adapter NAME=DIR --use NAME`, `merge`: the
/// merged model predicts what the base + adapter predicted.
#[test]
fn lora_adapter_merge_lifecycle() {
    let dir = std::env::temp_dir().join(format!("kiln-cli-lora-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let d = |n: &str| dir.join(n).to_string_lossy().into_owned();
    let base = fixture("tiny-bert-cls").to_string_lossy().into_owned();
    let train = fixture("lora-train.jsonl").to_string_lossy().into_owned();
    for (method, out) in [("lora", "lora"), ("adapter", "adapter")] {
        let (ok, _, err) = kiln(
            &[
                "finetune",
                "--model",
                &base,
                "--task",
                "classify",
                "--train",
                &train,
                "--method",
                method,
                "--lora-r",
                "4",
                "--lora-targets",
                "query,value,dense",
                "--adapter-size",
                "8",
                "--max-steps",
                "6",
                "--lr",
                "1e-2",
                "--batch-size",
                "4",
                "--threads",
                "1",
                "--out",
                &d(out),
            ],
            "",
        );
        assert!(ok, "{err}");
        assert!(err.contains("trainable params"), "{err}");
        assert!(err.contains("adapter") && err.contains("KiB"), "{err}");
        assert!(dir.join(out).join("adapter_config.json").exists());
        assert!(!dir.join(out).join("model.safetensors").exists());
    }
    let predict = |extra: &[&str]| {
        let mut args = vec![
            "predict", "--model", &base, "--task", "classify", "--input", &train,
        ];
        args.extend_from_slice(extra);
        let (ok, out, err) = kiln(&args, "");
        assert!(ok, "{err}");
        out.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    let lora_alone = predict(&["--adapter", &d("lora")]);
    let adapter_alone = predict(&["--adapter", &d("adapter")]);
    assert_eq!(lora_alone.len(), 16);
    let a = format!("a={}", d("lora"));
    let b = format!("b={}", d("adapter"));
    assert_eq!(
        predict(&["--adapter", &a, "--adapter", &b, "--use", "a"]),
        lora_alone
    );
    assert_eq!(
        predict(&["--adapter", &a, "--adapter", &b, "--use", "b"]),
        adapter_alone
    );
    let (ok, _, err) = kiln(
        &[
            "merge",
            "--model",
            &base,
            "--adapter",
            &d("lora"),
            "--out",
            &d("merged"),
        ],
        "",
    );
    assert!(ok, "{err}");
    let merged = {
        let (ok, out, err) = kiln(
            &[
                "predict",
                "--model",
                &d("merged"),
                "--task",
                "classify",
                "--input",
                &train,
            ],
            "",
        );
        assert!(ok, "{err}");
        out.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    for (m, u) in merged.iter().zip(&lora_alone) {
        assert_eq!(m["label"], u["label"]);
        let pm = m["probabilities"].as_array().unwrap();
        let pu = u["probabilities"].as_array().unwrap();
        for (x, y) in pm.iter().zip(pu) {
            let d = (x.as_f64().unwrap() - y.as_f64().unwrap()).abs();
            assert!(d <= 1e-5, "merged vs unmerged probability {d}");
        }
    }
    // Bottleneck adapters cannot be folded into the weights: a clear error.
    let (ok, _, err) = kiln(
        &[
            "merge",
            "--model",
            &base,
            "--adapter",
            &d("adapter"),
            "--out",
            &d("m2"),
        ],
        "",
    );
    assert!(!ok && err.contains("cannot be folded"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// `predict --task qa`: one line per question with its id, the answer and its character span;
/// `eval --task qa` the SQuAD scores (0–100) transformers' post-processing gives.
#[test]
fn qa_predict_and_eval() {
    let model = fixture("tiny-bert-qa").to_string_lossy().into_owned();
    let data = fixture("qa-sample.jsonl").to_string_lossy().into_owned();
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("qa-expected.json")).unwrap())
            .unwrap();
    let qa = [
        "--max-length",
        "40",
        "--doc-stride",
        "12",
        "--max-answer-length",
        "8",
    ];
    let mut args = vec![
        "predict", "--model", &model, "--task", "qa", "--input", &data,
    ];
    args.extend_from_slice(&qa);
    let (ok, out, err) = kiln(&args, "");
    assert!(ok, "{err}");
    let lines = json_lines(&out);
    let want = expected["predictions"].as_array().unwrap();
    assert_eq!(lines.len(), want.len());
    for (l, w) in lines.iter().zip(want) {
        assert_eq!(l["id"], w["id"]);
        assert_eq!(l["answer"], w["text"]);
        assert_eq!(l["start"], w["start"]);
        assert_eq!(l["end"], w["end"]);
        let s = l["score"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&s), "{l}");
    }
    let mut args = vec![
        "eval", "--model", &model, "--task", "qa", "--data", &data, "--json",
    ];
    args.extend_from_slice(&qa);
    let (ok, out, err) = kiln(&args, "");
    assert!(ok, "{err}");
    let m: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(m["examples"], 4);
    assert!((m["f1"].as_f64().unwrap() - expected["f1"].as_f64().unwrap()).abs() < 1e-9);
    assert_eq!(
        m["exact_match"].as_f64().unwrap(),
        expected["exact_match"].as_f64().unwrap()
    );
}

/// `finetune --task seq2seq` with a decoder-only model, then `predict` (one prediction per
/// line) and `eval` (BLEU and chrF).
#[test]
fn seq2seq_finetune_predict_eval() {
    let dir = std::env::temp_dir().join(format!("kiln-cli-s2s-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let d = |n: &str| dir.join(n).to_string_lossy().into_owned();
    let mut data = String::new();
    for s in ["the cat sat", "a dog ran", "blue sea", "red sun rises"] {
        data.push_str(&format!("{{\"source\": \"{s}\", \"target\": \"{s}\"}}\n"));
    }
    std::fs::write(d("pairs.jsonl"), &data).unwrap();
    let model = fixture("tiny-gpt2").to_string_lossy().into_owned();
    let (ok, _, err) = kiln(
        &[
            "finetune",
            "--model",
            &model,
            "--task",
            "seq2seq",
            "--train",
            &d("pairs.jsonl"),
            "--valid",
            &d("pairs.jsonl"),
            "--max-steps",
            "2",
            "--batch-size",
            "2",
            "--max-target-length",
            "8",
            "--threads",
            "1",
            "--out",
            &d("out"),
        ],
        "",
    );
    assert!(ok, "{err}");
    assert!(err.contains("best bleu"), "{err}");
    let (ok, out, err) = kiln(
        &[
            "predict",
            "--model",
            &d("out"),
            "--task",
            "seq2seq",
            "--input",
            &d("pairs.jsonl"),
            "--max-target-length",
            "5",
            "--num-beams",
            "2",
        ],
        "",
    );
    assert!(ok, "{err}");
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 4);
    assert!(lines.iter().all(|l| l["prediction"].is_string()));
    let (ok, out, err) = kiln(
        &[
            "eval",
            "--model",
            &d("out"),
            "--task",
            "seq2seq",
            "--data",
            &d("pairs.jsonl"),
            "--max-target-length",
            "5",
            "--json",
        ],
        "",
    );
    assert!(ok, "{err}");
    let m: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(m["bleu"].is_number() && m["chrf"].is_number(), "{m}");
    assert_eq!(m["examples"], 4);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A scratch directory for one test.
#[test]
fn an_output_that_overflows_names_the_input_line() {
    // Finite weights (they pass the load check) that overflow for one token: "is".
    // 109 is "is" in vocab.txt.
    let m = edited_model("overflow", "tiny-bert", |t| {
        overflow_on(t, "bert.embeddings.word_embeddings.weight", &[109])
    });
    let (ok, out, err) = kiln(
        &["embed", "--model", m.to_str().unwrap()],
        "the cat\nthis is it\nmore\n",
    );
    assert!(!ok, "{out}");
    assert!(
        err.contains("<stdin> line 2") && err.contains("not finite"),
        "{err}"
    );
    std::fs::remove_dir_all(m).unwrap();
    // Generation: a NaN is not picked as a token; the prompt's line is named.
    let tok = kiln::tokenize::Tokenizer::from_dir(&fixture("tiny-gpt2"))
        .unwrap()
        .unwrap();
    let bad = tok.encode_plain("zebra").unwrap().ids;
    let good = tok.encode_plain("the cat").unwrap().ids;
    assert!(good.iter().all(|i| !bad.contains(i)));
    let g = edited_model("overflow-gpt", "tiny-gpt2", |t| {
        overflow_on(t, "wte.weight", &bad)
    });
    let (ok, _, err) = kiln(
        &[
            "generate",
            "--model",
            g.to_str().unwrap(),
            "--max-new-tokens",
            "3",
        ],
        "the cat\nzebra\n",
    );
    assert!(!ok);
    assert!(
        err.contains("<stdin> line 2") && err.contains("not finite"),
        "{err}"
    );
    std::fs::remove_dir_all(g).unwrap();
}

#[test]
fn embed_max_length_is_honoured_or_refused_with_the_minimum() {
    let m = fixture("tiny-bert");
    let embed = |len: &str| {
        let (ok, out, err) = kiln(
            &["embed", "--model", m.to_str().unwrap(), "--max-length", len],
            "the cat sat on the mat and looked at the dog\n",
        );
        (ok, out, err)
    };
    let (ok, _, err) = embed("1");
    assert!(!ok);
    assert!(
        err.contains("--max-length 1") && err.contains("minimum is 3"),
        "{err}"
    );
    let (ok, three, err) = embed("3");
    assert!(ok, "{err}");
    let (ok, all, err) = embed("64");
    assert!(ok, "{err}");
    assert_ne!(three, all, "--max-length 3 was not applied");
}

#[test]
fn fill_mask_refuses_masks_past_the_models_positions_naming_the_line() {
    let m = fixture("tiny-bert"); // 64 positions
    let many = vec!["[MASK]"; 70].join(" ");
    let long_tail = format!("the [MASK] sat {}", vec!["on the mat"; 40].join(" "));
    let (ok, _, err) = kiln(
        &["fill-mask", "--model", m.to_str().unwrap()],
        &format!("the [MASK] sat\n{many}\n"),
    );
    assert!(!ok);
    assert!(
        err.contains("<stdin> line 2") && err.contains("70 masks") && err.contains("64 positions"),
        "{err}"
    );
    // A long text whose masks all fit is cut to the positions and answered.
    let (ok, out, err) = kiln(&["fill-mask", "--model", m.to_str().unwrap()], &long_tail);
    assert!(ok, "{err}");
    assert_eq!(json_lines(&out)[0]["masks"].as_array().unwrap().len(), 1);
}

#[test]
fn tokenizer_training_is_reproducible_and_refuses_an_empty_corpus() {
    let dir = scratch("tok-repro");
    // English and Chinese text with many equally frequent pairs (ties the trainers must break
    // the same way every time).
    let corpus = dir.join("corpus.txt");
    let en = std::fs::read_to_string(fixture("apple_sentences.txt")).unwrap();
    std::fs::write(
        &corpus,
        format!("{en}我喜欢吃苹果。\n苹果公司发布了新手机。\n"),
    )
    .unwrap();
    for (kind, vocab) in [("wordpiece", "200"), ("bpe", "400"), ("unigram", "150")] {
        let mut made = Vec::new();
        for (run, threads) in ["1", "2", "1"].iter().enumerate() {
            let out = dir.join(format!("{kind}-{run}"));
            let (ok, _, err) = kiln(
                &[
                    "tokenizer",
                    "train",
                    "--corpus",
                    corpus.to_str().unwrap(),
                    "--kind",
                    kind,
                    "--vocab-size",
                    vocab,
                    "--lowercase",
                    "--threads",
                    threads,
                    "--out",
                    out.to_str().unwrap(),
                ],
                "",
            );
            assert!(ok, "{err}");
            made.push(std::fs::read(out.join("tokenizer.json")).unwrap());
        }
        assert!(
            made.windows(2).all(|w| w[0] == w[1]),
            "{kind}: tokenizer.json differs between runs"
        );
    }
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "\n  \n").unwrap();
    let (ok, _, err) = kiln(
        &[
            "tokenizer",
            "train",
            "--corpus",
            empty.to_str().unwrap(),
            "--kind",
            "wordpiece",
            "--vocab-size",
            "100",
            "--out",
            dir.join("none").to_str().unwrap(),
        ],
        "",
    );
    assert!(!ok);
    assert!(
        err.contains("empty.txt") && err.contains("no text"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn init_refuses_a_model_too_large_for_memory_with_the_figures() {
    let dir = scratch("huge");
    let (ok, _, err) = kiln(
        &[
            "init",
            "--arch",
            "gpt2",
            "--tokenizer",
            fixture("tiny-gpt2").to_str().unwrap(),
            "--layers",
            "200",
            "--hidden",
            "65536",
            "--heads",
            "64",
            "--out",
            dir.join("m").to_str().unwrap(),
        ],
        "",
    );
    assert!(!ok);
    assert!(
        err.contains("parameters") && err.contains("GiB") && err.contains("--hidden"),
        "{err}"
    );
    assert!(!dir.join("m").exists());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn predict_reads_stdin_takes_the_task_from_the_head_and_answers_every_line_in_place() {
    let tag = fixture("tiny-bert-tag");
    let tag = tag.to_str().unwrap();
    // Standard input, no --task (the model has a token head); ids carried; no words, no tags.
    let (ok, out, err) = kiln(
        &["predict", "--model", tag],
        "{\"id\": \"a\", \"tokens\": [\"the\", \"cat\"]}\n{\"id\": 7, \"tokens\": []}\n{\"tokens\": [\"sat\"]}\n",
    );
    assert!(ok, "{err}");
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["id"], "a");
    assert_eq!(lines[0]["tags"].as_array().unwrap().len(), 2);
    assert_eq!(lines[1]["id"], 7);
    assert_eq!(lines[1]["tags"], serde_json::json!([]));
    assert!(lines[2].get("id").is_none());
    // A sentence far longer than --max-length: every word is tagged (overlapping windows).
    let words: Vec<String> = (0..60)
        .map(|i| ["the", "cat", "sat", "on", "mat"][i % 5].into())
        .collect();
    let (ok, out, err) = kiln(
        &["predict", "--model", tag, "--max-length", "8"],
        &format!("{}\n", serde_json::json!({ "tokens": words })),
    );
    assert!(ok, "{err}");
    assert_eq!(json_lines(&out)[0]["tags"].as_array().unwrap().len(), 60);
    // --skip-invalid answers a malformed line and a record without words in their place.
    let input = "{\"tokens\": [\"a\"]}\nnot json\n{\"id\": \"x\", \"words\": [\"b\"]}\n{\"tokens\": [\"c\"]}\n";
    let (ok, _, err) = kiln(&["predict", "--model", tag], input);
    assert!(!ok && err.contains("<stdin> line 2"), "{err}");
    let (ok, out, err) = kiln(&["predict", "--model", tag, "--skip-invalid"], input);
    assert!(ok, "{err}");
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 4, "{out}");
    assert!(lines[0]["tags"].is_array() && lines[3]["tags"].is_array());
    assert_eq!(lines[1]["line"], 2);
    assert!(lines[1]["error"].as_str().unwrap().contains("JSON"));
    assert_eq!(
        (&lines[2]["id"], &lines[2]["line"]),
        (&"x".into(), &3.into())
    );
    assert!(
        lines[2]["error"].as_str().unwrap().contains("tokens"),
        "{}",
        lines[2]
    );
    // A --task the model has no head for names the head it has.
    let (ok, _, err) = kiln(&["predict", "--model", tag, "--task", "classify"], input);
    assert!(
        !ok && err.contains("token-classification head (--task tag)"),
        "{err}"
    );
    // eval reads standard input too, and scores on 0-100.
    let gold = "{\"tokens\": [\"the\", \"cat\"], \"tags\": [\"O\", \"B-PER\"]}\n";
    let (ok, out, err) = kiln(&["eval", "--model", tag, "--json"], gold);
    assert!(ok, "{err}");
    let m: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let acc = m["token_accuracy"].as_f64().unwrap();
    assert!([0.0, 50.0, 100.0].contains(&acc), "{m}");
}

#[test]
fn csv_and_tsv_integer_labels_work_with_named_classes_and_lines_count_the_header() {
    let dir = scratch("csv-labels");
    let m = fixture("tiny-bert-cls"); // labels neg, neutral, pos
    for (ext, sep) in [("csv", ","), ("tsv", "\t")] {
        let path = dir.join(format!("data.{ext}"));
        std::fs::write(
            &path,
            format!("text{sep}label\nthe cat{sep}2\nthe dog{sep}0\nbad row{sep}9\n"),
        )
        .unwrap();
        let (ok, _, err) = kiln(
            &[
                "eval",
                "--model",
                m.to_str().unwrap(),
                "--data",
                path.to_str().unwrap(),
            ],
            "",
        );
        // Line 4 of the file (the header is line 1) holds label 9, which no class has.
        assert!(!ok, "{ext}");
        assert!(
            err.contains(&format!("data.{ext} line 4")) && err.contains("label"),
            "{ext}: {err}"
        );
        std::fs::write(
            &path,
            format!("text{sep}label\nthe cat{sep}2\nthe dog{sep}0\n"),
        )
        .unwrap();
        let (ok, out, err) = kiln(
            &[
                "eval",
                "--model",
                m.to_str().unwrap(),
                "--data",
                path.to_str().unwrap(),
                "--json",
            ],
            "",
        );
        assert!(ok, "{ext}: {err}");
        assert_eq!(json_lines(&out)[0]["examples"], 2);
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn messages_say_each_thing_once_and_in_words() {
    // The OS error once, not once per layer of context.
    let (ok, _, err) = kiln(
        &[
            "predict",
            "--model",
            fixture("tiny-bert-cls").to_str().unwrap(),
            "--input",
            "/nonexistent/kiln-input.jsonl",
        ],
        "",
    );
    assert!(!ok);
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    // An adapter for another base names both widths.
    let m = minilm();
    let (ok, _, err) = kiln(
        &[
            "predict",
            "--model",
            m.to_str().unwrap(),
            "--adapter",
            fixture("peft-bert-cls").to_str().unwrap(),
        ],
        "{\"text\": \"hi\"}\n",
    );
    assert!(!ok);
    assert!(
        err.contains("made for a base with hidden size 96, this base has 384"),
        "{err}"
    );
    assert_eq!(err.matches("peft-bert-cls").count(), 1, "{err}");
}

/// all-MiniLM-L6-v2 from `scripts/get-minilm.sh` (`.ci/run` fetches it).
#[test]
fn a_closed_output_pipe_ends_quietly() {
    // As `kiln embed ... | head -1`: the reader goes away after one line.
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["embed", "--model", fixture("tiny-bert").to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        for _ in 0..20_000 {
            if stdin.write_all(b"a sentence to embed\n").is_err() {
                break;
            }
        }
    });
    let mut first = String::new();
    {
        use std::io::BufRead;
        let mut r = std::io::BufReader::new(child.stdout.take().unwrap());
        r.read_line(&mut first).unwrap();
    } // stdout closed here
    let out = child.wait_with_output().unwrap();
    let _ = feeder.join();
    assert!(first.starts_with("{\"embedding\""));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.trim().is_empty(), "{err}");
}

/// Runs `kiln ARGS` under a pseudo-terminal (util-linux `script`), returning what the terminal
/// showed.
fn on_terminal(args: &[&str]) -> String {
    let cmd = std::iter::once(env!("CARGO_BIN_EXE_kiln").to_string())
        .chain(args.iter().map(|a| format!("'{a}'")))
        .collect::<Vec<_>>()
        .join(" ");
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("util-linux `script`");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).replace('\r', "\n")
}

#[test]
fn long_inference_inputs_show_progress_on_a_terminal_only() {
    let dir = scratch("progress");
    let lines: String = (0..3000)
        .map(|i| format!("sentence number {i}\n"))
        .collect();
    std::fs::write(dir.join("lines.txt"), &lines).unwrap();
    let records: String = (0..600)
        .map(|i| {
            format!(
                "{{\"text\": \"sentence {i}\", \"label\": \"{}\"}}\n",
                ["neg", "pos"][i % 2]
            )
        })
        .collect();
    std::fs::write(dir.join("data.jsonl"), &records).unwrap();
    let d = |n: &str| dir.join(n).to_string_lossy().into_owned();
    let (bert, cls) = (fixture("tiny-bert"), fixture("tiny-bert-cls"));
    let (bert, cls) = (bert.to_str().unwrap(), cls.to_str().unwrap());
    let embed = [
        "embed",
        "--model",
        bert,
        "--input",
        &d("lines.txt"),
        "--output",
        &d("e.jsonl"),
    ];
    let shown = on_terminal(&embed);
    assert!(shown.contains("3000/3000 lines"), "{shown}");
    let predict = [
        "predict",
        "--model",
        cls,
        "--input",
        &d("data.jsonl"),
        "--output",
        &d("p.jsonl"),
    ];
    let shown = on_terminal(&predict);
    assert!(shown.contains("600/600 inputs"), "{shown}");
    // Not on a terminal: nothing on standard error.
    let (ok, _, err) = kiln(&embed, "");
    assert!(ok && err.is_empty(), "{err}");
    let (ok, _, err) = kiln(&predict, "");
    assert!(ok && err.is_empty(), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_quantized_model_runs_in_every_command_and_converts_back() {
    let dir = scratch("quantized");
    let d = |n: &str| dir.join(n).to_string_lossy().into_owned();
    let run = |args: &[&str], input: &str| {
        let (ok, out, err) = kiln(args, input);
        assert!(ok, "kiln {args:?}: {err}");
        (out, err)
    };
    for (model, out) in [
        ("tiny-bert", "qb"),
        ("tiny-gpt2", "qg"),
        ("tiny-bert-tag", "qt"),
    ] {
        let m = fixture(model);
        let (_, err) = run(
            &["quantize", "--model", m.to_str().unwrap(), "--out", &d(out)],
            "",
        );
        assert!(err.contains("layers int8"), "{err}");
    }
    let (info, _) = run(&["info", &d("qb"), "--json"], "");
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert!(
        info["quantization"]
            .as_str()
            .unwrap()
            .starts_with("kiln_int8"),
        "{info}"
    );
    let (out, _) = run(&["embed", "--model", &d("qb")], "the cat sat\n");
    assert_eq!(
        json_lines(&out)[0]["embedding"].as_array().unwrap().len(),
        96
    );
    let (out, _) = run(&["fill-mask", "--model", &d("qb")], "the [MASK] sat\n");
    assert_eq!(json_lines(&out)[0]["masks"].as_array().unwrap().len(), 1);
    let (out, _) = run(
        &[
            "generate",
            "--model",
            &d("qg"),
            "--prompt",
            "Hello",
            "--json",
        ],
        "",
    );
    assert!(json_lines(&out)[0]["token_ids"].is_array());
    let (out, _) = run(
        &["predict", "--model", &d("qt")],
        "{\"tokens\": [\"the\", \"cat\"]}\n",
    );
    assert_eq!(json_lines(&out)[0]["tags"].as_array().unwrap().len(), 2);
    let (out, _) = run(
        &["eval", "--model", &d("qt"), "--json"],
        "{\"tokens\": [\"the\", \"cat\"], \"tags\": [\"O\", \"B-PER\"]}\n",
    );
    assert!(json_lines(&out)[0]["f1"].is_number());
    // A language model's perplexity on a corpus, f32 and int8 alike.
    let corpus = fixture("apple_sentences.txt");
    let ppl = |m: &str| {
        let (out, _) = run(
            &[
                "eval",
                "--model",
                m,
                "--task",
                "lm",
                "--data",
                corpus.to_str().unwrap(),
                "--seq-len",
                "16",
                "--json",
            ],
            "",
        );
        json_lines(&out)[0]["perplexity"].as_f64().unwrap()
    };
    let (f, q) = (ppl(fixture("tiny-gpt2").to_str().unwrap()), ppl(&d("qg")));
    assert!((q / f - 1.0).abs() < 0.05, "perplexity f32 {f}, int8 {q}");
    // Back to f32 (what transformers loads): no quantization_config, f32 weights only.
    run(&["convert", "--model", &d("qb"), "--out", &d("f32")], "");
    let cfg = std::fs::read_to_string(dir.join("f32/config.json")).unwrap();
    assert!(!cfg.contains("quantization_config"), "{cfg}");
    let store = kiln::checkpoint::WeightStore::open_dir(&dir.join("f32")).unwrap();
    assert!(store
        .names()
        .iter()
        .all(|n| !store.is_i8(n) && !n.ends_with("weight_scale")));
    // Calibration measures every block layer and says what it chose.
    let calib = fixture("apple_sentences.txt");
    let bert = fixture("tiny-bert");
    let (_, err) = run(
        &[
            "quantize",
            "--model",
            bert.to_str().unwrap(),
            "--out",
            &d("qc"),
            "--calibration",
            calib.to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(err.matches("output error plain").count(), 12, "{err}");
    let (ok, _, err) = kiln(
        &[
            "quantize",
            "--model",
            bert.to_str().unwrap(),
            "--out",
            &d("qm"),
            "--max-error",
            "0.1",
        ],
        "",
    );
    assert!(!ok && err.contains("--calibration"), "{err}");
    // Quantizing again, or into the model's own directory, is refused.
    let (ok, _, err) = kiln(&["quantize", "--model", &d("qb"), "--out", &d("qq")], "");
    assert!(!ok && err.contains("already quantized"), "{err}");
    let (ok, _, err) = kiln(&["quantize", "--model", &d("f32"), "--out", &d("f32")], "");
    assert!(!ok && err.contains("--model directory"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn distill_cuts_the_teacher_and_writes_a_smaller_model_that_predicts() {
    let dir = scratch("distill");
    let data = dir.join("train.jsonl");
    let lines: Vec<String> = (0..24)
        .map(|i| {
            let label = ["neg", "neutral", "pos"][i % 3];
            serde_json::json!({"text": format!("item {i} is {label}"), "label": label}).to_string()
        })
        .collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    let teacher = fixture("tiny-bert-cls");
    let out = dir.join("student");
    let (t, d, o) = (
        teacher.to_str().unwrap(),
        data.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    let base = [
        "distill",
        "--teacher",
        t,
        "--task",
        "classify",
        "--train",
        d,
        "--max-steps",
        "4",
        "--batch-size",
        "8",
        "--out",
        o,
    ];
    let (ok, _, err) = kiln(&base, "");
    assert!(!ok && err.contains("--student-layers 0,2,4"), "{err}");
    let args: Vec<&str> = base
        .iter()
        .copied()
        .chain([
            "--student-layers",
            "0,2",
            "--alpha-ce",
            "0.5",
            "--temperature",
            "3",
            "--alpha-attn",
            "0.5",
            "--alpha-hidden",
            "0.5",
        ])
        .collect();
    let (ok, _, err) = kiln(&args, "");
    assert!(ok, "{err}");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["num_hidden_layers"], 2);
    let (ok, info, err) = kiln(&["info", o, "--json"], "");
    assert!(ok, "{err}");
    assert_eq!(json_lines(&info)[0]["layers"], 2, "{info}");
    let (ok, pred, err) = kiln(
        &["predict", "--model", o],
        "{\"text\": \"item 5 is good\"}\n",
    );
    assert!(ok, "{err}");
    assert!(["neg", "neutral", "pos"]
        .iter()
        .any(|l| json_lines(&pred)[0]["label"] == *l));
    let (ok, _, err) = kiln(
        &args
            .iter()
            .copied()
            .chain(["--overwrite", "--student-layers", "0,5"])
            .collect::<Vec<_>>(),
        "",
    );
    assert!(!ok && err.contains("layer 5 does not exist"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn prune_shrinks_the_model_every_command_runs_it_and_convert_dense_restores_the_shape() {
    let dir = scratch("prune");
    let data = dir.join("data.jsonl");
    let lines: Vec<String> = (0..24)
        .map(|i| {
            let label = ["neg", "neutral", "pos"][i % 3];
            serde_json::json!({"text": format!("item {i} is {label}"), "label": label}).to_string()
        })
        .collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    let model = fixture("tiny-bert-cls");
    let (m, d) = (model.to_str().unwrap(), data.to_str().unwrap());
    let pruned = dir.join("pruned");
    let pr = pruned.to_str().unwrap();
    let (ok, _, err) = kiln(
        &[
            "prune", "--model", m, "--out", pr, "--heads", "0.34", "--ffn", "0.5", "--data", d,
        ],
        "",
    );
    assert!(ok, "{err}");
    assert!(err.contains("importance from data"), "{err}");
    let (ok, info, err) = kiln(&["info", pr, "--json"], "");
    assert!(ok, "{err}");
    let info = &json_lines(&info)[0];
    let heads: u64 = info["pruned"]["heads_per_layer"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(heads, 6, "{info}");
    assert_eq!(info["task_heads"][1], "sequence-classification");
    let input = "{\"text\": \"item 5 is good\"}\n";
    let (ok, before, err) = kiln(&["predict", "--model", pr], input);
    assert!(ok, "{err}");
    // Dense again: the same predictions from a standard-shaped directory.
    let dense = dir.join("dense");
    let (ok, _, err) = kiln(
        &[
            "convert",
            "--model",
            pr,
            "--out",
            dense.to_str().unwrap(),
            "--dense",
        ],
        "",
    );
    assert!(ok, "{err}");
    let (ok, after, err) = kiln(&["predict", "--model", dense.to_str().unwrap()], input);
    assert!(ok, "{err}");
    let score = |s: &str| json_lines(s)[0]["score"].as_f64().unwrap();
    assert_eq!(
        json_lines(&before)[0]["label"],
        json_lines(&after)[0]["label"]
    );
    assert!((score(&before) - score(&after)).abs() < 1e-5);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dense.join("config.json")).unwrap()).unwrap();
    assert!(config.get("pruned_heads").is_none());
    // Recovery fine-tuning on the pruned model, with LoRA too.
    let (ok, _, err) = kiln(
        &[
            "finetune",
            "--model",
            pr,
            "--task",
            "classify",
            "--train",
            d,
            "--max-steps",
            "2",
            "--method",
            "lora",
            "--out",
            dir.join("lora").to_str().unwrap(),
        ],
        "",
    );
    assert!(ok, "{err}");
    // Bad requests are named.
    let (ok, _, err) = kiln(&["prune", "--model", m, "--out", pr, "--heads", "1.0"], "");
    assert!(!ok && err.contains("--heads 1"), "{err}");
    let (ok, _, err) = kiln(
        &["prune", "--model", m, "--out", pr, "--drop-layers", "7"],
        "",
    );
    assert!(!ok && err.contains("layer 7 does not exist"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// RoBERTa and DistilBERT through the commands: a new RoBERTa is pre-trained with masked LM and
/// fills masks; a new DistilBERT is fine-tuned and predicts; a RoBERTa classifier is pruned,
/// quantized and described.
#[test]
fn roberta_and_distilbert_run_through_the_commands() {
    let dir = scratch("variants");
    let d = |n: &str| dir.join(n).to_str().unwrap().to_string();
    let fx = |n: &str| fixture(n).to_str().unwrap().to_string();
    let corpus = dir.join("corpus.txt");
    let text: Vec<String> = (0..60)
        .map(|i| format!("the farmer {i} bought an apple and a pear at the market"))
        .collect();
    std::fs::write(&corpus, text.join("\n")).unwrap();
    let corpus = corpus.to_str().unwrap().to_string();
    let run = |args: &[&str]| {
        let (ok, out, err) = kiln(args, "");
        assert!(ok, "{args:?}: {err}");
        (out, err)
    };
    let json = |p: &std::path::Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    // RoBERTa: init with its byte-level BPE tokenizer, pre-train, fill a mask.
    let (_, err) = run(&[
        "init",
        "--arch",
        "roberta",
        "--size",
        "tiny",
        "--layers",
        "1",
        "--max-positions",
        "32",
        "--tokenizer",
        &fx("tiny-roberta"),
        "--out",
        &d("roberta"),
    ]);
    assert!(err.contains("a BERT of the same depth and width"), "{err}");
    let config = json(&dir.join("roberta/config.json"));
    assert_eq!(config["model_type"], "roberta");
    assert_eq!(
        config["max_position_embeddings"], 34,
        "32 positions after pad + 1"
    );
    run(&[
        "pretrain",
        "--model",
        &d("roberta"),
        "--objective",
        "mlm",
        "--corpus",
        &corpus,
        "--seq-len",
        "16",
        "--batch-size",
        "4",
        "--max-steps",
        "3",
        "--threads",
        "1",
        "--out",
        &d("roberta-pt"),
    ]);
    let (ok, out, err) = kiln(
        &["fill-mask", "--model", &d("roberta-pt")],
        "the farmer bought an<mask> at the market\n",
    );
    assert!(ok, "{err}");
    assert_eq!(json_lines(&out)[0]["masks"][0].as_array().unwrap().len(), 5);
    // DistilBERT: init, fine-tune a classifier, predict.
    let data = dir.join("data.jsonl");
    let lines: Vec<String> = (0..16)
        .map(|i| {
            let label = ["neg", "pos"][i % 2];
            serde_json::json!({"text": format!("item {i} is {label}"), "label": label}).to_string()
        })
        .collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    run(&[
        "init",
        "--arch",
        "distilbert",
        "--size",
        "tiny",
        "--layers",
        "1",
        "--tokenizer",
        &fx("tiny-bert"),
        "--out",
        &d("distil"),
    ]);
    run(&[
        "finetune",
        "--model",
        &d("distil"),
        "--task",
        "classify",
        "--train",
        data.to_str().unwrap(),
        "--max-steps",
        "2",
        "--batch-size",
        "8",
        "--out",
        &d("distil-cls"),
    ]);
    let config = json(&dir.join("distil-cls/config.json"));
    assert_eq!(
        config["architectures"][0],
        "DistilBertForSequenceClassification"
    );
    let (ok, out, err) = kiln(
        &["predict", "--model", &d("distil-cls")],
        "{\"text\": \"item 3 is pos\"}\n",
    );
    assert!(ok, "{err}");
    assert!(["neg", "pos"].contains(&json_lines(&out)[0]["label"].as_str().unwrap()));
    // LoRA on DistilBERT's own module names, merged back into a plain model.
    run(&[
        "finetune",
        "--model",
        &d("distil-cls"),
        "--task",
        "classify",
        "--train",
        data.to_str().unwrap(),
        "--max-steps",
        "2",
        "--batch-size",
        "8",
        "--method",
        "lora",
        "--out",
        &d("distil-lora"),
    ]);
    let adapter = json(&dir.join("distil-lora/adapter_config.json"));
    assert_eq!(
        adapter["target_modules"],
        serde_json::json!(["q_lin", "v_lin"])
    );
    run(&[
        "merge",
        "--model",
        &d("distil-cls"),
        "--adapter",
        &d("distil-lora"),
        "--out",
        &d("distil-merged"),
    ]);
    let input = "{\"text\": \"item 3 is pos\"}\n";
    let (_, a, _) = kiln(&["predict", "--model", &d("distil-lora")], input);
    let (_, b, _) = kiln(&["predict", "--model", &d("distil-merged")], input);
    let p = |s: &str| json_lines(s)[0]["probabilities"][0].as_f64().unwrap();
    assert!((p(&a) - p(&b)).abs() < 1e-5, "{a} vs {b}");
    // A RoBERTa classifier pruned (magnitude), quantized, described.
    run(&[
        "prune",
        "--model",
        &fx("tiny-roberta-cls"),
        "--out",
        &d("rc-pruned"),
        "--heads",
        "0.34",
        "--ffn",
        "0.5",
        "--importance",
        "magnitude",
    ]);
    run(&[
        "quantize",
        "--model",
        &d("rc-pruned"),
        "--out",
        &d("rc-int8"),
    ]);
    let (out, _) = run(&["info", &d("rc-int8"), "--json"]);
    let info = &json_lines(&out)[0];
    assert_eq!(info["model_type"], "roberta", "{info}");
    assert_eq!(
        info["architecture"], "RobertaForSequenceClassification",
        "{info}"
    );
    let (ok, out, err) = kiln(
        &["predict", "--model", &d("rc-int8")],
        "{\"text\": \"The cat sat.\"}\n",
    );
    assert!(ok, "{err}");
    assert!(json_lines(&out)[0]["label"].is_string(), "{out}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn electra_pretrains_and_fine_tunes_from_the_command_line() {
    let dir = scratch("electra");
    let d = |n: &str| dir.join(n).to_str().unwrap().to_string();
    let corpus = dir.join("corpus.txt");
    let text: Vec<String> = (0..60)
        .map(|i| format!("the farmer {i} bought an apple and a pear at the market"))
        .collect();
    std::fs::write(&corpus, text.join("\n")).unwrap();
    let run = |args: &[&str]| {
        let (ok, out, err) = kiln(args, "");
        assert!(ok, "{args:?}: {err}");
        (out, err)
    };
    let json = |p: &std::path::Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    // Factorized embeddings: tables 64 wide, projected to the hidden width of 128.
    run(&[
        "init",
        "--arch",
        "electra",
        "--size",
        "tiny",
        "--layers",
        "1",
        "--embedding-size",
        "64",
        "--max-positions",
        "32",
        "--tokenizer",
        fixture("tiny-bert").to_str().unwrap(),
        "--out",
        &d("init"),
    ]);
    assert_eq!(json(&dir.join("init/config.json"))["embedding_size"], 64);
    run(&[
        "pretrain",
        "--model",
        &d("init"),
        "--objective",
        "electra",
        "--generator-scale",
        "0.5",
        "--disc-weight",
        "20",
        "--corpus",
        corpus.to_str().unwrap(),
        "--seq-len",
        "16",
        "--batch-size",
        "4",
        "--max-steps",
        "3",
        "--out",
        &d("pt"),
    ]);
    let disc = json(&dir.join("pt/discriminator/config.json"));
    let generator = json(&dir.join("pt/generator/config.json"));
    assert_eq!(disc["architectures"][0], "ElectraForPreTraining");
    assert_eq!(generator["architectures"][0], "ElectraForMaskedLM");
    assert_eq!(generator["hidden_size"], 64);
    assert_eq!(generator["embedding_size"], 64);
    let metrics = std::fs::read_to_string(dir.join("pt/metrics.jsonl")).unwrap();
    let last = json_lines(&metrics).pop().unwrap();
    for k in [
        "gen_loss",
        "disc_loss",
        "disc_accuracy",
        "replaced_fraction",
    ] {
        assert!(last[k].is_number(), "{k}: {last}");
    }
    let (ok, out, err) = kiln(
        &["fill-mask", "--model", &d("pt/generator")],
        "the farmer bought an [MASK] at the market\n",
    );
    assert!(ok, "{err}");
    assert_eq!(json_lines(&out)[0]["masks"][0].as_array().unwrap().len(), 5);
    let (out, _) = run(&["info", &d("pt/discriminator")]);
    assert!(out.contains("replaced-token"), "{out}");
    // Fine-tuning starts from the discriminator (its head is replaced).
    let data = dir.join("data.jsonl");
    let lines: Vec<String> = (0..16)
        .map(|i| {
            let label = ["neg", "pos"][i % 2];
            serde_json::json!({"text": format!("item {i} is {label}"), "label": label}).to_string()
        })
        .collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    run(&[
        "finetune",
        "--model",
        &d("pt/discriminator"),
        "--task",
        "classify",
        "--train",
        data.to_str().unwrap(),
        "--max-steps",
        "2",
        "--batch-size",
        "8",
        "--out",
        &d("cls"),
    ]);
    let config = json(&dir.join("cls/config.json"));
    assert_eq!(
        config["architectures"][0],
        "ElectraForSequenceClassification"
    );
    let saved = kiln::checkpoint::WeightStore::open_dir(&dir.join("cls")).unwrap();
    assert!(
        !saved
            .names()
            .iter()
            .any(|n| n.starts_with("discriminator_predictions")),
        "the discriminator head was kept"
    );
    // A model of another architecture is refused with the way out.
    let (ok, _, err) = kiln(
        &[
            "pretrain",
            "--model",
            fixture("tiny-bert").to_str().unwrap(),
            "--objective",
            "electra",
            "--corpus",
            corpus.to_str().unwrap(),
            "--max-steps",
            "1",
            "--out",
            &d("bert-electra"),
        ],
        "",
    );
    assert!(!ok && err.contains("--arch electra"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn albert_runs_through_the_commands() {
    let dir = scratch("albert");
    let d = |n: &str| dir.join(n).to_str().unwrap().to_string();
    let corpus = dir.join("corpus.txt");
    let text: Vec<String> = (0..40)
        .map(|i| format!("the apple {i} fell from the tree in the garden"))
        .collect();
    std::fs::write(&corpus, text.join("\n")).unwrap();
    let run = |args: &[&str]| {
        let (ok, out, err) = kiln(args, "");
        assert!(ok, "{args:?}: {err}");
        (out, err)
    };
    let json = |p: &std::path::Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    // Three layers sharing one block, tables 32 wide: far fewer parameters than BERT's.
    let (_, err) = run(&[
        "init",
        "--arch",
        "albert",
        "--size",
        "tiny",
        "--layers",
        "3",
        "--embedding-size",
        "32",
        "--max-positions",
        "32",
        "--tokenizer",
        fixture("tiny-albert-mlm").to_str().unwrap(),
        "--out",
        &d("init"),
    ]);
    let line = err.lines().find(|l| l.starts_with("parameters:")).unwrap();
    let counts: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    assert!(
        counts.len() == 2 && counts[0] * 2 < counts[1],
        "ALBERT vs BERT parameters: {err}"
    );
    let config = json(&dir.join("init/config.json"));
    assert_eq!(config["model_type"], "albert");
    assert_eq!(config["num_hidden_groups"], 1);
    run(&[
        "pretrain",
        "--model",
        &d("init"),
        "--objective",
        "mlm",
        "--corpus",
        corpus.to_str().unwrap(),
        "--seq-len",
        "16",
        "--batch-size",
        "4",
        "--max-steps",
        "3",
        "--out",
        &d("pt"),
    ]);
    let (ok, out, err) = kiln(
        &["fill-mask", "--model", &d("pt")],
        "the [MASK] fell from the tree\n",
    );
    assert!(ok, "{err}");
    assert_eq!(json_lines(&out)[0]["masks"][0].as_array().unwrap().len(), 5);
    // LoRA on the shared block: one adapter, applied by every layer; merged back.
    let data = dir.join("data.jsonl");
    let lines: Vec<String> = (0..16)
        .map(|i| {
            let label = ["neg", "pos"][i % 2];
            serde_json::json!({"text": format!("apple {i} is {label}"), "label": label}).to_string()
        })
        .collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    run(&[
        "finetune",
        "--model",
        &d("pt"),
        "--task",
        "classify",
        "--train",
        data.to_str().unwrap(),
        "--max-steps",
        "2",
        "--batch-size",
        "8",
        "--method",
        "lora",
        "--out",
        &d("lora"),
    ]);
    let adapter = json(&dir.join("lora/adapter_config.json"));
    assert_eq!(
        adapter["target_modules"],
        serde_json::json!(["query", "value"])
    );
    let saved =
        kiln::checkpoint::WeightStore::open_files(&[dir.join("lora/adapter_model.safetensors")])
            .unwrap();
    let lora_a: Vec<String> = saved
        .names()
        .into_iter()
        .filter(|n| n.contains("lora_A"))
        .collect();
    assert_eq!(lora_a.len(), 2, "one LoRA per shared module: {lora_a:?}");
    assert!(lora_a
        .iter()
        .all(|n| n.contains("albert_layer_groups.0.albert_layers.0.")));
    run(&[
        "merge",
        "--model",
        &d("pt"),
        "--adapter",
        &d("lora"),
        "--out",
        &d("merged"),
    ]);
    let input = "{\"text\": \"apple 3 is pos\"}\n";
    let (_, a, _) = kiln(&["predict", "--model", &d("lora")], input);
    let (_, b, _) = kiln(&["predict", "--model", &d("merged")], input);
    let p = |s: &str| json_lines(s)[0]["probabilities"][0].as_f64().unwrap();
    assert!((p(&a) - p(&b)).abs() < 1e-5, "{a} vs {b}");
    assert_eq!(
        json(&dir.join("merged/config.json"))["architectures"][0],
        "AlbertForSequenceClassification"
    );
    // Structured pruning would cut every layer at once: refused, saying why.
    let (ok, _, err) = kiln(
        &[
            "prune",
            "--model",
            &d("merged"),
            "--out",
            &d("pruned"),
            "--heads",
            "0.5",
        ],
        "",
    );
    assert!(!ok && err.contains("share"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// The LSTM's whole life from the command line: init (both kinds) → pretrain (bilm, clm) →
/// info, embed and similarity by layer, generate (the forward LM of either), fine-tune and
/// predict; and the commands that do not apply say so.
#[test]
fn lstm_init_pretrain_embed_similarity_generate_finetune() {
    let dir = std::env::temp_dir().join(format!("kiln-cli-lstm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let d = |n: &str| dir.join(n).to_string_lossy().into_owned();
    let corpus = fixture("apple_sentences.txt")
        .to_string_lossy()
        .into_owned();
    let tok = fixture("tiny-bert").to_string_lossy().into_owned();
    let run = |args: &[&str], stdin: &str| {
        let (ok, out, err) = kiln(args, stdin);
        assert!(ok, "kiln {args:?} failed: {err}");
        (out, err)
    };
    for (name, bi) in [("bi", true), ("uni", false)] {
        let init = d(&format!("{name}-init"));
        let mut args = vec![
            "init",
            "--arch",
            "lstm",
            "--size",
            "tiny",
            "--layers",
            "2",
            "--hidden",
            "32",
            "--proj",
            "16",
            "--tokenizer",
            &tok,
            "--out",
            &init,
        ];
        if bi {
            args.push("--bidirectional");
        }
        let (_, err) = run(&args, "");
        assert!(
            err.contains("LSTM") && err.contains("projection 16"),
            "{err}"
        );
        let out = d(&format!("{name}-run"));
        let objective = if bi { "bilm" } else { "clm" };
        run(
            &[
                "pretrain",
                "--model",
                &init,
                "--objective",
                objective,
                "--corpus",
                &corpus,
                "--valid",
                &corpus,
                "--seq-len",
                "16",
                "--batch-size",
                "4",
                "--max-steps",
                "4",
                "--eval-every",
                "4",
                "--threads",
                "1",
                "--out",
                &out,
            ],
            "",
        );
        let (info, _) = run(&["info", &out, "--json"], "");
        let info: serde_json::Value = serde_json::from_str(&info).unwrap();
        assert_eq!(info["model_type"], "kiln_lstm");
        assert_eq!(info["bidirectional"], bi);
        assert_eq!(info["projection"], 16);
        // Contextual vectors: the output is both directions side by side.
        let (emb, _) = run(
            &["embed", "--model", &out, "--layer", "mean"],
            "an apple pie\n",
        );
        let width = json_lines(&emb)[0]["embedding"].as_array().unwrap().len();
        assert_eq!(width, if bi { 32 } else { 16 });
        run(
            &[
                "similarity",
                "--model",
                &out,
                "--word",
                "apple",
                "--input",
                &corpus,
                "--output",
                &d(&format!("{name}.png")),
                "--layer",
                "1",
            ],
            "",
        );
        let (ok, _, err) = kiln(
            &["embed", "--model", &out, "--layer", "3"],
            "an apple pie\n",
        );
        assert!(!ok && err.contains("to 2"), "{err}");
        // Generation runs the forward LM, its state as the cache.
        for strategy in ["greedy", "beam"] {
            let (gen, _) = run(
                &[
                    "generate",
                    "--model",
                    &out,
                    "--prompt",
                    "the apple",
                    "--max-new-tokens",
                    "5",
                    "--strategy",
                    strategy,
                    "--json",
                ],
                "",
            );
            let g = &json_lines(&gen)[0];
            assert!(g["token_ids"].as_array().unwrap().len() <= 5, "{g}");
            assert!(g["text"].is_string(), "{g}");
        }
    }
    // Fine-tuning the BiLSTM as a classifier, then predicting with it.
    let train = d("train.jsonl");
    let mut f = std::fs::File::create(&train).unwrap();
    for (i, line) in std::fs::read_to_string(&corpus)
        .unwrap()
        .lines()
        .enumerate()
    {
        let label = if i < 6 { "fruit" } else { "company" };
        writeln!(f, "{}", serde_json::json!({"text": line, "label": label})).unwrap();
    }
    drop(f);
    run(
        &[
            "finetune",
            "--model",
            &d("bi-run"),
            "--task",
            "classify",
            "--train",
            &train,
            "--valid",
            &train,
            "--max-steps",
            "6",
            "--batch-size",
            "4",
            "--threads",
            "1",
            "--out",
            &d("cls"),
        ],
        "",
    );
    let (pred, _) = run(
        &["predict", "--model", &d("cls")],
        "{\"text\": \"an apple pie\"}\n",
    );
    let label = json_lines(&pred)[0]["label"].as_str().unwrap().to_string();
    assert!(label == "fruit" || label == "company", "{pred}");
    // LoRA, quantization and pruning apply to attention blocks: refused, in words.
    for args in [
        vec!["quantize", "--model", &d("bi-run"), "--out", &d("q")],
        vec![
            "finetune",
            "--model",
            &d("bi-run"),
            "--task",
            "classify",
            "--train",
            &train,
            "--method",
            "lora",
            "--max-steps",
            "1",
            "--out",
            &d("lora"),
        ],
    ] {
        let (ok, _, err) = kiln(&args, "");
        assert!(!ok && err.contains("LSTM"), "{args:?}: {err}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}
