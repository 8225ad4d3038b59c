#!/usr/bin/env python3
"""`kiln serve` under load on loopback: throughput and latency against `kiln embed` offline, the idle
latency of one short query, and an overload burst; optionally the same loads against infinity-emb.

One run measures, with all-MiniLM-L6-v2 and the SST-2 validation sentences (3,367 in
../shared/data/sst2/validation.jsonl: 5 % of GLUE train, not GLUE's 872-sentence dev set), N threads:
  1. offline   `kiln embed --normalize` over every sentence (written to a temporary file, one per
               line); best of 3 whole-process runs (start, load, embed, write), sentences/s. Its
               output is also the reference every served embedding is checked against.
  2. load      `kiln serve`, warmed up, then for each client count (1, 8, 64) that many clients, each
               on its own keep-alive connection, send one sentence per POST /embed
               ({"inputs": s, "normalize": true}); exactly `clients` requests are in flight until
               --requests requests (default: every sentence once, at least 2000; the list repeated
               as needed) are answered. Reports
               sentences/s (answers / wall time from first send to last answer), p50 / p99 latency of
               a request (send to last byte), and the ratio to the offline throughput. Every answer
               must be one 384-float vector within 1e-4 (max abs) of the offline embedding of the
               same sentence; bodies are checked after the timed window so the check costs no load.
  3. idle      one 16-token query (15 word pieces + [CLS]/[SEP], checked through /tokenize) sent 200
               times in sequence over one reused http.client connection on the idle server; p50/p99.
  4. overload  a fresh server with --max-concurrent-requests 32; 2000 clients each open a connection,
               then all send one request at once. Each must be answered once with either 200 (its
               embedding checked) or 429 with error_type "Overloaded"; anything else (other status,
               reset, timeout) and any wrong embedding fail the run. GET /health is polled from a
               separate thread during the burst and after it (all must be 200); the server's VmRSS
               is sampled before, at peak during, and after the burst. The /embed 200 and 429 counts
               of GET /metrics must agree with what the clients received.
  5. infinity  (--infinity) infinity-emb (`infinity_emb v2 --engine torch --device cpu`, torch limited
               to the same thread count through OMP_NUM_THREADS/MKL_NUM_THREADS) under the same loads
               on its OpenAI route POST /embeddings {"model", "input": [s]}; prints Kiln/infinity
               throughput and p99 per client count. Its embeddings are compared with Kiln's offline
               ones too (reported; they do not decide the exit status). Skipped with an install hint
               when the venv ($INFINITY_VENV, default ~/.cache/infinity-venv) has no infinity_emb.

The load generator is this process: stdlib Python, one asyncio loop, raw HTTP/1.1 over asyncio
streams. It shares the machine with the server, so on a 2-core machine its own CPU use (a few
percent at most) is part of what the server competes with; `other` in the table is the share of all
CPUs used by processes other than this script and the server during the case (noise to watch).

Prints a table and appends one JSON line per measurement to bench/results/serve.jsonl (--results):
bench, case, server, clients, requests, throughput_sent_per_s, p50_ms, p99_ms, ratio_vs_offline,
threads, date, commit (plus case-specific fields: mismatches, max_abs_diff, overload counts, RSS).

Usage (from the repository root, after `cargo build --release`; stdlib python3 only):
    python3 bench/serve_bench.py [--threads 2] [--requests N] [--clients 1,8,64]
        [--skip-overload] [--overload-clients 2000] [--infinity] [--model DIR] [--data FILE]
        [--results bench/results/serve.jsonl]
    KILN=path/to/kiln python3 bench/serve_bench.py ...      # another binary (default target/release/kiln)
    python3 -m venv ~/.cache/infinity-venv && ~/.cache/infinity-venv/bin/pip install "infinity-emb[all]"
                                                            # once, for --infinity
Exit status: 0 every check passed; 1 a check failed (wrong or missing embeddings, an answer other than
200/429 under overload, a failed health poll, metrics disagreeing); 2 setup error.
"""

import argparse
import asyncio
import datetime
import http.client
import json
import math
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "sst2" / "validation.jsonl"
TOLERANCE = 1e-4
DIM = 384
# 15 word pieces; with [CLS] and [SEP], 16 tokens (checked against the server's /tokenize).
IDLE_QUERY = "the movie was surprisingly good , with strong performances and a clever script ."
IDLE_TOKENS = 16
OVERLOAD_LIMIT = 32
READY_TIMEOUT_S = 60
INFINITY_READY_TIMEOUT_S = 600
REQUEST_TIMEOUT_S = 300


class SetupError(Exception):
    """Something to fix before benchmarking (exit status 2)."""


# ---------------------------------------------------------------------------------------------
# small helpers


def percentile(values, p):
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    s = sorted(values)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vm_rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def group_cpu_s(pgid):
    """CPU seconds (user + system) used so far by the live processes of process group pgid (a
    server we started in its own session, with whatever workers it spawned)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                total += int(fields[11]) + int(fields[12])
        except (OSError, ValueError, IndexError):
            continue
    return total / os.sysconf("SC_CLK_TCK")


class OtherLoad:
    """Share of all CPUs used by processes other than this one and the server (its process group)
    between start and share(), from /proc/stat (steal included). None where /proc/stat cannot be
    read."""

    def __init__(self, server_pid):
        self.pid = server_pid
        self.tick = os.sysconf("SC_CLK_TCK")
        self.begin = self._snapshot()

    def _snapshot(self):
        try:
            with open("/proc/stat") as f:
                user, nice, system, idle, iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
        except (OSError, ValueError):
            return None
        t = os.times()
        ours = t.user + t.system + (group_cpu_s(self.pid) if self.pid else 0.0)
        busy = (user + nice + system + irq + softirq + steal) / self.tick
        return busy, ours, time.perf_counter()

    def share(self):
        end = self._snapshot()
        if self.begin is None or end is None:
            return None
        busy, ours, wall = (e - b for e, b in zip(end, self.begin))
        return max(0.0, (busy - ours) / (wall * os.cpu_count()))


def max_abs_diff(a, b):
    return max(abs(x - y) for x, y in zip(a, b))


def l2_normalized(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v] if n > 0 else v


# ---------------------------------------------------------------------------------------------
# servers


class Server:
    """A server process we started: stopped with SIGTERM, then SIGKILL after 10 s."""

    def __init__(self, name, cmd, env=None, log_name="server"):
        self.name = name
        self.log = tempfile.NamedTemporaryFile(prefix=f"serve-bench-{log_name}-", suffix=".log", delete=False)
        self.stdout_lines = []
        self.ready = threading.Event()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, env=env, text=True,
                                     start_new_session=True)
        # Drain stdout for the whole life of the process so a full pipe never blocks the server.
        self.reader = threading.Thread(target=self._read_stdout, daemon=True)
        self.reader.start()
        self.host, self.port = "127.0.0.1", None
        self.exit_code = None

    def _read_stdout(self):
        for line in self.proc.stdout:
            self.stdout_lines.append(line.rstrip("\n"))
            if " listening on http://" in line and not self.ready.is_set():
                addr = line.rsplit("http://", 1)[1].strip().rstrip("/")
                host, port = addr.rsplit(":", 1)
                self.host, self.port = host, int(port)
                self.ready.set()

    def wait_listening(self, timeout):
        """Waits for kiln's `... listening on http://HOST:PORT` line."""
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.05):
            if self.proc.poll() is not None:
                raise SetupError(f"{self.name} exited with {self.proc.returncode} before listening\n"
                                 + self.log_tail())
            if time.monotonic() > deadline:
                raise SetupError(f"{self.name}: no 'listening' line within {timeout} s\n" + self.log_tail())

    def wait_healthy(self, port, timeout):
        """For servers without a ready line: polls GET /health until it answers 200."""
        self.port = port
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise SetupError(f"{self.name} exited with {self.proc.returncode} before answering /health\n"
                                 + self.log_tail())
            try:
                c = http.client.HTTPConnection(self.host, port, timeout=5)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    c.close()
                    return
                c.close()
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SetupError(f"{self.name}: /health not 200 within {timeout} s\n" + self.log_tail())
            time.sleep(0.5)

    def log_tail(self, n=3000):
        try:
            self.log.flush()
            text = Path(self.log.name).read_text(errors="replace")
        except OSError:
            text = ""
        out = "\n".join(self.stdout_lines[-20:])
        return f"--- {self.name} stdout ---\n{out}\n--- {self.name} stderr (tail) ---\n{text[-n:]}"

    def stop(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                print(f"warning: {self.name} still running 10 s after SIGTERM; killing it", file=sys.stderr)
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait()
        self.exit_code = self.proc.returncode
        self.reader.join(2)
        self.log.close()
        return self.exit_code


def start_kiln(kiln, model, threads, extra=()):
    cmd = [kiln, "serve", "--model", str(model), "--port", "0", "--threads", str(threads), *extra]
    server = Server("kiln serve", cmd, log_name="kiln")
    try:
        server.wait_listening(READY_TIMEOUT_S)
    except BaseException:
        server.stop()
        raise
    return server


# ---------------------------------------------------------------------------------------------
# a minimal HTTP/1.1 client over asyncio streams


class HttpError(Exception):
    pass


class AsyncConn:
    """One keep-alive HTTP/1.1 connection; requests go one at a time."""

    def __init__(self, host, port):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def open(self):
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def request(self, method, path, body=None):
        """Returns (status, body bytes). Raises on a broken connection or malformed answer."""
        if self.writer is None:
            await self.open()
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + (body or b""))
        status_line = await self.reader.readline()
        if not status_line:
            raise HttpError("connection closed before the status line")
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise HttpError(f"bad status line {status_line[:80]!r}")
        status = int(parts[1])
        length, chunked, close = None, False, parts[0] == b"HTTP/1.0"
        while True:
            line = await self.reader.readline()
            if not line:
                raise HttpError("connection closed in the headers")
            if line in (b"\r\n", b"\n"):
                break
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value:
                chunked = True
            elif name == b"connection":
                close = value == b"close"
        if chunked:
            chunks = []
            while True:
                size = int((await self.reader.readline()).split(b";")[0], 16)
                if size == 0:
                    while (await self.reader.readline()) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(await self.reader.readexactly(size))
                await self.reader.readexactly(2)
            data = b"".join(chunks)
        elif length is not None:
            data = await self.reader.readexactly(length)
        else:
            data = await self.reader.read()
            close = True
        if close:
            await self.close()
        return status, data

    async def close(self):
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
            self.writer = self.reader = None


# ---------------------------------------------------------------------------------------------
# the API shapes: Kiln's TEI route and infinity's OpenAI route


class KilnApi:
    name = "kiln"
    path = "/embed"

    def body(self, text):
        return json.dumps({"inputs": text, "normalize": True}).encode()

    def embedding(self, data):
        out = json.loads(data)
        if not (isinstance(out, list) and len(out) == 1 and isinstance(out[0], list)):
            raise ValueError(f"expected [[floats]], got {str(out)[:120]}")
        return out[0]


class OpenAiApi:
    name = "infinity"

    def __init__(self, model_name, path):
        self.model_name, self.path = model_name, path

    def body(self, text):
        return json.dumps({"model": self.model_name, "input": [text]}).encode()

    def embedding(self, data):
        out = json.loads(data)
        # Compared after L2 normalization (a no-op when the server normalizes already).
        return l2_normalized(out["data"][0]["embedding"])


def check_answers(answers, texts, reference, api):
    """answers: (sentence index, status, body). Returns (mismatches, max abs diff seen, first problem)."""
    bad, worst, first = 0, 0.0, None
    for i, status, data in answers:
        problem = None
        if status != 200:
            problem = f"status {status}: {data[:200]!r}"
        else:
            try:
                emb = api.embedding(data)
                if len(emb) != len(reference[i]):
                    problem = f"{len(emb)} dimensions, expected {len(reference[i])}"
                else:
                    d = max_abs_diff(emb, reference[i])
                    worst = max(worst, d)
                    if not d < TOLERANCE:
                        problem = f"max abs diff {d:.2e} for {texts[i]!r}"
            except (ValueError, KeyError, IndexError, TypeError) as e:
                problem = f"unreadable answer ({e})"
        if problem:
            bad += 1
            first = first or problem
    return bad, worst, first


# ---------------------------------------------------------------------------------------------
# measurements


async def _closed_loop(host, port, api, texts, clients, requests):
    order = [i % len(texts) for i in range(requests)]
    bodies = {}
    next_job = 0
    latencies, answers, errors = [], [], []

    async def client():
        nonlocal next_job
        conn = AsyncConn(host, port)
        try:
            await conn.open()
            while next_job < len(order):
                i = order[next_job]
                next_job += 1
                body = bodies.get(i) or bodies.setdefault(i, api.body(texts[i]))
                t0 = time.perf_counter()
                try:
                    status, data = await asyncio.wait_for(conn.request("POST", api.path, body), REQUEST_TIMEOUT_S)
                except (OSError, HttpError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as e:
                    errors.append(f"{type(e).__name__}: {e}")
                    await conn.close()
                    continue
                latencies.append(time.perf_counter() - t0)
                answers.append((i, status, data))
        finally:
            await conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - t0
    return wall, latencies, answers, errors


def closed_loop(server, api, texts, clients, requests):
    return asyncio.run(_closed_loop(server.host, server.port, api, texts, clients, requests))


def run_load(server, api, texts, reference, clients, requests, offline_rate):
    load = OtherLoad(server.proc.pid)
    wall, latencies, answers, errors = closed_loop(server, api, texts, clients, requests)
    other = load.share()
    mismatches, worst, first = check_answers(answers, texts, reference, api)
    ok = len(answers) - sum(1 for _, s, _ in answers if s != 200)
    rate = ok / wall if wall > 0 else 0.0
    result = {
        "server": api.name, "case": f"load-{clients}", "clients": clients, "requests": requests,
        "throughput_sent_per_s": round(rate, 2),
        "p50_ms": round(percentile(latencies, 50) * 1e3, 3) if latencies else None,
        "p99_ms": round(percentile(latencies, 99) * 1e3, 3) if latencies else None,
        "ratio_vs_offline": round(rate / offline_rate, 4) if offline_rate else None,
        "mismatches": mismatches + len(errors), "transport_errors": len(errors),
        "max_abs_diff": float(f"{worst:.3g}"), "wall_s": round(wall, 3),
        "other_load": None if other is None else round(other, 3),
    }
    if first or errors:
        result["first_problem"] = first or errors[0]
    return result


def offline_baseline(kiln, model, threads, texts, tmp):
    inp = tmp / "sst2.txt"
    inp.write_text("".join(t + "\n" for t in texts))
    out = tmp / "offline.jsonl"
    cmd = [kiln, "embed", "--model", str(model), "--input", str(inp), "--output", str(out),
           "--threads", str(threads), "--normalize"]
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if r.returncode != 0:
            raise SetupError(f"`{' '.join(cmd)}` failed ({r.returncode}):\n{r.stderr[-3000:]}")
    reference = [json.loads(line)["embedding"] for line in out.read_text().splitlines() if line.strip()]
    if len(reference) != len(texts):
        raise SetupError(f"kiln embed wrote {len(reference)} embeddings for {len(texts)} sentences")
    best = min(times)
    return len(texts) / best, best, reference


def idle_latency(server, api, text, n, reference):
    """n sequential requests over one reused http.client connection; latencies in seconds."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=REQUEST_TIMEOUT_S)
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    body = api.body(text)
    headers = {"Content-Type": "application/json"}
    latencies, bad, worst = [], 0, 0.0
    try:
        for k in range(n + 10):
            t0 = time.perf_counter()
            conn.request("POST", api.path, body, headers)
            r = conn.getresponse()
            data = r.read()
            dt = time.perf_counter() - t0
            if k >= 10:  # the first 10 warm the connection and the caches
                latencies.append(dt)
            if r.status != 200:
                bad += 1
                continue
            d = max_abs_diff(api.embedding(data), reference)
            worst = max(worst, d)
            bad += not d < TOLERANCE
    finally:
        conn.close()
    return latencies, bad, worst


def tokens_of(server, text):
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    try:
        conn.request("POST", "/tokenize", json.dumps({"inputs": text}), {"Content-Type": "application/json"})
        r = conn.getresponse()
        data = r.read()
        return len(json.loads(data)[0]) if r.status == 200 else None
    except (OSError, ValueError, KeyError, IndexError):
        return None
    finally:
        conn.close()


def scrape_embed_counts(server):
    """{status: count} of kiln_http_requests_total for route /embed, or None."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    try:
        conn.request("GET", "/metrics")
        r = conn.getresponse()
        text = r.read().decode()
        if r.status != 200:
            return None
    except OSError:
        return None
    finally:
        conn.close()
    counts = {}
    for line in text.splitlines():
        if line.startswith("kiln_http_requests_total{") and 'route="/embed"' in line:
            labels, value = line.rsplit(" ", 1)
            status = labels.split('status="', 1)[1].split('"', 1)[0]
            counts[status] = counts.get(status, 0) + int(float(value))
    return counts


class Watcher(threading.Thread):
    """While running: samples the server's VmRSS every 5 ms and polls GET /health every 20 ms over
    its own keep-alive connection (opened before the burst)."""

    def __init__(self, server):
        super().__init__(daemon=True)
        self.server = server
        self.stop_flag = threading.Event()
        self.rss_peak = 0
        self.health = []  # (status or error text, seconds)
        self.conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
        self.conn.connect()

    def poll_health(self):
        t0 = time.perf_counter()
        try:
            self.conn.request("GET", "/health")
            r = self.conn.getresponse()
            r.read()
            status = r.status
        except (OSError, http.client.HTTPException) as e:
            status = f"{type(e).__name__}: {e}"
            self.conn.close()
            self.conn = http.client.HTTPConnection(self.server.host, self.server.port, timeout=60)
        self.health.append((status, time.perf_counter() - t0))

    def run(self):
        last_poll = 0.0
        while not self.stop_flag.is_set():
            rss = vm_rss_kib(self.server.proc.pid)
            if rss:
                self.rss_peak = max(self.rss_peak, rss)
            now = time.perf_counter()
            if now - last_poll >= 0.02:
                self.poll_health()
                last_poll = time.perf_counter()
            time.sleep(0.005)

    def finish(self):
        self.stop_flag.set()
        self.join()
        self.conn.close()


async def _burst(host, port, api, texts, n):
    """n clients: all connect first, then all send one request at once; one answer each."""
    go = asyncio.Event()
    all_connected = asyncio.Event()
    settled = 0
    results = [None] * n  # (status | error text, body, seconds)

    def one_settled():
        nonlocal settled
        settled += 1
        if settled == n:
            all_connected.set()

    async def client(k):
        conn = AsyncConn(host, port)
        try:
            try:
                await asyncio.wait_for(conn.open(), REQUEST_TIMEOUT_S)
            except (OSError, asyncio.TimeoutError) as e:
                results[k] = (f"connect: {type(e).__name__}: {e}", b"", 0.0)
                return
            finally:
                one_settled()
            body = api.body(texts[k % len(texts)])
            await go.wait()
            t0 = time.perf_counter()
            try:
                status, data = await asyncio.wait_for(conn.request("POST", api.path, body), REQUEST_TIMEOUT_S)
                results[k] = (status, data, time.perf_counter() - t0)
            except (OSError, HttpError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as e:
                results[k] = (f"{type(e).__name__}: {e}", b"", time.perf_counter() - t0)
        finally:
            await conn.close()

    tasks = [asyncio.create_task(client(k)) for k in range(n)]
    await all_connected.wait()  # every client connected (or failed to): release them together
    t0 = time.perf_counter()
    go.set()
    await asyncio.gather(*tasks)
    return time.perf_counter() - t0, results


def overload(kiln, model, threads, texts, reference, n_clients):
    server = start_kiln(kiln, model, threads, ["--max-concurrent-requests", str(OVERLOAD_LIMIT)])
    api = KilnApi()
    try:
        # warm the model so the burst meets a running server, not a first forward pass
        closed_loop(server, api, texts, 4, 32)
        time.sleep(0.5)
        before_counts = scrape_embed_counts(server)
        rss_before = vm_rss_kib(server.proc.pid)
        watcher = Watcher(server)
        watcher.start()
        load = OtherLoad(server.proc.pid)
        try:
            wall, results = asyncio.run(_burst(server.host, server.port, api, texts, n_clients))
        finally:
            watcher.finish()
        other = load.share()
        during = list(watcher.health)
        time.sleep(1.0)
        rss_after = vm_rss_kib(server.proc.pid)
        after_health = []
        for _ in range(5):
            try:
                c = http.client.HTTPConnection(server.host, server.port, timeout=10)
                c.request("GET", "/health")
                after_health.append(c.getresponse().status)
                c.close()
            except OSError as e:
                after_health.append(f"{type(e).__name__}: {e}")
        after_counts = scrape_embed_counts(server)
        # the server still answers correctly after the burst
        _, _, post_answers, post_errors = closed_loop(server, api, texts, 1, 8)
        post_bad, _, _ = check_answers(post_answers, texts, reference, api)
        post_bad += len(post_errors)
    finally:
        exit_code = server.stop()

    ok, rejected, other_answers, problems = [], [], [], []
    for k, (status, data, dt) in enumerate(results):
        if status == 200:
            ok.append((k % len(texts), status, data, dt))
        elif status == 429:
            try:
                kind = json.loads(data).get("error_type")
            except ValueError:
                kind = None
            if kind == "Overloaded":
                rejected.append(dt)
            else:
                other_answers.append(f"429 with error_type {kind!r}")
        else:
            other_answers.append(str(status) if isinstance(status, str) else f"status {status}: {data[:120]!r}")
    wrong, worst, first = check_answers([(i, s, d) for i, s, d, _ in ok], texts, reference, api)
    health_bad = [s for s, _ in during if s != 200] + [s for s in after_health if s != 200]
    metrics_ok = None
    if before_counts is not None and after_counts is not None:
        d200 = after_counts.get("200", 0) - before_counts.get("200", 0)
        d429 = after_counts.get("429", 0) - before_counts.get("429", 0)
        # scraped before the 8 check requests that follow the burst
        metrics_ok = (d200 == len(ok), d429 == len(rejected))
        metrics = {"metrics_200": d200, "metrics_429": d429}
    else:
        metrics = {}
    ok_lat = [dt for *_, dt in ok]
    return {
        "server": "kiln", "case": "overload", "clients": n_clients, "requests": n_clients,
        "max_concurrent_requests": OVERLOAD_LIMIT,
        "ok_200": len(ok), "rejected_429": len(rejected), "other_answers": len(other_answers),
        "wrong_embeddings": wrong, "max_abs_diff": float(f"{worst:.3g}"),
        "first_problem": (other_answers[:1] or [first])[0],
        "burst_wall_s": round(wall, 3),
        "throughput_sent_per_s": round(len(ok) / wall, 2) if wall > 0 else None,
        "p50_ms": round(percentile(ok_lat, 50) * 1e3, 3) if ok_lat else None,
        "p99_ms": round(percentile(ok_lat, 99) * 1e3, 3) if ok_lat else None,
        "p99_429_ms": round(percentile(rejected, 99) * 1e3, 3) if rejected else None,
        "health_polls_during": len(during), "health_polls_after": len(after_health),
        "health_failures": len(health_bad), "health_first_failure": str(health_bad[0]) if health_bad else None,
        "health_max_ms": round(max((dt for _, dt in during), default=0.0) * 1e3, 3),
        "rss_before_mib": round(rss_before / 1024, 1) if rss_before else None,
        "rss_peak_mib": round(watcher.rss_peak / 1024, 1) if watcher.rss_peak else None,
        "rss_after_mib": round(rss_after / 1024, 1) if rss_after else None,
        "metrics_agree": None if metrics_ok is None else all(metrics_ok), **metrics,
        "after_burst_bad": post_bad, "sigterm_exit": exit_code,
        "other_load": None if other is None else round(other, 3),
    }


# ---------------------------------------------------------------------------------------------
# infinity-emb


def infinity_loads(args, texts, reference, offline_rate, kiln_rows, emit):
    venv = Path(os.environ.get("INFINITY_VENV", Path.home() / ".cache" / "infinity-venv")).expanduser()
    exe = venv / "bin" / "infinity_emb"
    if not exe.exists():
        print(f"\ninfinity: {exe} not found; skipped. Install it with:\n"
              f"    python3 -m venv {venv} && {venv}/bin/pip install \"infinity-emb[all]\"")
        return []
    port = free_port()
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        env[var] = str(args.threads)
    env.update({"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
                "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1"})
    cmd = [str(exe), "v2", "--model-id", str(args.model), "--port", str(port), "--host", "127.0.0.1",
           "--engine", "torch", "--device", "cpu"]
    print(f"\ninfinity: starting `{' '.join(cmd)}` (OMP_NUM_THREADS={args.threads})", flush=True)
    server = Server("infinity_emb", cmd, env=env, log_name="infinity")
    rows = []
    try:
        server.wait_healthy(port, INFINITY_READY_TIMEOUT_S)
        api = _infinity_api(server)
        closed_loop(server, api, texts, 8, 64)  # warm-up
        for clients in args.clients:
            row = run_load(server, api, texts, reference, clients, args.requests, offline_rate)
            rows.append(row)
            emit(row)
    finally:
        code = server.stop()
        if code not in (0, -signal.SIGTERM, 128 + signal.SIGTERM):
            print(f"infinity exited with {code}; log: {server.log.name}")
    print("\nKiln vs infinity-emb (same clients, same sentences, same thread count)")
    print(f"{'clients':>7} | {'kiln sent/s':>11} | {'infinity sent/s':>15} | {'kiln/infinity':>13} | "
          f"{'kiln p99 ms':>11} | {'infinity p99 ms':>15} | {'infinity mismatches':>19}")
    for row in rows:
        k = next((r for r in kiln_rows if r["clients"] == row["clients"]), None)
        if k is None:
            continue
        ratio = k["throughput_sent_per_s"] / row["throughput_sent_per_s"] if row["throughput_sent_per_s"] else float("nan")
        print(f"{row['clients']:>7} | {k['throughput_sent_per_s']:>11.1f} | {row['throughput_sent_per_s']:>15.1f} | "
              f"{ratio:>13.2f} | {k['p99_ms']:>11.2f} | {row['p99_ms']:>15.2f} | {row['mismatches']:>19}")
    return rows


def _infinity_api(server):
    """The served model's name from GET /models, and the embeddings route (/embeddings, or
    /v1/embeddings where infinity was configured with that prefix)."""
    name = None
    for prefix in ("", "/v1"):
        c = http.client.HTTPConnection(server.host, server.port, timeout=30)
        try:
            c.request("GET", f"{prefix}/models")
            r = c.getresponse()
            data = r.read()
            if r.status == 200:
                name = json.loads(data)["data"][0]["id"]
                return OpenAiApi(name, f"{prefix}/embeddings")
        except (OSError, ValueError, KeyError, IndexError):
            pass
        finally:
            c.close()
    raise SetupError("infinity: GET /models answered with no model on / or /v1\n" + server.log_tail())


# ---------------------------------------------------------------------------------------------


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="threads for kiln (serve and embed) and infinity")
    p.add_argument("--requests", type=int,
                   help="requests per client count [every sentence once, at least 2000; repeated as needed]")
    p.add_argument("--clients", default="1,8,64", help="client counts, comma-separated")
    p.add_argument("--idle-queries", type=int, default=200, help="sequential 16-token queries on the idle server")
    p.add_argument("--skip-overload", action="store_true")
    p.add_argument("--overload-clients", type=int, default=2000)
    p.add_argument("--infinity", action="store_true", help="also measure infinity-emb ($INFINITY_VENV)")
    p.add_argument("--model", type=Path, help="sentence-transformers directory [scripts/get-minilm.sh]")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="JSON lines with a text field")
    p.add_argument("--results", default=str(REPO / "bench" / "results" / "serve.jsonl"),
                   help="JSON lines file to append to ('' for none)")
    args = p.parse_args()
    args.clients = [int(c) for c in args.clients.split(",") if c.strip()]
    return args


def setup(args):
    kiln = os.environ.get("KILN", str(REPO / "target" / "release" / "kiln"))
    if not (Path(kiln).is_file() and os.access(kiln, os.X_OK)):
        raise SetupError(f"no kiln binary at {kiln}; run `cargo build --release` or set KILN")
    if args.model is None:
        r = subprocess.run([str(REPO / "scripts" / "get-minilm.sh")], capture_output=True, text=True)
        if r.returncode != 0:
            raise SetupError(f"scripts/get-minilm.sh failed:\n{r.stderr[-2000:]}")
        args.model = Path(r.stdout.strip().splitlines()[-1])
    if not (args.model / "config.json").exists():
        raise SetupError(f"{args.model} is not a model directory (no config.json)")
    if not args.data.exists():
        raise SetupError(f"no data at {args.data}")
    texts = []
    with open(args.data) as f:
        for line in f:
            if line.strip():
                t = " ".join(json.loads(line)["text"].split())  # one line each in the offline file
                if t:
                    texts.append(t)
    if not texts:
        raise SetupError(f"no sentences in {args.data}")
    # Enough descriptors for the burst (client sockets here, accepted ones in the server, which
    # inherits the limit).
    want = args.overload_clients + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < want and not args.skip_overload:
            print(f"warning: open-file limit {new} < {want}; the burst may fail to connect", file=sys.stderr)
    return kiln, texts


def main():
    args = parse_args()
    try:
        kiln, texts = setup(args)
    except SetupError as e:
        print(f"setup error: {e}", file=sys.stderr)
        return 2
    commit, date = git_commit(), utc_now()
    rows = []

    def emit(row):
        full = {"bench": "serve", **row, "threads": args.threads, "date": date, "commit": commit}
        rows.append(full)
        if args.results:
            Path(args.results).parent.mkdir(parents=True, exist_ok=True)
            with open(args.results, "a") as f:
                f.write(json.dumps(full) + "\n")
        return full

    if args.requests is None:
        args.requests = max(2000, len(texts))
    print(f"serve_bench: {kiln}, model {args.model}, {len(texts)} sentences from {args.data}, "
          f"{args.threads} threads, {os.cpu_count()} CPUs, commit {commit}", flush=True)
    failures = []
    try:
        with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmpdir:
            tmp = Path(tmpdir)
            print("offline: kiln embed, best of 3 ...", flush=True)
            offline_rate, best_s, reference = offline_baseline(kiln, args.model, args.threads, texts, tmp)
            emit({"server": "kiln", "case": "offline", "clients": None, "requests": len(texts),
                  "throughput_sent_per_s": round(offline_rate, 2), "p50_ms": None, "p99_ms": None,
                  "ratio_vs_offline": 1.0, "wall_s": round(best_s, 3)})
            print(f"offline: {offline_rate:.1f} sentences/s ({best_s:.2f} s for {len(texts)})", flush=True)

            server = start_kiln(kiln, args.model, args.threads)
            loads = []
            try:
                api = KilnApi()
                print(f"serve: listening on {server.host}:{server.port}; warming up", flush=True)
                closed_loop(server, api, texts, 8, 64)
                for clients in args.clients:
                    row = emit(run_load(server, api, texts, reference, clients, args.requests, offline_rate))
                    loads.append(row)
                    print(f"  {clients:>3} clients: {row['throughput_sent_per_s']:.1f} sent/s, "
                          f"p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, mismatches {row['mismatches']}",
                          flush=True)
                    if row["mismatches"]:
                        failures.append(f"{clients} clients: {row['mismatches']} wrong or missing answers "
                                        f"(first: {row.get('first_problem')})")
                n_tokens = tokens_of(server, IDLE_QUERY)
                # offline reference for the idle query: the server's own answer must match one
                # computed by `kiln embed` for the same text
                q_in, q_out = tmp / "q.txt", tmp / "q.jsonl"
                q_in.write_text(IDLE_QUERY + "\n")
                subprocess.run([kiln, "embed", "--model", str(args.model), "--input", str(q_in), "--output",
                                str(q_out), "--threads", str(args.threads), "--normalize"], check=True,
                               capture_output=True)
                q_ref = json.loads(q_out.read_text().splitlines()[0])["embedding"]
                time.sleep(1.0)  # let the server go idle
                lat, bad, worst = idle_latency(server, api, IDLE_QUERY, args.idle_queries, q_ref)
                idle = emit({"server": "kiln", "case": "idle-16tok", "clients": 1, "requests": len(lat),
                             "throughput_sent_per_s": None,
                             "p50_ms": round(percentile(lat, 50) * 1e3, 3),
                             "p99_ms": round(percentile(lat, 99) * 1e3, 3), "ratio_vs_offline": None,
                             "tokens": n_tokens, "mismatches": bad, "max_abs_diff": float(f"{worst:.3g}")})
                print(f"  idle: {n_tokens}-token query x {len(lat)}: p50 {idle['p50_ms']} ms, "
                      f"p99 {idle['p99_ms']} ms, mismatches {bad}", flush=True)
                if bad:
                    failures.append(f"idle query: {bad} wrong answers")
                if n_tokens is not None and n_tokens != IDLE_TOKENS:
                    print(f"warning: the idle query is {n_tokens} tokens, not {IDLE_TOKENS}", file=sys.stderr)
            finally:
                code = server.stop()
                if code != 0:
                    print(f"warning: kiln serve exited with {code} after SIGTERM", file=sys.stderr)

        over = None
        if not args.skip_overload:
            print(f"overload: {args.overload_clients} clients against --max-concurrent-requests "
                  f"{OVERLOAD_LIMIT} ...", flush=True)
            over = emit(overload(kiln, args.model, args.threads, texts, reference, args.overload_clients))
            if over["other_answers"]:
                failures.append(f"overload: {over['other_answers']} answers neither 200 nor 429 Overloaded "
                                f"(first: {over['first_problem']})")
            if over["ok_200"] + over["rejected_429"] + over["other_answers"] != args.overload_clients:
                failures.append("overload: answers do not add up to the clients")
            if over["wrong_embeddings"]:
                failures.append(f"overload: {over['wrong_embeddings']} wrong embeddings ({over['first_problem']})")
            if over["health_failures"]:
                failures.append(f"overload: {over['health_failures']} health polls not 200 "
                                f"(first: {over['health_first_failure']})")
            if over["metrics_agree"] is False:
                failures.append(f"overload: /metrics counts 200={over.get('metrics_200')} 429={over.get('metrics_429')}"
                                f" but clients got 200={over['ok_200']} 429={over['rejected_429']}")
            if over["after_burst_bad"]:
                failures.append(f"overload: {over['after_burst_bad']} wrong answers after the burst")

        inf_rows = infinity_loads(args, texts, reference, offline_rate, loads, emit) if args.infinity else []
    except SetupError as e:
        print(f"setup error: {e}", file=sys.stderr)
        return 2

    print(f"\nkiln serve, all-MiniLM-L6-v2, {args.threads} threads, SST-2 validation ({len(texts)} sentences)")
    print(f"{'server':<8} | {'case':<10} | {'clients':>7} | {'requests':>8} | {'sent/s':>8} | {'p50 ms':>8} | "
          f"{'p99 ms':>8} | {'vs offline':>10} | {'mismatch':>8} | {'other':>5}")
    for r in rows:
        if r["case"] == "overload":
            continue

        def f(v, fmt):
            return format(v, fmt) if v is not None else format("—", ">" + fmt.lstrip(">").split(".")[0].rstrip("fd"))
        print(f"{r['server']:<8} | {r['case']:<10} | {f(r['clients'], '>7')} | {r['requests']:>8} | "
              f"{f(r['throughput_sent_per_s'], '>8.1f')} | {f(r['p50_ms'], '>8.2f')} | {f(r['p99_ms'], '>8.2f')} | "
              f"{f(r['ratio_vs_offline'], '>10.2f')} | {f(r.get('mismatches'), '>8')} | "
              f"{f(r.get('other_load'), '>5.2f')}")
    if over:
        print(f"\noverload ({over['clients']} clients at once, --max-concurrent-requests {OVERLOAD_LIMIT}): "
              f"{over['ok_200']} × 200, {over['rejected_429']} × 429 Overloaded, {over['other_answers']} other, "
              f"{over['wrong_embeddings']} wrong embeddings; burst {over['burst_wall_s']:.2f} s; "
              f"200s p50 {over['p50_ms']} ms / p99 {over['p99_ms']} ms, 429s p99 {over['p99_429_ms']} ms")
        print(f"  health: {over['health_polls_during']} polls during the burst + {over['health_polls_after']} after, "
              f"{over['health_failures']} not 200, slowest {over['health_max_ms']:.1f} ms")
        print(f"  RSS: {over['rss_before_mib']} MiB before, {over['rss_peak_mib']} MiB peak, "
              f"{over['rss_after_mib']} MiB after; /metrics agree: {over['metrics_agree']}; "
              f"answers after the burst wrong: {over['after_burst_bad']}; SIGTERM exit {over['sigterm_exit']}")
    if args.results:
        print(f"\nappended {len(rows)} lines to {args.results}")
    if failures:
        print("\nFAILED:\n  " + "\n  ".join(failures))
        return 1
    print("all checks passed (every embedding within 1e-4 of kiln embed's)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
