//! `kiln serve` end to end: the binary on an ephemeral loopback port, a real HTTP client, and
//! every route's answers against the offline commands' results.

use base64::Engine;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

mod common;
use common::*;

/// A running `kiln serve`; killed when dropped.
struct Server {
    child: Child,
    url: String,
    addr: String,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("serve")
            .args(["--port", "0", "--threads", "1"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let Some(at) = line.find("http://") else {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("the server did not start: {line}{err}");
        };
        let url = line[at..].trim().to_string();
        let addr = url.trim_start_matches("http://").to_string();
        Server { child, url, addr }
    }

    fn post(&self, route: &str, body: &Value) -> (u16, Value) {
        self.post_with(route, &body.to_string(), None)
    }

    fn post_with(&self, route: &str, body: &str, key: Option<&str>) -> (u16, Value) {
        let mut req = agent()
            .post(format!("{}{route}", self.url))
            .header("content-type", "application/json");
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        let mut res = req.send(body).unwrap();
        let status = res.status().as_u16();
        let text = res.body_mut().read_to_string().unwrap();
        let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{route}: {e}: {text}"));
        (status, v)
    }

    fn get(&self, route: &str) -> (u16, String) {
        let mut res = agent().get(format!("{}{route}", self.url)).call().unwrap();
        let status = res.status().as_u16();
        (status, res.body_mut().read_to_string().unwrap())
    }

    /// Sends SIGTERM and waits for the exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        // SAFETY: signalling our own child process.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let status = self.child.wait().unwrap();
        std::mem::forget(self);
        status
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// Runs the `kiln` binary with `stdin`; its standard output.
fn kiln(args: &[&str], stdin: &str) -> String {
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
    assert!(
        out.status.success(),
        "kiln {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json_lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn assert_close(a: &[f64], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol, "{what}[{i}]: {x} vs {y}");
    }
}

/// A request whose headers are sent but whose body is held back: the server counts it in
/// flight until `finish` sends the rest.
struct HeldRequest {
    stream: TcpStream,
    rest: Vec<u8>,
}

impl HeldRequest {
    fn start(addr: &str, route: &str, body: &Value) -> HeldRequest {
        let body = body.to_string().into_bytes();
        let mut stream = TcpStream::connect(addr).unwrap();
        let head = format!(
            "POST {route} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(&body[..1]).unwrap();
        stream.flush().unwrap();
        HeldRequest {
            stream,
            rest: body[1..].to_vec(),
        }
    }

    /// Sends the rest of the body; the status and the JSON answer.
    fn finish(mut self) -> (u16, Value) {
        self.stream.write_all(&self.rest).unwrap();
        self.answer()
    }

    /// The status and JSON answer, without sending the rest.
    fn answer(mut self) -> (u16, Value) {
        let mut raw = String::new();
        self.stream.read_to_string(&mut raw).unwrap();
        let status: u16 = raw[9..12].parse().unwrap();
        let body = &raw[raw.find("\r\n\r\n").unwrap() + 4..];
        (status, serde_json::from_str(body).unwrap())
    }
}

/// Waits until the server's metrics show `n` inference requests in flight.
fn in_flight(s: &Server, n: usize) {
    let want = format!("kiln_requests_in_flight {n}\n");
    for _ in 0..600 {
        if s.get("/metrics").1.contains(&want) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the server never had {n} request(s) in flight");
}

const SENTENCES: [&str; 4] = [
    "A small model that runs on every laptop.",
    "The river bank was muddy after the rain.",
    "I deposited the cheque at the bank.",
    "short",
];

#[test]
fn embeddings_equal_offline_embed_alone_and_across_concurrent_requests() {
    let m = minilm();
    let model = m.to_str().unwrap();
    let offline = |flag: &str| -> Vec<Vec<f64>> {
        json_lines(&kiln(
            &["embed", "--model", model, flag, "--threads", "1"],
            &SENTENCES.join("\n"),
        ))
        .iter()
        .map(|l| floats(&l["embedding"]))
        .collect()
    };
    let (plain, unit) = (offline("--no-normalize"), offline("--normalize"));
    let s = Server::start(&["--model", model, "--max-client-batch-size", "8"]);
    assert_eq!(s.get("/health").0, 200);

    let (st, v) = s.post(
        "/embed",
        &json!({ "inputs": SENTENCES, "normalize": false }),
    );
    assert_eq!(st, 200, "{v}");
    for (i, row) in v.as_array().unwrap().iter().enumerate() {
        assert_close(&floats(row), &plain[i], 1e-5, "embed");
    }
    // A single string is a list of one; normalize defaults to true, as in TEI.
    let (_, v) = s.post("/embed", &json!({ "inputs": SENTENCES[1] }));
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_close(&floats(&v[0]), &unit[1], 1e-5, "embed normalized");

    // OpenAI: normalized, usage counts the tokens /tokenize shows, base64 is the same floats.
    let (st, v) = s.post(
        "/v1/embeddings",
        &json!({ "input": SENTENCES, "model": "minilm" }),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "minilm");
    for (i, d) in v["data"].as_array().unwrap().iter().enumerate() {
        assert_eq!(d["object"], "embedding");
        assert_eq!(d["index"], i);
        assert_close(&floats(&d["embedding"]), &unit[i], 1e-5, "openai");
    }
    let (_, toks) = s.post("/tokenize", &json!({ "inputs": SENTENCES }));
    let n: usize = toks
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_array().unwrap().len())
        .sum();
    assert_eq!(v["usage"]["prompt_tokens"], n);
    assert_eq!(v["usage"]["total_tokens"], n);
    let (_, b) = s.post(
        "/v1/embeddings",
        &json!({ "input": SENTENCES[0], "encoding_format": "base64" }),
    );
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let got: Vec<f64> = bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
        .collect();
    assert_close(&got, &unit[0], 1e-5, "base64");
    // Token ids embed as their text does.
    let ids: Vec<u64> = toks[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_u64().unwrap())
        .collect();
    let (_, v) = s.post("/v1/embeddings", &json!({ "input": ids }));
    assert_close(&floats(&v["data"][0]["embedding"]), &unit[0], 1e-5, "ids");

    // Many clients at once: batches shared across requests give each its own rows.
    std::thread::scope(|sc| {
        for t in 0..8 {
            let s = &s;
            let unit = &unit;
            sc.spawn(move || {
                for k in 0..6 {
                    let i = (t + k) % SENTENCES.len();
                    let (st, v) = s.post("/embed", &json!({ "inputs": [SENTENCES[i]] }));
                    assert_eq!(st, 200, "{v}");
                    assert_close(&floats(&v[0]), &unit[i], 1e-5, "concurrent");
                }
            });
        }
    });
    let (_, metrics) = s.get("/metrics");
    assert!(
        metrics.contains("kiln_http_requests_total{route=\"/embed\",status=\"200\"} 50"),
        "{metrics}"
    );
    assert!(metrics.contains("kiln_batch_tokens_bucket"), "{metrics}");
    assert!(metrics.contains("kiln_queue_depth 0"), "{metrics}");
}

#[test]
fn limits_truncation_and_errors_answer_json_with_the_right_status() {
    let m = minilm();
    let model = m.to_str().unwrap();
    let s = Server::start(&[
        "--model",
        model,
        "--max-input-length",
        "6",
        "--max-client-batch-size",
        "2",
        "--payload-limit",
        "2000",
    ]);
    let long = SENTENCES[1];
    let (st, v) = s.post("/embed", &json!({ "inputs": long }));
    assert_eq!(st, 413, "{v}");
    assert_eq!(v["error_type"], "Validation");
    assert!(v["error"].as_str().unwrap().contains("inputs[0]"), "{v}");
    // Truncated on request: the offline embedding at the same length.
    let (st, v) = s.post("/embed", &json!({ "inputs": long, "truncate": true }));
    assert_eq!(st, 200, "{v}");
    let offline = json_lines(&kiln(
        &[
            "embed",
            "--model",
            model,
            "--normalize",
            "--max-length",
            "6",
        ],
        long,
    ));
    assert_close(
        &floats(&v[0]),
        &floats(&offline[0]["embedding"]),
        1e-5,
        "truncated",
    );

    for (body, status, what) in [
        (
            json!({ "inputs": ["a", "b", "c"] }).to_string(),
            413,
            "max-client-batch-size",
        ),
        (json!({ "inputs": [] }).to_string(), 422, "empty"),
        (json!({ "inputs": [1] }).to_string(), 422, "not text"),
        (json!({ "text": "a" }).to_string(), 422, "no inputs"),
        ("{\"inputs\": ".to_string(), 422, "malformed JSON"),
        ("x".repeat(3000), 413, "payload limit"),
        (
            json!({ "inputs": "a", "adapter": "nope" }).to_string(),
            422,
            "unknown adapter",
        ),
    ] {
        let (st, v) = s.post_with("/embed", &body, None);
        assert_eq!(st, status, "{what}: {v}");
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: {v}"
        );
    }
    let (st, v) = s.post("/v1/embeddings", &json!({ "input": [[5, 999999]] }));
    assert_eq!(st, 422, "{v}");
    assert!(v["error"].as_str().unwrap().contains("999999"), "{v}");
    let (st, v) = s.post("/predict", &json!({ "inputs": "a" }));
    assert_eq!(st, 404, "{v}");
    assert!(v["error"].as_str().unwrap().contains("/embed"), "{v}");
}

#[test]
fn an_api_key_is_required_when_set() {
    let m = fixture("tiny-bert");
    let s = Server::start(&[
        "--model",
        m.to_str().unwrap(),
        "--task",
        "embed",
        "--api-key",
        "sesame",
    ]);
    let body = json!({ "inputs": "hello" }).to_string();
    let (st, v) = s.post_with("/embed", &body, None);
    assert_eq!((st, v["error_type"].as_str()), (401, Some("Unauthorized")));
    let (st, _) = s.post_with("/embed", &body, Some("sesamf"));
    assert_eq!(st, 401);
    let (st, v) = s.post_with("/embed", &body, Some("sesame"));
    assert_eq!(st, 200, "{v}");
}

#[test]
fn over_the_concurrency_limit_answers_429_while_health_answers_and_shutdown_finishes_in_flight_work(
) {
    let m = fixture("tiny-bert");
    let s = Server::start(&[
        "--model",
        m.to_str().unwrap(),
        "--task",
        "embed",
        "--max-concurrent-requests",
        "1",
    ]);
    let held = HeldRequest::start(&s.addr, "/embed", &json!({ "inputs": "held back" }));
    in_flight(&s, 1);
    let (st, v) = s.post("/embed", &json!({ "inputs": "one more" }));
    assert_eq!(st, 429, "{v}");
    assert_eq!(v["error_type"], "Overloaded");
    assert_eq!(s.get("/health").0, 200);
    let (st, v) = held.finish();
    assert_eq!(st, 200, "{v}");
    let (st, _) = s.post("/embed", &json!({ "inputs": "one more" }));
    assert_eq!(st, 200);

    // SIGTERM with a request in flight: it is answered, then the server exits 0.
    let held = HeldRequest::start(&s.addr, "/embed", &json!({ "inputs": "in flight" }));
    in_flight(&s, 1);
    // SAFETY: signalling our own child process.
    unsafe {
        libc::kill(s.child.id() as i32, libc::SIGTERM);
    }
    // Once the signal is taken, new connections are refused; the held one is still served.
    for _ in 0..100 {
        if TcpStream::connect(&s.addr).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        TcpStream::connect(&s.addr).is_err(),
        "still accepting after SIGTERM"
    );
    let (st, v) = held.finish();
    assert_eq!(st, 200, "{v}");
    assert_eq!(v.as_array().unwrap().len(), 1);
    let status = s.terminate();
    assert!(status.success(), "{status:?}");
}

/// `kiln predict`'s probabilities for `texts` (JSON records) with the model flags.
fn offline_predict(flags: &[&str], records: &[Value]) -> Vec<Value> {
    let input: Vec<String> = records.iter().map(Value::to_string).collect();
    let mut args = vec!["predict"];
    args.extend_from_slice(flags);
    json_lines(&kiln(&args, &input.join("\n")))
}

#[test]
fn predict_and_rerank_equal_offline_predictions_with_adapters_chosen_per_request() {
    let base = fixture("tiny-bert-cls");
    let a = format!("a={}", fixture("kiln-lora-bert-cls").display());
    let b = format!("b={}", fixture("peft-bert-cls").display());
    let base = base.to_str().unwrap();
    let s = Server::start(&["--model", base, "--adapter", &a, "--adapter", &b]);
    let texts = ["a fine film", "dull and slow", "it was fine"];
    let recs: Vec<Value> = texts.iter().map(|t| json!({ "text": t })).collect();
    let want = |name: &str| {
        offline_predict(
            &[
                "--model",
                base,
                "--adapter",
                &a,
                "--adapter",
                &b,
                "--use",
                name,
            ],
            &recs,
        )
    };
    let (wa, wb) = (want("a"), want("b"));
    let labels = ["neg", "neutral", "pos"];
    let check = |got: &Value, want: &Value, what: &str| {
        let got = got.as_array().unwrap();
        assert_eq!(got.len(), 3, "{what}");
        // Highest first, every label once, scores the offline probabilities.
        for w in got.windows(2) {
            assert!(w[0]["score"].as_f64() >= w[1]["score"].as_f64(), "{what}");
        }
        for (id, name) in labels.iter().enumerate() {
            let e = got.iter().find(|e| e["label"] == *name).unwrap();
            let p = want["probabilities"][id].as_f64().unwrap();
            assert!(
                (e["score"].as_f64().unwrap() - p).abs() < 1e-5,
                "{what}: {name}"
            );
        }
    };
    // Requests for both adapters at once share batches; each gets its adapter's answer.
    std::thread::scope(|sc| {
        for round in 0..4 {
            let (s, wa, wb, check) = (&s, &wa, &wb, &check);
            sc.spawn(move || {
                let name = if round % 2 == 0 { "a" } else { "b" };
                let want = if name == "a" { wa } else { wb };
                let (st, v) = s.post("/predict", &json!({ "inputs": texts, "adapter": name }));
                assert_eq!(st, 200, "{v}");
                for (i, got) in v.as_array().unwrap().iter().enumerate() {
                    check(got, &want[i], name);
                }
            });
        }
    });
    // One text: the labels unwrapped, as TEI answers a single input.
    let (_, v) = s.post("/predict", &json!({ "inputs": texts[0], "adapter": "a" }));
    check(&v, &wa[0], "single");
    // Without an adapter the bare base has no head left to classify with.
    let (st, v) = s.post("/predict", &json!({ "inputs": texts[0] }));
    assert_eq!(st, 422, "{v}");
    assert!(v["error"].as_str().unwrap().contains("a, b"), "{v}");
    let (st, _) = s.post("/predict", &json!({ "inputs": texts[0], "adapter": "c" }));
    assert_eq!(st, 422);
    // Pairs: two strings are one pair, as TEI reads them.
    let pair = json!({ "text": "a fine film", "text_b": "dull" });
    let wp = offline_predict(
        &[
            "--model",
            base,
            "--adapter",
            &a,
            "--adapter",
            &b,
            "--use",
            "a",
            "--text-b-field",
            "text_b",
        ],
        &[pair],
    );
    let (_, v) = s.post(
        "/predict",
        &json!({ "inputs": ["a fine film", "dull"], "adapter": "a" }),
    );
    check(&v, &wp[0], "pair");
    let (st, v) = s.post(
        "/rerank",
        &json!({ "query": "q", "texts": ["x"], "adapter": "a" }),
    );
    assert_eq!(st, 422, "{v}");
    assert!(v["error"].as_str().unwrap().contains("one output"), "{v}");
}

#[test]
fn rerank_orders_texts_by_the_cross_encoders_sigmoid_score() {
    let m = fixture("tiny-bert-reg");
    let model = m.to_str().unwrap();
    let s = Server::start(&["--model", model]);
    let docs = ["a fine film", "dull and slow", "it was fine", "rain"];
    let recs: Vec<Value> = docs
        .iter()
        .map(|d| json!({ "text": "good films", "text_b": d }))
        .collect();
    let want = offline_predict(&["--model", model, "--text-b-field", "text_b"], &recs);
    let (st, v) = s.post(
        "/rerank",
        &json!({ "query": "good films", "texts": docs, "return_text": true }),
    );
    assert_eq!(st, 200, "{v}");
    let got = v.as_array().unwrap();
    assert_eq!(got.len(), docs.len());
    for w in got.windows(2) {
        assert!(w[0]["score"].as_f64() >= w[1]["score"].as_f64());
    }
    for e in got {
        let i = e["index"].as_u64().unwrap() as usize;
        assert_eq!(e["text"], docs[i]);
        let logit = want[i]["score"].as_f64().unwrap();
        let p = 1.0 / (1.0 + (-logit).exp());
        assert!(
            (e["score"].as_f64().unwrap() - p).abs() < 1e-5,
            "{e} vs {logit}"
        );
    }
    let (_, raw) = s.post(
        "/rerank",
        &json!({ "query": "good films", "texts": docs, "raw_scores": true }),
    );
    for e in raw.as_array().unwrap() {
        let i = e["index"].as_u64().unwrap() as usize;
        let logit = want[i]["score"].as_f64().unwrap();
        assert!((e["score"].as_f64().unwrap() - logit).abs() < 1e-5);
        assert!(e.get("text").is_none());
    }
}

#[test]
fn tag_qa_and_fill_mask_answer_as_the_offline_commands() {
    // Tagging: words as a list or as a string.
    let tag = fixture("tiny-bert-tag");
    let s = Server::start(&["--model", tag.to_str().unwrap()]);
    let recs = vec![
        json!({ "tokens": ["Anna", "lives", "in", "Paris"] }),
        json!({ "tokens": ["Hi"] }),
    ];
    let want = offline_predict(&["--model", tag.to_str().unwrap()], &recs);
    let (st, v) = s.post("/tag", &json!({ "inputs": recs }));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v, Value::Array(want.clone()));
    let (_, v) = s.post("/tag", &json!({ "inputs": "Anna lives in Paris" }));
    assert_eq!(v[0], want[0]);
    let (st, v) = s.post("/tag", &json!({ "inputs": [{ "words": ["x"] }] }));
    assert_eq!(st, 422, "{v}");
    assert!(
        v["error"].as_str().unwrap().starts_with("`inputs[0]`"),
        "{v}"
    );
    drop(s);

    let qa = fixture("tiny-bert-qa");
    let s = Server::start(&["--model", qa.to_str().unwrap()]);
    let sample = std::fs::read_to_string(fixture("qa-sample.jsonl")).unwrap();
    let recs: Vec<Value> = json_lines(&sample)
        .into_iter()
        .take(2)
        .map(|r| json!({ "id": r["id"], "question": r["question"], "context": r["context"] }))
        .collect();
    let want = offline_predict(&["--model", qa.to_str().unwrap()], &recs);
    let (st, v) = s.post("/qa", &json!({ "inputs": recs }));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v, Value::Array(want));
    drop(s);

    let mlm = fixture("tiny-bert");
    let s = Server::start(&["--model", mlm.to_str().unwrap(), "--task", "fill-mask"]);
    let texts = ["the [MASK] is here", "[MASK] and [MASK]"];
    let want = json_lines(&kiln(
        &[
            "fill-mask",
            "--model",
            mlm.to_str().unwrap(),
            "--top-k",
            "3",
        ],
        &texts.join("\n"),
    ));
    let (st, v) = s.post("/fill-mask", &json!({ "inputs": texts, "top_k": 3 }));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v, Value::Array(want));
    let (st, _) = s.post("/fill-mask", &json!({ "inputs": "x", "top_k": 0 }));
    assert_eq!(st, 422);
}

/// The `data:` payloads of a server-sent-events body.
fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|ev| {
            ev.lines()
                .find_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
                .map(str::to_string)
        })
        .collect()
}

fn post_raw(s: &Server, route: &str, body: &Value) -> (u16, String) {
    let mut res = agent()
        .post(format!("{}{route}", s.url))
        .header("content-type", "application/json")
        .send(body.to_string())
        .unwrap();
    (
        res.status().as_u16(),
        res.body_mut().read_to_string().unwrap(),
    )
}

#[test]
fn generation_equals_kiln_generate_batched_streamed_and_through_openai() {
    let m = fixture("tiny-gpt2");
    let model = m.to_str().unwrap();
    let s = Server::start(&["--model", model]);
    let prompts = [
        "hello world",
        "the cat sat on",
        "a",
        "one two three four five",
    ];
    let offline = |prompt: &str, extra: &[&str]| -> Value {
        let mut args = vec!["generate", "--model", model, "--prompt", prompt, "--json"];
        args.extend_from_slice(extra);
        json_lines(&kiln(&args, ""))[0].clone()
    };
    // Concurrent requests of different lengths decode in shared steps; each equals its
    // continuation alone.
    std::thread::scope(|sc| {
        for (i, prompt) in prompts.iter().enumerate() {
            let s = &s;
            let offline = &offline;
            sc.spawn(move || {
                let n = 4 + 3 * i;
                let want = offline(prompt, &["--max-new-tokens", &n.to_string()]);
                let (st, v) = s.post(
                    "/generate",
                    &json!({ "inputs": prompt, "parameters": { "max_new_tokens": n, "details": true } }),
                );
                assert_eq!(st, 200, "{v}");
                assert_eq!(v["generated_text"], want["text"], "{prompt}");
                let ids: Vec<Value> = v["details"]["tokens"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t["id"].clone())
                    .collect();
                assert_eq!(Value::Array(ids), want["token_ids"], "{prompt}");
                assert_eq!(v["details"]["generated_tokens"], n);
                assert_eq!(v["details"]["finish_reason"], "length");
            });
        }
    });

    // Sampling with a seed: kiln generate's draw.
    let want = offline(
        prompts[1],
        &[
            "--max-new-tokens",
            "6",
            "--strategy",
            "sample",
            "--temperature",
            "0.8",
            "--top-k",
            "30",
            "--seed",
            "11",
        ],
    );
    let (_, v) = s.post(
        "/generate",
        &json!({ "inputs": prompts[1], "parameters": {
            "max_new_tokens": 6, "do_sample": true, "temperature": 0.8, "top_k": 30, "seed": 11, "details": true } }),
    );
    assert_eq!(v["generated_text"], want["text"]);
    assert_eq!(v["details"]["seed"], 11);
    // Beam search.
    let want = offline(
        prompts[0],
        &[
            "--max-new-tokens",
            "5",
            "--strategy",
            "beam",
            "--num-beams",
            "3",
        ],
    );
    let (_, v) = s.post(
        "/generate",
        &json!({ "inputs": prompts[0], "parameters": { "max_new_tokens": 5, "num_beams": 3 } }),
    );
    assert_eq!(v["generated_text"], want["text"]);

    // The stream: one event per token; the pieces join to the text of the last event.
    let (_, whole) = s.post(
        "/generate",
        &json!({ "inputs": prompts[0], "parameters": { "max_new_tokens": 7 } }),
    );
    let (st, body) = post_raw(
        &s,
        "/generate_stream",
        &json!({ "inputs": prompts[0], "parameters": { "max_new_tokens": 7 } }),
    );
    assert_eq!(st, 200, "{body}");
    let events: Vec<Value> = sse_data(&body)
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(events.len(), 7, "{body}");
    let joined: String = events
        .iter()
        .map(|e| e["token"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(joined, whole["generated_text"].as_str().unwrap());
    let last = events.last().unwrap();
    assert_eq!(last["generated_text"], whole["generated_text"]);
    assert_eq!(last["details"]["finish_reason"], "length");
    assert!(events[..6].iter().all(|e| e["generated_text"].is_null()));
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["index"], i + 1);
        assert!(e["token"]["logprob"].as_f64().unwrap() <= 0.0);
    }

    // A stop sequence: TGI keeps it and says so; OpenAI leaves it out.
    let text = whole["generated_text"].as_str().unwrap();
    let stop: String = text.chars().skip(1).take(2).collect();
    let (_, v) = s.post(
        "/generate",
        &json!({ "inputs": prompts[0], "parameters": { "max_new_tokens": 7, "stop": [stop], "details": true } }),
    );
    let cut = &text[..text.find(&stop).unwrap()];
    assert_eq!(v["details"]["finish_reason"], "stop_sequence", "{v}");
    assert!(v["generated_text"].as_str().unwrap().starts_with(cut));
    assert!(v["generated_text"].as_str().unwrap().contains(&stop));
    let req = json!({ "prompt": prompts[0], "max_tokens": 7, "temperature": 0, "stop": stop });
    let (_, v) = s.post("/v1/completions", &req);
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], cut);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // OpenAI, streamed and not: the same text, then [DONE].
    let req = json!({ "prompt": prompts[0], "max_tokens": 7, "temperature": 0 });
    let (_, v) = s.post("/v1/completions", &req);
    assert_eq!(v["choices"][0]["text"], whole["generated_text"]);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 7);
    let mut streamed = req.clone();
    streamed["stream"] = json!(true);
    let (_, body) = post_raw(&s, "/v1/completions", &streamed);
    let data = sse_data(&body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let joined: String = chunks
        .iter()
        .map(|c| c["choices"][0]["text"].as_str().unwrap())
        .collect();
    assert_eq!(joined, whole["generated_text"].as_str().unwrap());
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "length"
    );

    for (body, what) in [
        (
            json!({ "inputs": "a", "parameters": { "temperature": 0 } }),
            "temperature",
        ),
        (
            json!({ "inputs": "a", "parameters": { "num_beams": 2, "do_sample": true } }),
            "beams and sampling",
        ),
        (
            json!({ "inputs": "a", "parameters": { "max_new_tokens": 0 } }),
            "max_new_tokens",
        ),
        (json!({ "inputs": "", "parameters": {} }), "empty prompt"),
        (
            json!({ "inputs": "a", "parameters": { "top_p": 1.5 } }),
            "top_p",
        ),
    ] {
        let (st, v) = s.post("/generate", &body);
        assert_eq!(st, 422, "{what}: {v}");
    }
    let long = "word ".repeat(400);
    let (st, v) = s.post("/generate", &json!({ "inputs": long }));
    assert_eq!(st, 413, "{v}");
    let (st, v) = s.post(
        "/generate",
        &json!({ "inputs": long, "parameters": { "truncate": 8, "max_new_tokens": 2 } }),
    );
    assert_eq!(st, 200, "{v}");
}

#[test]
fn an_input_that_overflows_fails_its_own_request_only_and_the_server_goes_on() {
    // "is" is id 109 of tiny-bert's vocabulary.
    let m = edited_model("overflow", "tiny-bert", |t| {
        overflow_on(t, "word_embeddings.weight", &[109])
    });
    let model = m.to_str().unwrap();
    let s = Server::start(&["--model", model, "--task", "embed"]);
    let good = json_lines(&kiln(
        &["embed", "--model", model, "--normalize"],
        "the cat",
    ));
    std::thread::scope(|sc| {
        for k in 0..6 {
            let (s, good) = (&s, &good);
            sc.spawn(move || {
                if k % 2 == 0 {
                    let (st, v) = s.post("/embed", &json!({ "inputs": "this is it" }));
                    assert_eq!(st, 500, "{v}");
                    assert_eq!(v["error_type"], "Backend");
                    assert!(v["error"].as_str().unwrap().contains("not finite"), "{v}");
                } else {
                    let (st, v) = s.post("/embed", &json!({ "inputs": "the cat" }));
                    assert_eq!(st, 200, "{v}");
                    assert_close(&floats(&v[0]), &floats(&good[0]["embedding"]), 1e-5, "good");
                }
            });
        }
    });
    assert_eq!(s.get("/health").0, 200);
    drop(s);
    std::fs::remove_dir_all(m).unwrap();

    // Positions from 10 on overflow (not a token's row: GPT-2's head is tied to the token
    // embeddings, and a huge row there would make every output's logits infinite).
    let g = edited_model("overflow-gpt", "tiny-gpt2", |t| {
        overflow_on(t, "wpe.weight", &(10..32).collect::<Vec<u32>>())
    });
    let model = g.to_str().unwrap();
    let s = Server::start(&["--model", model]);
    let want = json_lines(&kiln(
        &[
            "generate",
            "--model",
            model,
            "--prompt",
            "the cat",
            "--max-new-tokens",
            "6",
            "--json",
        ],
        "",
    ));
    std::thread::scope(|sc| {
        for k in 0..4 {
            let (s, want) = (&s, &want);
            sc.spawn(move || {
                let prompt = if k % 2 == 0 {
                    "one two three four five six seven eight nine ten eleven twelve"
                } else {
                    "the cat"
                };
                let (st, v) = s.post(
                    "/generate",
                    &json!({ "inputs": prompt, "parameters": { "max_new_tokens": 6 } }),
                );
                if k % 2 == 0 {
                    assert_eq!(st, 500, "{v}");
                } else {
                    assert_eq!(st, 200, "{v}");
                    assert_eq!(v["generated_text"], want[0]["text"]);
                }
            });
        }
    });
    assert_eq!(s.get("/health").0, 200);
    drop(s);
    std::fs::remove_dir_all(g).unwrap();
}

#[test]
fn a_body_that_never_arrives_is_answered_408_and_frees_its_place() {
    let m = fixture("tiny-bert");
    let s = Server::start(&[
        "--model",
        m.to_str().unwrap(),
        "--task",
        "embed",
        "--max-concurrent-requests",
        "1",
        "--read-timeout",
        "0.5",
    ]);
    let held = HeldRequest::start(&s.addr, "/embed", &json!({ "inputs": "never sent" }));
    in_flight(&s, 1);
    let (st, v) = held.answer();
    assert_eq!(st, 408, "{v}");
    assert_eq!(v["error_type"], "Timeout");
    in_flight(&s, 0);
    let (st, _) = s.post("/embed", &json!({ "inputs": "next" }));
    assert_eq!(st, 200);
}
