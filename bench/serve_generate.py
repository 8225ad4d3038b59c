#!/usr/bin/env python3
"""`kiln serve` generating: tokens/s with 1 and 8 concurrent streaming clients, against offline
`kiln generate` of the same prompts in the same run.

A GPT-2 (default: a GPT-2 mini made here with `kiln init --arch gpt2 --size mini`; its weights
do not change the arithmetic, so random ones measure the speed) is served with `--threads N`.
Each client sends POST /generate_stream (greedy, --new-tokens new tokens) for the SST-2
validation sentences in turn and reads the server-sent events; every token event is counted.

Reported per client count:
  - tokens/s: all tokens received / wall time;
  - time to first token: p50 over the requests;
  - the ratio to offline `kiln generate --json` over the same prompts, one after another in one
    process (its start-up included; it is the single-stream baseline).

Continuous batching shows as 8 clients getting more tokens/s than 1: their decoding steps share
one forward pass.

Usage (from the repository root, after `cargo build --release`; stdlib python3 only):
    python3 bench/serve_generate.py [--threads 2] [--model DIR] [--requests 16] [--new-tokens 64]
Appends one JSON line per case to bench/results/serve.jsonl.
"""

import argparse
import datetime
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start_server(kiln, model, threads):
    p = subprocess.Popen(
        [kiln, "serve", "--model", model, "--port", "0", "--threads", str(threads)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    line = p.stdout.readline()
    if "http://" not in line:
        p.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    host, port = line.strip().rsplit("http://", 1)[1].split(":")
    return p, host, int(port)


def stop_server(p):
    try:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(timeout=10)
    except Exception:
        os.killpg(p.pid, signal.SIGKILL)


def stream_one(host, port, prompt, new_tokens):
    """(tokens received, seconds to the first token, seconds in all) of one streamed request."""
    c = http.client.HTTPConnection(host, port, timeout=300)
    c.connect()
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    body = json.dumps({"inputs": prompt, "parameters": {"max_new_tokens": new_tokens}})
    t0 = time.perf_counter()
    c.request("POST", "/generate_stream", body, {"content-type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise SystemExit(f"/generate_stream answered {r.status}: {r.read()[:300]!r}")
    tokens, first = 0, None
    while True:
        line = r.fp.readline()
        if not line:
            break
        if line.startswith(b"data:"):
            ev = json.loads(line[5:])
            if "error" in ev:
                raise SystemExit(f"stream error: {ev}")
            tokens += 1
            if first is None:
                first = time.perf_counter() - t0
            if ev.get("generated_text") is not None:
                break
    total = time.perf_counter() - t0
    c.close()
    return tokens, first, total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model")
    ap.add_argument("--requests", type=int, default=16, help="requests per case")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--data", default=os.path.join(ROOT, "../shared/data/sst2/validation.jsonl"))
    ap.add_argument("--results", default=os.path.join(ROOT, "bench/results/serve.jsonl"))
    a = ap.parse_args()
    kiln = os.environ.get("KILN", os.path.join(ROOT, "target/release/kiln"))
    work = tempfile.mkdtemp(prefix="kiln-serve-gen-")
    model = a.model
    if model is None:
        # A GPT-2 mini with a byte-level BPE tokenizer trained on the data's own texts.
        tok = os.path.join(work, "tok")
        subprocess.run([kiln, "tokenizer", "train", "--kind", "bpe", "--vocab-size", "8000",
                        "--corpus", a.data, "--out", tok], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        model = os.path.join(work, "gpt-mini")
        subprocess.run([kiln, "init", "--arch", "gpt2", "--size", "mini", "--tokenizer", tok,
                        "--out", model], check=True, stdout=subprocess.DEVNULL)
    prompts = []
    with open(a.data) as f:
        for line in f:
            prompts.append(json.loads(line)["text"])
            if len(prompts) == a.requests:
                break
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    # Offline: the same prompts through `kiln generate --json`, one process.
    pf = os.path.join(work, "prompts.txt")
    with open(pf, "w") as f:
        f.write("\n".join(prompts) + "\n")
    t0 = time.perf_counter()
    out = subprocess.run([kiln, "generate", "--model", model, "--input", pf, "--json",
                          "--max-new-tokens", str(a.new_tokens), "--threads", str(a.threads)],
                         capture_output=True, text=True, check=True).stdout
    offline_s = time.perf_counter() - t0
    offline_tokens = sum(len(json.loads(l)["token_ids"]) for l in out.splitlines())
    offline_tps = offline_tokens / offline_s
    print(f"offline kiln generate: {offline_tokens} tokens in {offline_s:.2f} s = {offline_tps:.1f} tokens/s")

    server, host, port = start_server(kiln, model, a.threads)
    rows = []
    try:
        stream_one(host, port, prompts[0], 8)  # warm-up
        for clients in (1, 8):
            queue = list(prompts)
            lock = threading.Lock()
            results = []

            def client():
                while True:
                    with lock:
                        if not queue:
                            return
                        prompt = queue.pop()
                    r = stream_one(host, port, prompt, a.new_tokens)
                    with lock:
                        results.append(r)

            t0 = time.perf_counter()
            ts = [threading.Thread(target=client) for _ in range(clients)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            wall = time.perf_counter() - t0
            tokens = sum(r[0] for r in results)
            tps = tokens / wall
            ttft = statistics.median(r[1] for r in results) * 1000
            row = {"bench": "serve_generate", "case": f"stream-{clients}", "server": "kiln",
                   "clients": clients, "requests": len(results), "new_tokens": a.new_tokens,
                   "tokens": tokens, "tokens_per_s": round(tps, 1),
                   "ttft_p50_ms": round(ttft, 2),
                   "offline_tokens_per_s": round(offline_tps, 1),
                   "ratio_vs_offline": round(tps / offline_tps, 2),
                   "threads": a.threads, "date": date, "commit": commit}
            rows.append(row)
            print(f"{clients} streaming clients: {tokens} tokens in {wall:.2f} s = {tps:.1f} tokens/s "
                  f"({tps / offline_tps:.2f}x offline), time to first token p50 {ttft:.1f} ms")
    finally:
        stop_server(server)
    if a.results:
        with open(a.results, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        print(f"appended {len(rows)} lines to {a.results}")


if __name__ == "__main__":
    main()
