#!/usr/bin/env python3
"""int8 speed and embedding accuracy: Kiln int8 vs Kiln f32, ONNX Runtime int8 and f32, and
sentence-transformers (PyTorch) f32, side by side in one run, 2 threads each.

Measures, with all-MiniLM-L6-v2 (and a GPT-2 model for decoding):
  gemm     int8 GEMM GOP/s against Kiln's f32 GFLOP/s on MiniLM's linear shapes (1,024 rows),
           every int8 kernel this CPU runs (Kiln's examples/gemm_bench);
  embed    sentences/s embedding the first N SST-2 validation sentences (batch 32, max length
           256): kiln f32, kiln int8 (`kiln quantize --calibration` on 300 SST-2 training
           sentences), ORT f32 and ORT int8 (`quantize_dynamic`, per-channel QInt8, on the same
           ONNX export) and sentence-transformers f32, in alternating rounds, medians; and the
           mean / min cosine of each side's embeddings to sentence-transformers' f32 ones;
  latency  batch-1 time per 16-token sentence: ORT and PyTorch p50 over repeated runs; Kiln per
           sentence of a `--batch-size 1` run over M copies, less a 1-sentence run (Kiln is a
           command: this removes its start and model load);
  decode   GPT-2 greedy decoding tokens/s, kiln f32 vs int8 (`kiln generate`, 256 new tokens,
           less a 1-token run), alternating rounds;
  size     model files on disk.
Kiln's embed time is the whole `kiln embed` process (start, load, tokenization, output); the
baselines' models are loaded once, untimed, as in bench/embed_bench.py. Goals (issue 13): int8
GEMM >= 2.5x f32 with VNNI (>= 1.3x on AVX2), kiln int8 embed >= 2x kiln f32 and >= 1.5x ORT
int8, decode >= 1.8x, int8 model <= 0.3x the f32 size, embeddings mean cosine >= 0.995 and min
>= 0.98 to f32, and no more drift than ORT int8.

Usage (from the repository root, after `cargo build --release --examples`, and
../shared/reference/setup-python.sh):
    ~/.cache/kiln-ref-venv/bin/python bench/quant_bench.py [--rounds 3] [--n 1024]
        [--gpt DIR] [--parts gemm,embed,latency,decode,size] [--json results.json]
Exit status: 0 ran; 2 setup error.
"""

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchcommon import OtherLoad, SetupError, check_versions, cpu_model, goal_text
from embed_bench import (KILN_ENV, PINNED, PINNED_EXPORT, REPO, SHARED, THREADS, OnnxRuntime,
                         PyTorchST, Workload, default_model_dir, export_onnx, sst2_texts)

BATCH = 32
MAX_LENGTH = 256
SETUP_HINT = (f"run {SHARED / 'reference' / 'setup-python.sh'} and use its venv: "
              "~/.cache/kiln-ref-venv/bin/python bench/quant_bench.py")
LATENCY_SENTENCE = "the film is a charming and often affecting journey through a strange land ."
PARTS = ("gemm", "embed", "latency", "decode", "size")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kiln", type=Path, default=REPO / "target" / "release" / "kiln")
    p.add_argument("--gemm-bench", type=Path,
                   default=REPO / "target" / "release" / "examples" / "gemm_bench")
    p.add_argument("--model", type=Path, default=default_model_dir())
    p.add_argument("--gpt", type=Path, default=REPO / "bench" / "results" / "runs" / "gpt-mini-en-zh",
                   help="a GPT-2 model directory for the decode part (default: the Kiln GPT-2 "
                        "mini of bench/results)")
    p.add_argument("--data", type=Path, default=SHARED / "data")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--latency-runs", type=int, default=200)
    p.add_argument("--parts", default=",".join(PARTS))
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "kiln-bench" / "quant")
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    a.parts = [x.strip() for x in a.parts.split(",") if x.strip()]
    if any(x not in PARTS for x in a.parts):
        p.error(f"--parts takes a subset of {','.join(PARTS)}")
    return a


def run(cmd, **kw):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=KILN_ENV, **kw)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    return proc


def timed(cmd):
    start = time.perf_counter()
    run(cmd)
    return time.perf_counter() - start


def kiln_quantized(args, model, out, calibration):
    """`kiln quantize` once per (model, binary); returns the directory."""
    stamp = out / ".made-by"
    tag = f"{args.kiln.stat().st_mtime_ns}-{(model / 'model.safetensors').stat().st_mtime_ns}"
    if stamp.exists() and stamp.read_text() == tag:
        return out
    cmd = [args.kiln, "quantize", "--model", model, "--out", out]
    if calibration:
        cmd += ["--calibration", calibration]
    run(["rm", "-rf", out])
    run(cmd)
    stamp.write_text(tag)
    return out


def ort_int8(fp32_path):
    """ORT's dynamic quantization (per-channel QInt8 weights, u8 activations) of an export."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = fp32_path.with_name(fp32_path.stem + "-int8.onnx")
    if not out.exists():
        tmp = out.with_suffix(".partial.onnx")
        quantize_dynamic(str(fp32_path), str(tmp), per_channel=True, weight_type=QuantType.QInt8)
        os.replace(tmp, out)
    return out


class KilnEmbed:
    def __init__(self, name, binary, model, tmp):
        self.name, self.binary, self.model, self.tmp = name, binary, model, tmp

    def command(self, inp, out, batch=BATCH):
        return [self.binary, "embed", "--model", self.model, "--input", inp, "--output", out,
                "--batch-size", batch, "--max-length", MAX_LENGTH, "--threads", THREADS]

    def run(self, w, texts, want):
        import numpy as np

        inp = w.input_path
        if len(texts) != len(w.texts):
            inp = self.tmp / f"warm-{self.name}.txt"
            inp.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
        out = self.tmp / f"{self.name}.jsonl"
        seconds = timed(self.command(inp, out))
        if not want:
            return seconds, None
        with open(out, encoding="utf-8") as f:
            return seconds, np.array([json.loads(l)["embedding"] for l in f], dtype=np.float32)


class OrtSide(OnnxRuntime):
    def __init__(self, name, model_dir, onnx_path):
        import onnxruntime as ort
        from transformers import AutoTokenizer

        self.name = name
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.onnx_path, self.exporter = onnx_path, "export_onnx"
        so = ort.SessionOptions()
        so.intra_op_num_threads = THREADS
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_name = "last_hidden_state"

    def one(self, text):
        enc = self.tokenizer([text], return_tensors="np")
        self.session.run([self.output_name], {n: enc[n] for n in self.input_names})


def cosines(x, ref):
    import numpy as np

    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    c = (x * ref).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(ref, axis=1))
    return float(c.mean()), float(c.min())


def part_gemm(args, results):
    print("\n== int8 GEMM vs f32 (1,024 rows, MiniLM's shapes; GOP/s = 2·rows·k·n / s)")
    if not os.access(args.gemm_bench, os.X_OK):
        raise SetupError(f"no {args.gemm_bench}: run `cargo build --release --examples`")
    env = dict(KILN_ENV, RAYON_NUM_THREADS=str(THREADS))
    proc = subprocess.run([str(args.gemm_bench), "1024"], capture_output=True, text=True, env=env)
    rows = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
    shapes = sorted({(r["k"], r["n"]) for r in rows}, key=lambda s: (s[0], s[1]))
    paths = []
    for r in rows:
        if r["path"] not in paths:
            paths.append(r["path"])
    print("| k × n | " + " | ".join(paths) + " |")
    print("|---|" + "---:|" * len(paths))
    best, avx2_ratios = [], []
    for k, n in shapes:
        got = {r["path"]: r["gops"] for r in rows if (r["k"], r["n"]) == (k, n)}
        f32 = got["f32"]
        cells = [f"{got[p]:.0f}" + ("" if p == "f32" else f" ({got[p] / f32:.2f}x)") for p in paths]
        print(f"| {k} × {n} | " + " | ".join(cells) + " |")
        full = [v for p, v in got.items() if "row quantization" in p]
        best.append(full[0] / f32 if full else None)
        avx2 = got.get("int8 Avx2 (integer GEMM)"), got.get("f32 gemm crate (AVX2)")
        avx2_ratios.append(avx2[0] / avx2[1] if None not in avx2 else None)
    vnni = any("Vnni" in p for p in paths)
    ratio = statistics.median([b for b in best if b is not None]) if best else None
    print(f"median int8 (with row quantization) / f32: {goal_text(ratio, 2.5 if vnni else 1.3)} "
          f"({'AVX-512 VNNI' if vnni else 'no VNNI'} on this CPU)")
    a2 = [r for r in avx2_ratios if r is not None]
    a2 = statistics.median(a2) if a2 else None
    print(f"AVX2 machines (int8 AVX2 kernel / f32 gemm-crate AVX2 path, integer GEMM only): "
          f"{goal_text(a2, 1.3)}")
    results["gemm"] = {"rows": rows, "median_ratio": ratio, "vnni": vnni, "avx2_ratio": a2}


def part_embed(args, results, tmp, q_model, ort_f32, ort_q):
    texts = sst2_texts(args.data / "sst2" / "validation.jsonl", args.n)
    w = Workload("sst2", f"SST-2 validation, {len(texts)} sentences", texts, MAX_LENGTH)
    w.input_path = tmp / "sst2.txt"
    w.input_path.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    sides = [KilnEmbed("kiln-f32", args.kiln, args.model, tmp),
             KilnEmbed("kiln-int8", args.kiln, q_model, tmp),
             OrtSide("ort-f32", args.model, ort_f32), OrtSide("ort-int8", args.model, ort_q)]
    st = PyTorchST(args.model)
    st.name = "st-f32"
    sides.append(st)
    print(f"\n== embed: {w.title}, batch {BATCH}, max length {MAX_LENGTH}")
    for s in sides:
        s.run(w, texts[:64], False)
    rates = {s.name: [] for s in sides}
    emb = {}
    load = OtherLoad()
    shares = []
    for r in range(args.rounds):
        load.start()
        for s in sides:
            gc.collect()
            sec, e = s.run(w, texts, r == 0)
            rates[s.name].append(len(texts) / sec)
            if r == 0:
                emb[s.name] = e
        shares.append(load.share())
        print(f"round {r + 1}: " + "  ".join(f"{n} {v[-1]:.1f}" for n, v in rates.items())
              + f" sentences/s (other processes {shares[-1] or 0:.0%})", flush=True)
    med = {n: statistics.median(v) for n, v in rates.items()}
    print("| side | sentences/s (median) | mean cos to f32 | min cos to f32 |")
    print("|---|---:|---:|---:|")
    cos = {}
    for n in rates:
        cos[n] = cosines(emb[n], emb["st-f32"])
        print(f"| {n} | {med[n]:.1f} | {cos[n][0]:.5f} | {cos[n][1]:.5f} |")
    k8, k32, o8 = med["kiln-int8"], med["kiln-f32"], med["ort-int8"]
    print(f"kiln int8 / kiln f32: {goal_text(k8 / k32, 2.0)}")
    print(f"kiln int8 / ORT int8: {goal_text(k8 / o8, 1.5)}")
    print(f"kiln int8 / ORT f32: {k8 / med['ort-f32']:.2f}; kiln int8 / sentence-transformers f32: "
          f"{k8 / med['st-f32']:.2f}")
    mean, low = cos["kiln-int8"]
    print(f"kiln int8 cosine to f32: mean {mean:.5f} (goal ≥ 0.995: {'met' if mean >= 0.995 else 'NOT met'}), "
          f"min {low:.5f} (goal ≥ 0.98: {'met' if low >= 0.98 else 'NOT met'}); "
          f"ORT int8: mean {cos['ort-int8'][0]:.5f}, min {cos['ort-int8'][1]:.5f}")
    results["embed"] = {"sentences_per_s": rates, "median": med, "cosine_mean_min": cos,
                        "other_processes_cpu_share": shares,
                        "kiln_int8_command": [str(c) for c in sides[1].command(w.input_path, "OUT")]}
    return st, sides


def part_latency(args, results, tmp, q_model, ort_sides, st):
    n = args.latency_runs
    print(f"\n== batch-1 latency, one {LATENCY_SENTENCE.count(' ') + 1}-word sentence "
          f"({n} runs)")
    out = {}
    many = tmp / "lat-many.txt"
    many.write_text((LATENCY_SENTENCE + "\n") * n, encoding="utf-8")
    one = tmp / "lat-one.txt"
    one.write_text(LATENCY_SENTENCE + "\n", encoding="utf-8")
    for name, model in (("kiln-f32", args.model), ("kiln-int8", q_model)):
        side = KilnEmbed(name, args.kiln, model, tmp)
        per = []
        for _ in range(3):
            t_many = timed(side.command(many, tmp / "lat.jsonl", 1))
            t_one = timed(side.command(one, tmp / "lat.jsonl", 1))
            per.append((t_many - t_one) / (n - 1) * 1e3)
        out[name] = statistics.median(per)
    for s in ort_sides:
        s.one(LATENCY_SENTENCE)
        ts = []
        for _ in range(n):
            t = time.perf_counter()
            s.one(LATENCY_SENTENCE)
            ts.append((time.perf_counter() - t) * 1e3)
        out[s.name] = statistics.median(ts)
    import torch

    with torch.inference_mode():
        st.model.encode([LATENCY_SENTENCE])
        ts = []
        for _ in range(n):
            t = time.perf_counter()
            st.model.encode([LATENCY_SENTENCE])
            ts.append((time.perf_counter() - t) * 1e3)
    out["st-f32"] = statistics.median(ts)
    print("| side | ms per sentence |\n|---|---:|")
    for k, v in out.items():
        kind = "mean over a batch-1 run" if k.startswith("kiln") else "p50"
        print(f"| {k} | {v:.2f} ({kind}) |")
    results["latency_ms"] = out


def part_decode(args, results, tmp):
    print(f"\n== decode: greedy, 256 new tokens, {args.gpt}")
    if not (args.gpt / "config.json").exists():
        print(f"skipped: no GPT-2 model at {args.gpt} (pass --gpt DIR)")
        return
    q = kiln_quantized(args, args.gpt, args.cache / f"q-{args.gpt.name}", None)
    prompt = "The old man looked at the sea and"
    rates = {"f32": [], "int8": []}
    for _ in range(args.rounds):
        for name, m in (("f32", args.gpt), ("int8", q)):
            base = [args.kiln, "generate", "--model", m, "--prompt", prompt, "--threads", THREADS,
                    "--json"]
            long = timed(base + ["--max-new-tokens", "256"])
            short = timed(base + ["--max-new-tokens", "1"])
            rates[name].append(255 / max(long - short, 1e-9))
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"tokens/s: f32 {med['f32']:.0f}, int8 {med['int8']:.0f}: "
          f"{goal_text(med['int8'] / med['f32'], 1.8)}")
    results["decode_tokens_per_s"] = {"runs": rates, "median": med}


def part_size(args, results, q_model, ort_f32, ort_q):
    print("\n== size on disk")
    f32 = (args.model / "model.safetensors").stat().st_size
    q = (q_model / "model.safetensors").stat().st_size
    o32, o8 = ort_f32.stat().st_size, ort_q.stat().st_size
    print(f"kiln: {f32 / 1e6:.1f} MB -> {q / 1e6:.1f} MB: {goal_text(q / f32, 0.3, at_least=False)}; "
          f"ORT: {o32 / 1e6:.1f} MB -> {o8 / 1e6:.1f} MB ({o8 / o32:.2f}x)")
    results["size_bytes"] = {"kiln_f32": f32, "kiln_int8": q, "ort_f32": o32, "ort_int8": o8}


def main():
    args = parse_args()
    check_versions({**PINNED, **PINNED_EXPORT}, SETUP_HINT)
    if not os.access(args.kiln, os.X_OK):
        raise SetupError(f"no kiln binary at {args.kiln}: run `cargo build --release`")
    if not (args.model / "model.safetensors").exists():
        raise SetupError(f"no all-MiniLM-L6-v2 at {args.model}; run scripts/get-minilm.sh")
    args.cache.mkdir(parents=True, exist_ok=True)
    tmp_dir = tempfile.TemporaryDirectory(prefix="kiln-quant-bench-")
    tmp = Path(tmp_dir.name)
    print("== environment")
    print(f"cpu: {cpu_model()}; threads {THREADS} on every side; load average {os.getloadavg()[0]:.2f}")
    results = {"cpu": cpu_model(), "threads": THREADS}
    if "gemm" in args.parts:
        part_gemm(args, results)
    need_embed = any(p in args.parts for p in ("embed", "latency", "size"))
    if need_embed:
        calib = tmp / "calibration.txt"
        calib.write_text("".join(t + "\n" for t in sst2_texts(args.data / "sst2" / "train.jsonl", 300)),
                         encoding="utf-8")
        q_model = kiln_quantized(args, args.model, args.cache / "q-minilm", calib)
        ort_f32, _ = export_onnx(args.model, args.cache)
        ort_q = ort_int8(ort_f32)
        print(f"kiln int8 model: {q_model}; ORT models: {ort_f32}, {ort_q}")
    st = sides = None
    if "embed" in args.parts:
        st, sides = part_embed(args, results, tmp, q_model, ort_f32, ort_q)
    if "latency" in args.parts:
        if st is None:
            st = PyTorchST(args.model)
            sides = [OrtSide("ort-f32", args.model, ort_f32), OrtSide("ort-int8", args.model, ort_q)]
        part_latency(args, results, tmp, q_model, [s for s in sides if s.name.startswith("ort")], st)
    if "decode" in args.parts:
        part_decode(args, results, tmp)
    if "size" in args.parts:
        part_size(args, results, q_model, ort_f32, ort_q)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SetupError as e:
        print(f"quant_bench: {e}", file=sys.stderr)
        sys.exit(2)
