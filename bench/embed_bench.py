#!/usr/bin/env python3
"""Sentence-embedding throughput: Kiln vs sentence-transformers/PyTorch vs ONNX Runtime.

Embeds N (default 1,024) sentences with all-MiniLM-L6-v2, batch 32, 2 threads on every side:
  (a) long  - Gutenberg paragraphs with >= 128 word pieces each, truncated to 128 tokens by every
              side, so every batch is a full 32 x 128 block (the "padded to 128" case);
  (b) sst2  - the first N sentences of ../shared/data/sst2/validation.jsonl, mixed length,
              max length 256 (the model's sentence-transformers default).
Runs alternate (kiln, pytorch, ort, kiln, ...) for --rounds rounds in one invocation; the table
reports the median sentences/s per side and ratios of the medians. The baselines are measured live
on every run, never read from a file. Also measures the whole-process cold start of `kiln embed`
on one sentence (median of --cold-runs runs; target < 0.3 s) and checks once per workload that
Kiln's and ONNX Runtime's embeddings agree with sentence-transformers' (min cosine).

What each side's time covers:
  kiln     the whole process (`kiln embed ...` via subprocess): start, model load, tokenization,
           inference, pooling, writing JSON lines. A user embedding a file pays all of it.
  pytorch  SentenceTransformer.encode(texts, batch_size=32) under torch.inference_mode(): its own
           length sorting, tokenization, BertModel with transformers' default attention, pooling,
           normalization. Model loaded once, outside the timed region.
  ort      the same steps by hand around an ONNX export of the BertModel: sort by length as
           sentence-transformers does, HF fast tokenizer per batch (padding=longest), session run,
           mean pooling with the attention mask, L2 normalization. Session built once, untimed.

Usage (from the repository root, after `cargo build --release` and ../shared/reference/setup-python.sh):
    ~/.cache/kiln-ref-venv/bin/python bench/embed_bench.py [--rounds 5] [--workloads a,b]
        [--n 1024] [--kiln target/release/kiln] [--model DIR] [--skip-ort] [--json results.json]
Exit status: 0 all checks passed; 1 a check failed (embeddings disagree, cold start over target);
2 setup error (wrong package versions, no kiln binary, missing model or data).
"""

import argparse
import gc
import gzip
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

from benchcommon import OtherLoad, SetupError, check_versions, cpu_model

# The reference stack, as installed by ../shared/reference/setup-python.sh. A different version
# is a different baseline, so the script refuses to run rather than print incomparable numbers.
PINNED = {
    "torch": "2.15.0",
    "transformers": "5.24.0",
    "sentence-transformers": "6.2.0",
    "onnxruntime": "1.32.0",
}
# Only needed to export the ONNX model (skipped with --skip-ort).
PINNED_EXPORT = {"onnx": "1.23.2", "onnxscript": "0.7.2"}

BATCH_SIZE = 32
THREADS = 2
MAX_LENGTH = {"a": 128, "b": 256}
COLD_START_TARGET_S = 0.3
# Same fp32 model on every side: anything below this is a different computation, not rounding.
MIN_COSINE = 0.9999
WARMUP_SENTENCES = 64
COLD_START_SENTENCE = "The quick brown fox jumps over the lazy dog."
# A round in which other processes took this share of the CPUs is not a clean measurement.
BUSY_SHARE = 0.10

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
SETUP_HINT = (
    f"run {SHARED / 'reference' / 'setup-python.sh'} and use its venv: "
    "~/.cache/kiln-ref-venv/bin/python bench/embed_bench.py"
)

# Kiln runs with the caller's environment, untouched; the knobs below are for the Python sides.
KILN_ENV = dict(os.environ)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# HF fast tokenizers encode batches on rayon's global pool, which defaults to every core; hold it
# (and any OpenMP pool) to the same 2 threads the models get. Must be set before the imports.
os.environ["RAYON_NUM_THREADS"] = str(THREADS)
os.environ["OMP_NUM_THREADS"] = str(THREADS)


def default_model_dir():
    # Same location as scripts/get-minilm.sh.
    cache = os.environ.get("KILN_MODEL_CACHE") or str(Path.home() / ".cache" / "kiln-models")
    return Path(cache) / "all-MiniLM-L6-v2"


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kiln", type=Path, default=REPO / "target" / "release" / "kiln",
                   help="kiln binary (default: target/release/kiln)")
    p.add_argument("--model", type=Path, default=default_model_dir(),
                   help="all-MiniLM-L6-v2 sentence-transformers directory "
                        "(default: what scripts/get-minilm.sh prints)")
    p.add_argument("--data", type=Path, default=SHARED / "data",
                   help="shared data folder with sst2/ and corpora/en_gutenberg/")
    p.add_argument("--rounds", type=int, default=5, help="alternating timed rounds per workload")
    p.add_argument("--n", type=int, default=1024, help="sentences per workload")
    p.add_argument("--workloads", default="a,b", help="comma-separated subset of a,b")
    p.add_argument("--cold-runs", type=int, default=10, help="runs of the 1-sentence cold start")
    p.add_argument("--skip-ort", action="store_true", help="leave out ONNX Runtime")
    p.add_argument("--skip-kiln", action="store_true",
                   help="measure only the baselines (no kiln binary needed)")
    p.add_argument("--onnx-cache", type=Path, default=Path.home() / ".cache" / "kiln-bench" / "onnx",
                   help="where the exported ONNX model is kept between runs")
    p.add_argument("--json", type=Path, help="also write all measurements to this JSON file")
    args = p.parse_args()
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if not args.workloads or any(w not in MAX_LENGTH for w in args.workloads):
        p.error(f"--workloads takes a comma-separated subset of {','.join(MAX_LENGTH)}")
    if args.rounds < 1 or args.n < 1 or args.cold_runs < 1:
        p.error("--rounds, --n and --cold-runs must be positive")
    return args


# ---------------------------------------------------------------------------------------------
# Workloads


@dataclass
class Workload:
    key: str
    title: str
    texts: list
    max_length: int
    input_path: Path = None
    token_lengths: list = field(default_factory=list)  # after truncation, with [CLS]/[SEP]


def one_line(text):
    """Collapse every kind of whitespace (incl. \\r, \\u2028, \\x85) so a text is exactly one line
    for Kiln's line reader and the Python sides see the identical string."""
    return " ".join(text.split())


def gutenberg_paragraphs(folder):
    # Validation books first; the training books only if N asks for more text than they hold.
    for name in ("validation.jsonl.gz", "train.jsonl.gz"):
        path = folder / name
        if not path.exists():
            continue
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                for para in json.loads(line)["text"].split("\n"):
                    para = one_line(para)
                    if para:
                        yield para


def long_texts(folder, tokenizer, n, min_pieces):
    """N texts of at least `min_pieces` word pieces: consecutive paragraphs joined until long enough,
    then cut a few pieces past the minimum (at a word end) so tokenization cost stays bounded."""
    target = min_pieces + 8
    texts, buf = [], []
    for para in gutenberg_paragraphs(folder):
        buf.append(para)
        text = " ".join(buf)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True,
                        verbose=False)
        if len(enc["input_ids"]) < target:
            continue
        buf = []
        cut = text.find(" ", enc["offset_mapping"][target - 1][1])
        text = text if cut < 0 else text[:cut]
        pieces = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        assert len(pieces) >= min_pieces, text
        texts.append(text)
        if len(texts) == n:
            return texts
    raise SetupError(f"{folder} has text for only {len(texts)} of {n} long sentences")


def sst2_texts(path, n):
    texts = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            text = one_line(json.loads(line)["text"])
            if text:
                texts.append(text)
            if len(texts) == n:
                return texts
    raise SetupError(f"{path} has only {len(texts)} of {n} sentences")


def build_workloads(args, tokenizer, tmp):
    gutenberg = args.data / "corpora" / "en_gutenberg"
    sst2 = args.data / "sst2" / "validation.jsonl"
    for path in (gutenberg, sst2):
        if not path.exists():
            raise SetupError(f"missing {path}; pass --data with the shared data folder")
    out = []
    for key in args.workloads:
        max_len = MAX_LENGTH[key]
        if key == "a":
            texts = long_texts(gutenberg, tokenizer, args.n, max_len)
            title = f"(a) long text, {max_len} tokens"
        else:
            texts = sst2_texts(sst2, args.n)
            title = f"(b) SST-2, mixed length (max {max_len})"
        w = Workload(key, title, texts, max_len)
        w.input_path = tmp / f"input-{key}.txt"
        w.input_path.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
        enc = tokenizer(texts, truncation=True, max_length=max_len)
        w.token_lengths = [len(ids) for ids in enc["input_ids"]]
        out.append(w)
    return out


# ---------------------------------------------------------------------------------------------
# The three sides. Each `run` returns (seconds, embeddings [n, 384] float32 or None).


class Kiln:
    name = "kiln"

    def __init__(self, binary, model_dir, tmp):
        self.binary, self.model_dir, self.tmp = binary, model_dir, tmp
        if not os.access(binary, os.X_OK):
            raise SetupError(f"no kiln binary at {binary}: run `cargo build --release`, "
                             "pass --kiln PATH, or use --skip-kiln to measure only the baselines")
        probe = subprocess.run([str(binary), "embed", "--help"], capture_output=True, text=True,
                               env=KILN_ENV)
        if probe.returncode != 0 or "--max-length" not in probe.stdout + probe.stderr:
            raise SetupError(f"`{binary} embed --help` does not describe the embed command "
                             f"(exit {probe.returncode}); rebuild with `cargo build --release`")
        ver = subprocess.run([str(binary), "--version"], capture_output=True, text=True, env=KILN_ENV)
        self.version = ver.stdout.strip() if ver.returncode == 0 and ver.stdout.strip() else "unknown"

    def command(self, input_path, output_path, max_length):
        return [str(self.binary), "embed", "--model", str(self.model_dir),
                "--input", str(input_path), "--output", str(output_path),
                "--batch-size", str(BATCH_SIZE), "--max-length", str(max_length),
                "--threads", str(THREADS)]

    def timed(self, input_path, output_path, max_length):
        cmd = self.command(input_path, output_path, max_length)
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=KILN_ENV)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
        return seconds

    def run(self, w, texts, want_embeddings):
        input_path = w.input_path
        if len(texts) != len(w.texts):
            input_path = self.tmp / f"warmup-{w.key}.txt"
            input_path.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
        output_path = self.tmp / f"kiln-{w.key}.jsonl"
        output_path.unlink(missing_ok=True)
        seconds = self.timed(input_path, output_path, w.max_length)
        with open(output_path, encoding="utf-8") as f:
            lines = f.readlines()
        if len(lines) != len(texts):
            raise RuntimeError(f"kiln wrote {len(lines)} lines to {output_path} for {len(texts)} inputs")
        if not want_embeddings:
            return seconds, None
        import numpy as np
        return seconds, np.array([json.loads(line)["embedding"] for line in lines], dtype=np.float32)

    def cold_start(self, sentence, runs, max_length):
        """Wall times of `runs` whole `kiln embed` processes on one sentence."""
        input_path = self.tmp / "cold.txt"
        input_path.write_text(sentence + "\n", encoding="utf-8")
        output_path = self.tmp / "cold.jsonl"
        return [self.timed(input_path, output_path, max_length) for _ in range(runs)]


class PyTorchST:
    name = "pytorch"

    def __init__(self, model_dir):
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(THREADS)
        self.torch = torch
        self.model = SentenceTransformer(str(model_dir), device="cpu")
        self.attention = self.model[0].auto_model.config._attn_implementation

    def run(self, w, texts, want_embeddings):
        self.model.max_seq_length = w.max_length
        start = time.perf_counter()
        with self.torch.inference_mode():
            emb = self.model.encode(texts, batch_size=BATCH_SIZE, show_progress_bar=False)
        return time.perf_counter() - start, emb


class OnnxRuntime:
    name = "ort"

    def __init__(self, model_dir, cache_dir):
        import onnxruntime as ort
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        assert self.tokenizer.is_fast, "the ONNX baseline needs the HF fast tokenizer"
        self.onnx_path, self.exporter = export_onnx(model_dir, cache_dir)
        so = ort.SessionOptions()
        so.intra_op_num_threads = THREADS
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(self.onnx_path), so, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_name = "last_hidden_state"

    def run(self, w, texts, want_embeddings):
        import numpy as np

        start = time.perf_counter()
        # sentence-transformers' order: longest first by character count, so batches pad little.
        order = np.argsort([-len(t) for t in texts])
        out = None
        for i in range(0, len(texts), BATCH_SIZE):
            idx = order[i:i + BATCH_SIZE]
            enc = self.tokenizer([texts[j] for j in idx], padding="longest", truncation=True,
                                 max_length=w.max_length, return_tensors="np")
            feeds = {name: enc[name] for name in self.input_names}
            hidden = self.session.run([self.output_name], feeds)[0]  # [b, seq, 384]
            if out is None:
                out = np.empty((len(texts), hidden.shape[-1]), dtype=np.float32)
            mask = enc["attention_mask"][:, :, None].astype(np.float32)
            pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
            out[idx] = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return time.perf_counter() - start, out


def export_onnx(model_dir, cache_dir):
    """Export the BertModel to ONNX once per (weights, torch version); returns (path, exporter)."""
    import torch
    from transformers import AutoModel

    weights = model_dir / "model.safetensors"
    st = weights.stat()
    tag = f"{st.st_size}-{int(st.st_mtime)}-torch{torch.__version__.split('+')[0]}"
    path = cache_dir / f"{model_dir.name}-{tag}.onnx"
    marker = path.with_suffix(".exporter")
    if path.exists() and marker.exists():
        return path, marker.read_text().strip()

    cache_dir.mkdir(parents=True, exist_ok=True)
    model = AutoModel.from_pretrained(str(model_dir)).eval()
    names = ["input_ids", "attention_mask", "token_type_ids"]
    ids = torch.randint(1000, 2000, (2, 16))
    example = (ids, torch.ones_like(ids), torch.zeros_like(ids))
    tmp = path.with_suffix(".onnx.partial")
    print(f"exporting {model_dir.name} to ONNX (once) -> {path}", flush=True)
    try:
        batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
        torch.onnx.export(model, example, str(tmp), input_names=names,
                          output_names=["last_hidden_state"],
                          dynamic_shapes={n: {0: batch, 1: seq} for n in names},
                          dynamo=True, external_data=False)
        exporter = "torch.onnx.export(dynamo=True)"
    except Exception as e:  # the TorchScript exporter is the documented fallback
        print(f"dynamo export failed ({type(e).__name__}: {e}); retrying with dynamo=False", flush=True)
        torch.onnx.export(model, example, str(tmp), input_names=names,
                          output_names=["last_hidden_state"],
                          dynamic_axes={n: {0: "batch", 1: "seq"} for n in names},
                          dynamo=False, opset_version=17)
        exporter = "torch.onnx.export(dynamo=False)"
    os.replace(tmp, path)
    marker.write_text(exporter + "\n")
    return path, exporter


# ---------------------------------------------------------------------------------------------
# Reporting


def min_cosine(x, y):
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    cos = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
    return float(cos.min())


def fmt(x, spec=".1f"):
    return "—" if x is None else format(x, spec)


def main():
    args = parse_args()
    load = os.getloadavg()  # before this process adds its own
    check_versions(PINNED if args.skip_ort else {**PINNED, **PINNED_EXPORT}, SETUP_HINT)
    if not (args.model / "model.safetensors").exists():
        raise SetupError(f"no all-MiniLM-L6-v2 at {args.model}; run {REPO / 'scripts' / 'get-minilm.sh'} "
                         "and pass the directory it prints with --model")

    import numpy as np
    import onnxruntime
    import sentence_transformers
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    tmp_dir = tempfile.TemporaryDirectory(prefix="kiln-embed-bench-")
    tmp = Path(tmp_dir.name)

    kiln = None if args.skip_kiln else Kiln(args.kiln, args.model, tmp)
    pytorch = PyTorchST(args.model)
    ort = None if args.skip_ort else OnnxRuntime(args.model, args.onnx_cache)
    sides = [s for s in (kiln, pytorch, ort) if s is not None]
    workloads = build_workloads(args, pytorch.model.tokenizer, tmp)

    print("== environment")
    print(f"cpu: {cpu_model()} ({os.cpu_count()} logical CPUs, "
          f"{len(os.sched_getaffinity(0))} usable by this process)")
    print(f"load average before the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"python {platform.python_version()} | torch {torch.__version__} | transformers "
          f"{transformers.__version__} | sentence-transformers {sentence_transformers.__version__} | "
          f"onnxruntime {onnxruntime.__version__} | numpy {np.__version__}")
    print(f"model: {args.model}")
    print(f"batch size {BATCH_SIZE}; threads: kiln --threads {THREADS} | torch intra-op "
          f"{torch.get_num_threads()} (attention: {pytorch.attention}) | ort intra-op {THREADS}, "
          f"inter-op 1 | tokenizers RAYON_NUM_THREADS={os.environ['RAYON_NUM_THREADS']}")
    if kiln:
        print(f"kiln: {kiln.binary} ({kiln.version})")
    if ort:
        print(f"onnx: {ort.onnx_path} via {ort.exporter}")
    for w in workloads:
        lens = sorted(w.token_lengths)
        print(f"workload {w.title}: {len(w.texts)} sentences, tokens per sentence "
              f"min {lens[0]} / median {lens[len(lens) // 2]} / max {lens[-1]}")
    print("kiln's time is the whole `kiln embed` process (start + model load + work + JSON output); "
          "the baselines' model is loaded once, untimed.", flush=True)

    results = {"cpu": cpu_model(), "load_average_before": load, "versions": {n: version(n) for n in PINNED},
               "batch_size": BATCH_SIZE, "threads": THREADS, "n": args.n, "rounds": args.rounds,
               "workloads": {}}
    failures = []
    noisy = []
    contention = OtherLoad()

    cold = None
    if kiln:
        print("\n== kiln cold start (1 sentence, whole process)")
        contention.start()
        times = kiln.cold_start(COLD_START_SENTENCE, args.cold_runs, MAX_LENGTH["b"])
        cold = statistics.median(times)
        met = cold < COLD_START_TARGET_S
        share = contention.share()
        busy = "" if share is None else f"  (other processes: {share:.0%} of the CPUs)"
        print(f"runs (s): {' '.join(f'{t:.3f}' for t in times)}{busy}")
        print(f"median {cold:.3f} s (target < {COLD_START_TARGET_S} s: {'met' if met else 'MISSED'})")
        results["cold_start_s"] = {"runs": times, "median": cold, "target": COLD_START_TARGET_S}
        if not met:
            failures.append(f"cold start median {cold:.3f} s >= {COLD_START_TARGET_S} s")
        cmd = kiln.command(tmp / "cold.txt", tmp / "cold.jsonl", MAX_LENGTH["b"])
        print(f"(command: {' '.join(cmd)})")

    for w in workloads:
        print(f"\n== {w.title}")
        for side in sides:  # warm-up: page cache for kiln, allocator and kernels for the baselines
            side.run(w, w.texts[:WARMUP_SENTENCES], False)
        rates = {s.name: [] for s in sides}
        embeddings = {}
        other_load = []
        for r in range(args.rounds):
            contention.start()
            for side in sides:
                gc.collect()
                seconds, emb = side.run(w, w.texts, r == 0)
                rates[side.name].append(len(w.texts) / seconds)
                if r == 0:
                    embeddings[side.name] = emb
            other_load.append(contention.share())
            busy = "" if other_load[-1] is None else f"  (other processes: {other_load[-1]:.0%} of the CPUs)"
            print(f"round {r + 1}/{args.rounds}: "
                  + "  ".join(f"{n} {v[-1]:.1f}" for n, v in rates.items()) + f" sentences/s{busy}",
                  flush=True)
        if any(x is not None and x >= BUSY_SHARE for x in other_load):
            noisy.append(w.title)

        med = {n: statistics.median(v) for n, v in rates.items()}
        print("median (min..max): " + "  ".join(
            f"{n} {med[n]:.1f} ({min(v):.1f}..{max(v):.1f})" for n, v in rates.items()))
        cosines = {}
        for other in ("kiln", "ort"):
            if other in embeddings:
                cosines[other] = min_cosine(embeddings[other], embeddings["pytorch"])
                ok = cosines[other] >= MIN_COSINE
                print(f"min cosine {other} vs pytorch over {len(w.texts)} sentences: "
                      f"{cosines[other]:.6f} ({'ok' if ok else f'BELOW {MIN_COSINE}'})")
                if not ok:
                    failures.append(f"{w.title}: {other} embeddings differ (min cosine {cosines[other]:.6f})")
        results["workloads"][w.key] = {
            "title": w.title, "max_length": w.max_length,
            "sentences_per_s": rates, "median_sentences_per_s": med, "min_cosine_vs_pytorch": cosines,
            "other_processes_cpu_share": other_load,
            "kiln_command": kiln.command(w.input_path, "OUT", w.max_length) if kiln else None,
        }

    print("\n== summary (median sentences/s over "
          f"{args.rounds} alternating rounds; kiln = whole process incl. model load)")
    print("| workload | Kiln sent/s | PyTorch sent/s | ORT sent/s | Kiln/PyTorch | Kiln/ORT |")
    print("|---|---:|---:|---:|---:|---:|")
    for w in workloads:
        med = results["workloads"][w.key]["median_sentences_per_s"]
        k, p, o = med.get("kiln"), med["pytorch"], med.get("ort")
        kp = k / p if k is not None else None
        ko = k / o if k is not None and o is not None else None
        results["workloads"][w.key]["ratios"] = {"kiln/pytorch": kp, "kiln/ort": ko}
        print(f"| {w.title} | {fmt(k)} | {fmt(p)} | {fmt(o)} | {fmt(kp, '.2f')} | {fmt(ko, '.2f')} |")
    if cold is not None:
        print(f"\nKiln cold start (1 sentence, whole process): median {cold:.3f} s over "
              f"{args.cold_runs} runs (target < {COLD_START_TARGET_S} s)")

    if noisy:
        print(f"\nwarning: other processes used >= {BUSY_SHARE:.0%} of the CPUs in some rounds of "
              f"{'; '.join(noisy)}; those figures measure contention as much as speed, "
              "rerun on an idle machine")

    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    if failures:
        print("\nFAILED checks:\n  " + "\n  ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SetupError as e:
        print(f"embed_bench: {e}", file=sys.stderr)
        sys.exit(2)
