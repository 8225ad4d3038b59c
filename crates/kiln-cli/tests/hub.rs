//! `--model ORG/NAME`: a hub id is found in the local hub cache (the layout transformers
//! writes) or downloaded from `HF_ENDPOINT`; tested against a small mock hub on loopback.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../kiln/tests/fixtures")
        .join(name)
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-hub-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The repository `org/tiny-bert` of the mock hub: the tiny BERT fixture, plus an ONNX copy
/// a model directory does not need.
fn repo_files() -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(fixture("tiny-bert"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name() != "expected.json")
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.push(("onnx/model.onnx".into(), vec![0u8; 64]));
    v
}

/// Serves the hub API `hf-hub` uses (repository info; ranged file downloads with the commit
/// and ETag headers), one request per connection, logging each request line.
fn mock_hub() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = log.clone();
    std::thread::spawn(move || {
        let files = repo_files();
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            if r.read_line(&mut line).is_err() {
                continue;
            }
            let mut range = None;
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).is_err() || h == "\r\n" || h.is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    range = Some(v.trim().to_string());
                }
            }
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            seen.lock().unwrap().push(path.clone());
            let (status, headers, body) = if path == "/api/models/org/tiny-bert/revision/main" {
                let sib: Vec<String> = files
                    .iter()
                    .map(|(n, _)| format!("{{\"rfilename\":\"{n}\"}}"))
                    .collect();
                let body = format!(
                    "{{\"id\":\"org/tiny-bert\",\"sha\":\"{SHA}\",\"siblings\":[{}]}}",
                    sib.join(",")
                );
                ("200 OK", vec![], body.into_bytes())
            } else if let Some((_, data)) = path
                .strip_prefix("/org/tiny-bert/resolve/main/")
                .and_then(|name| files.iter().find(|(n, _)| n == name))
            {
                let n = data.len();
                let (a, b) = match range.as_deref().and_then(|r| r.split_once('-')) {
                    Some((a, b)) => (
                        a.parse().unwrap_or(0),
                        b.parse().unwrap_or(n - 1).min(n - 1),
                    ),
                    None => (0, n - 1),
                };
                let etag = format!("{:016x}", n * 7919 + path.len());
                let headers = vec![
                    format!("ETag: \"{etag}\""),
                    format!("X-Repo-Commit: {SHA}"),
                    format!("Content-Range: bytes {a}-{b}/{n}"),
                ];
                ("206 Partial Content", headers, data[a..=b].to_vec())
            } else {
                ("404 Not Found", vec![], b"not found".to_vec())
            };
            let mut head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            for h in headers {
                head.push_str(&h);
                head.push_str("\r\n");
            }
            head.push_str("\r\n");
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&body);
            let _ = s.flush();
            let _ = s.set_read_timeout(Some(std::time::Duration::from_millis(5)));
            let _ = s.read(&mut [0u8; 1]);
        }
    });
    (format!("http://{addr}"), log)
}

/// `kiln ARGS` with the hub settings of the test only (no proxies, tokens or user cache).
fn kiln(args: &[&str], cache: &Path, endpoint: &str, offline: bool) -> (bool, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.args(args)
        .env("HF_HUB_CACHE", cache)
        .env("HF_ENDPOINT", endpoint);
    for v in [
        "HF_HOME",
        "HF_TOKEN",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        c.env_remove(v);
    }
    if offline {
        c.env("HF_HUB_OFFLINE", "1");
    }
    let out = c.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A port nothing listens on.
fn dead_endpoint() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", l.local_addr().unwrap())
}

#[test]
fn a_hub_id_is_downloaded_once_then_found_in_the_cache_offline() {
    let cache = scratch("cache");
    let local = fixture("tiny-bert");
    let info =
        |model: &str, endpoint: &str| kiln(&["info", model, "--json"], &cache, endpoint, false);
    let (ok, expected, err) = info(local.to_str().unwrap(), &dead_endpoint());
    assert!(ok, "{err}");
    let (endpoint, log) = mock_hub();
    let (ok, got, err) = info("org/tiny-bert", &endpoint);
    assert!(ok, "{err}");
    let params =
        |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap()["parameters"].clone();
    assert_eq!(params(&got), params(&expected));
    let requests = log.lock().unwrap().clone();
    assert!(
        requests.iter().any(|r| r.ends_with("/model.safetensors")),
        "{requests:?}"
    );
    assert!(
        !requests.iter().any(|r| r.contains("onnx")),
        "fetched what a model needs not: {requests:?}"
    );
    // The layout transformers writes: refs/main names the snapshot.
    let repo = cache.join("models--org--tiny-bert");
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main"))
            .unwrap()
            .trim(),
        SHA
    );
    assert!(repo
        .join("snapshots")
        .join(SHA)
        .join("config.json")
        .exists());
    // No hub now: the cached model is used, with no request.
    let n = log.lock().unwrap().len();
    let (ok, again, err) = info("org/tiny-bert", &dead_endpoint());
    assert!(ok, "{err}");
    assert_eq!(params(&again), params(&expected));
    assert_eq!(log.lock().unwrap().len(), n);
    let (ok, _, err) = kiln(
        &["embed", "--model", "org/tiny-bert"],
        &cache,
        &dead_endpoint(),
        true,
    );
    assert!(ok, "offline from the cache: {err}");
    std::fs::remove_dir_all(cache).unwrap();
}

#[test]
fn a_model_transformers_cached_is_found_and_a_missing_one_is_named() {
    let cache = scratch("hand");
    // As huggingface_hub leaves a model where symlinks are unavailable: files copied into the
    // snapshot.
    let snap = cache.join("models--someone--tiny/snapshots/abc123");
    std::fs::create_dir_all(&snap).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture("tiny-bert").join(f), snap.join(f)).unwrap();
    }
    std::fs::create_dir_all(cache.join("models--someone--tiny/refs")).unwrap();
    std::fs::write(cache.join("models--someone--tiny/refs/main"), "abc123").unwrap();
    let input = cache.join("s.txt");
    std::fs::write(&input, "a sentence\n").unwrap();
    let (ok, out, err) = kiln(
        &[
            "embed",
            "--model",
            "someone/tiny",
            "--input",
            input.to_str().unwrap(),
        ],
        &cache,
        &dead_endpoint(),
        false,
    );
    assert!(ok && out.starts_with("{\"embedding\""), "{err}");
    // Not cached, no hub: the id and the cache path are named.
    let (ok, _, err) = kiln(
        &["embed", "--model", "someone/absent"],
        &cache,
        &dead_endpoint(),
        false,
    );
    assert!(!ok);
    assert!(
        err.contains("someone/absent") && err.contains("models--someone--absent"),
        "{err}"
    );
    let (ok, _, err) = kiln(
        &["embed", "--model", "someone/absent"],
        &cache,
        &dead_endpoint(),
        true,
    );
    assert!(!ok && err.contains("HF_HUB_OFFLINE"), "{err}");
    std::fs::remove_dir_all(cache).unwrap();
}
