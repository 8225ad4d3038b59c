#!/usr/bin/env python3
"""Training steps, `kiln pretrain` vs PyTorch/transformers: tokens/s and training memory.

Two workloads, each a full optimizer step on CPU with 2 threads on both sides:
  (a) bert - BERT-mini masked LM (L4/H256, 4 heads, FFN 1024), WordPiece vocab 30522 (uncased),
             batch 16 x 128 tokens, 15% masking;
  (b) gpt2 - GPT-2-style L6/H384 (6 heads, FFN 1536, 128 positions) causal LM, byte-level BPE
             vocab 30522, batch 8 x 128 tokens.
Both sides start every run from the SAME initial model directory (`kiln init`, with the dropout
rates in its config.json set to --dropout, default 0.0), read the same text (the Gutenberg
validation books, packed into 128-token sequences the same way) and take the same optimizer step:
AdamW lr 1e-4 (constant), weight decay 0.01 (not on biases and LayerNorm weights), gradient
clipping at norm 1.0. Both sides take their dropout rates from that config.json (`kiln pretrain`
applies them in training; the PyTorch models are loaded in train mode with the same values).

Every run, on both sides, is a fresh process: one `kiln pretrain` process, or one PyTorch worker
process (this script with --pytorch-worker). Runs alternate (kiln, pytorch, kiln, ...) for
--rounds rounds in one invocation; each run is --steps optimizer steps from the initial model, the
first 2 of which are warm-up and ignored for speed. Goals: Kiln/PyTorch tokens/s >= 1.5 (BERT) and
>= 1.2 (GPT); Kiln/PyTorch training memory <= 0.7.

Speed: a run's figure is the median over its non-warm-up steps of tokens/s = batch x 128 / step
time; the table reports the median over rounds per side and the ratio of the medians.
  kiln     its own per-step `tokens_per_s` from metrics.jsonl (--log-every 1): everything between
           two log lines, i.e. packing and tokenizing text, masking, forward, backward, clipping,
           the AdamW update, the log line. The whole process's wall time (start, model load, the
           initial and final saves included) is reported separately.
  pytorch  BertForMaskedLM / GPT2LMHeadModel.from_pretrained(the same directory) in train mode,
           transformers' default attention (sdpa); per step: build the batch (MLM:
           DataCollatorForLanguageModeling, mlm_probability 0.15), forward with labels, backward,
           clip_grad_norm_(1.0), AdamW.step(), zero_grad(). Text tokenized and packed once by this
           script, outside the worker's timed region; model loaded untimed.

Training memory = peak RSS up to the end of the last step - RSS just before the first step, of
the process running the steps (MiB = 2^20 bytes). Both sides' processes are started through a
small fork/exec launcher, so the kernel's peak-RSS counters see only that process, not this
script's memory. Gradients, AdamW moments, activations and workspace count as training memory on
both sides (PyTorch creates its gradients and AdamW state lazily in the first step).
  pytorch  (measured inside the worker) before = /proc/self/status VmRSS once the model, the
           optimizer, the collator and the batches are set up (gc.collect() first); peak =
           /proc/self/status VmHWM read right after the last step (ru_maxrss is recorded too).
  kiln     (measured from outside, polling every 5 ms until step 1 and during the last step,
           every 50 ms in between) before = the lowest /proc/PID/statm RSS
           between the moment `kiln pretrain` starts its initial save of the model into --out
           (OUT/model.safetensors appears; the model is loaded by then) and the start of step 1
           (= when the first metrics line appeared minus that step's own time, batch x 128 /
           tokens_per_s); i.e. the model loaded and the save buffers freed, before the trainer
           allocates its gradient buffers. peak = /proc/PID/status VmHWM read as soon as the last
           step's metrics line appears, i.e. before the final checkpoint and model saves. The
           process's lifetime peak (wait4 ru_maxrss, final saves included) is reported too.

Setup (cached in ~/.cache/kiln-bench/train/, reused when present): tokenizers trained with
`kiln tokenizer train` on the Gutenberg training books, models created with `kiln init`, and a
copy of each model whose config.json carries the --dropout rate.

Usage (from the repository root, after `cargo build --release` and ../shared/reference/setup-python.sh):
    ~/.cache/kiln-ref-venv/bin/python bench/train_bench.py [--rounds 3] [--steps 12]
        [--quick] [--workloads a,b] [--kiln target/release/kiln] [--dropout 0.0] [--json results.json]
--quick is a smoke test (1 round of 4 steps, no untimed warm-up runs; about a minute): it proves
the script works, its numbers are not results.
Exit status: 0 all runs succeeded and the checks passed; 1 a run failed, a loss was not finite,
or (dropout 0 only) the two sides' first-step causal-LM losses disagree; 2 setup error (wrong
package versions, no kiln binary, missing data, a setup command failed). Missing a goal is not a
failure: the table says which goals are met.
"""

import argparse
import gc
import gzip
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from benchcommon import OtherLoad, RunError, SetupError, check_versions, cpu_model, goal_text

# The reference stack, as installed by ../shared/reference/setup-python.sh. A different version
# is a different baseline, so the script refuses to run rather than print incomparable numbers.
PINNED = {
    "torch": "2.15.0",
    "transformers": "5.24.0",
}

THREADS = 2
SEQ_LEN = 128
WARMUP_STEPS = 2  # per run, on both sides: measured but left out of the figures
LR = 1e-4
WEIGHT_DECAY = 0.01
CLIP_NORM = 1.0
MLM_PROBABILITY = 0.15
SEED = 42
VOCAB = 30522  # both workloads
# Same weights and same first batch: the first causal-LM losses must agree this closely (nats).
CLM_FIRST_LOSS_TOLERANCE = 0.01
# A round in which other processes took this share of the CPUs is not a clean measurement.
BUSY_SHARE = 0.10
# Goals: Kiln/PyTorch tokens/s per workload, and Kiln/PyTorch training memory.
SPEED_GOAL = {"a": 1.5, "b": 1.2}
MEMORY_GOAL = 0.7
# How often the Kiln process's RSS and metrics.jsonl are polled.
POLL_S = 0.005
POLL_SLOW_S = 0.05
MIB = 1 << 20
QUICK_ROUNDS, QUICK_STEPS = 1, 4

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
SETUP_HINT = (
    f"run {SHARED / 'reference' / 'setup-python.sh'} and use its venv: "
    "~/.cache/kiln-ref-venv/bin/python bench/train_bench.py"
)

# Kiln runs with the caller's environment, untouched; the knobs below are for the Python side.
KILN_ENV = dict(os.environ)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# Hold the tokenizers' rayon pool and any OpenMP pool to the same 2 threads torch gets.
# Must be set before the imports.
os.environ["RAYON_NUM_THREADS"] = str(THREADS)
os.environ["OMP_NUM_THREADS"] = str(THREADS)


@dataclass
class Workload:
    key: str
    title: str
    arch: str          # kiln init --arch
    objective: str     # kiln pretrain --objective
    batch_size: int
    tokenizer_kind: str
    vocab_size: int
    lowercase: bool
    init_flags: list   # kiln init flags besides --arch/--tokenizer/--out
    model_name: str    # cache folder stem
    dropout_keys: list  # config.json fields holding this architecture's dropout rates
    model_dir: Path = None
    tokenizer_dir: Path = None


def workload_specs():
    return {
        "a": Workload(
            "a", "(a) BERT-mini MLM, 16 x 128", "bert", "mlm", 16, "wordpiece", VOCAB, True,
            ["--size", "mini"], "bert-mini",
            ["hidden_dropout_prob", "attention_probs_dropout_prob"]),
        "b": Workload(
            "b", "(b) GPT-2 L6/H384 CLM, 8 x 128", "gpt2", "clm", 8, "bpe", VOCAB, False,
            ["--size", "small", "--layers", "6", "--hidden", "384", "--heads", "6",
             "--intermediate", "1536", "--max-positions", str(SEQ_LEN)], "gpt2-L6-H384",
            ["resid_pdrop", "embd_pdrop", "attn_pdrop"]),
    }


class KilnRunError(RunError):
    """A `kiln pretrain` run failed."""


class PyTorchRunError(RunError):
    """A PyTorch worker process failed."""


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kiln", type=Path, default=REPO / "target" / "release" / "kiln",
                   help="kiln binary (default: target/release/kiln)")
    p.add_argument("--data", type=Path, default=SHARED / "data",
                   help="shared data folder with corpora/en_gutenberg/")
    p.add_argument("--rounds", type=int, help="alternating timed rounds per workload (default 3)")
    p.add_argument("--steps", type=int,
                   help=f"optimizer steps per run, the first {WARMUP_STEPS} of them warm-up "
                        "(default 12)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke test: {QUICK_ROUNDS} round of {QUICK_STEPS} steps (unless "
                        "--rounds/--steps say otherwise), no untimed warm-up runs")
    p.add_argument("--workloads", default="a,b", help="comma-separated subset of a,b")
    p.add_argument("--dropout", type=float, default=0.0,
                   help="dropout rate written into the models' config.json, used by both sides "
                        "(default 0.0; kiln init writes 0.1)")
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "kiln-bench" / "train",
                   help="where the tokenizers and initial models are kept between runs")
    p.add_argument("--json", type=Path, help="also write all measurements to this JSON file")
    args = p.parse_args()
    if args.rounds is None:
        args.rounds = QUICK_ROUNDS if args.quick else 3
    if args.steps is None:
        args.steps = QUICK_STEPS if args.quick else 12
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if not args.workloads or any(w not in ("a", "b") for w in args.workloads):
        p.error("--workloads takes a comma-separated subset of a,b")
    if args.rounds < 1:
        p.error("--rounds must be positive")
    if not 0.0 <= args.dropout < 1.0:
        p.error("--dropout must be in [0, 1)")
    if args.steps <= WARMUP_STEPS:
        p.error(f"--steps must be more than the {WARMUP_STEPS} warm-up steps")
    return args


# ---------------------------------------------------------------------------------------------
# Setup: tokenizers and initial models, made by kiln, cached


def run_setup_command(cmd):
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=KILN_ENV)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SetupError(f"`{' '.join(map(str, cmd))}` exited {proc.returncode}:\n"
                         f"{(proc.stderr or proc.stdout)[-2000:]}")
    return proc, seconds


def fresh(path):
    """A clean temporary folder next to `path`, renamed into place once complete."""
    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    return partial


def ensure_tokenizer(kiln, cache, corpus, kind, vocab, lowercase):
    """The tokenizer directory for (kind, vocab), trained once."""
    name = f"{kind}-{vocab}" + ("-uncased" if lowercase else "")
    path = cache / name
    if (path / "tokenizer.json").exists():
        return path
    partial = fresh(path)
    cmd = [str(kiln), "tokenizer", "train", "--corpus", str(corpus), "--kind", kind,
           "--vocab-size", str(vocab), "--out", str(partial), "--threads", str(THREADS)]
    if lowercase:
        cmd.append("--lowercase")
    print(f"setup: {' '.join(cmd)}", flush=True)
    _, seconds = run_setup_command(cmd)
    print(f"setup: trained in {seconds:.1f} s", flush=True)
    partial.rename(path)
    return path


def ensure_model(kiln, cache, w):
    path = cache / f"{w.model_name}-{w.tokenizer_dir.name}"
    if (path / "model.safetensors").exists() and (path / "config.json").exists():
        return path
    partial = fresh(path)
    cmd = [str(kiln), "init", "--arch", w.arch, *w.init_flags, "--tokenizer", str(w.tokenizer_dir),
           "--seed", str(SEED), "--out", str(partial), "--threads", str(THREADS)]
    print(f"setup: {' '.join(cmd)}", flush=True)
    run_setup_command(cmd)
    partial.rename(path)
    return path


def with_dropout(base, w, rate):
    """A copy of the model directory `base` whose config.json sets every dropout rate of the
    architecture to `rate` (the other files hard-linked), so both sides read the same rates."""
    path = base.with_name(f"{base.name}-dropout{rate:g}")
    config = json.loads((base / "config.json").read_text())
    for key in w.dropout_keys:
        if key not in config:
            raise SetupError(f"{base / 'config.json'} has no {key}")
        config[key] = rate
    want = json.dumps(config, indent=2) + "\n"
    if (path / "config.json").exists() and (path / "config.json").read_text() == want and all(
            (path / f.name).exists() for f in base.iterdir()):
        return path
    partial = fresh(path)
    partial.mkdir(parents=True)
    for f in base.iterdir():
        if f.name == "config.json" or not f.is_file():
            continue
        try:
            os.link(f, partial / f.name)
        except OSError:
            shutil.copy2(f, partial / f.name)
    (partial / "config.json").write_text(want)
    shutil.rmtree(path, ignore_errors=True)
    partial.rename(path)
    return path


def setup_workloads(args, kiln):
    gutenberg = args.data / "corpora" / "en_gutenberg"
    train, valid = gutenberg / "train.jsonl.gz", gutenberg / "validation.jsonl.gz"
    for path in (train, valid):
        if not path.exists():
            raise SetupError(f"missing {path}; pass --data with the shared data folder")
    args.cache.mkdir(parents=True, exist_ok=True)
    specs = workload_specs()
    out = []
    for key in args.workloads:
        w = specs[key]
        w.tokenizer_dir = ensure_tokenizer(kiln, args.cache, train, w.tokenizer_kind, w.vocab_size,
                                           w.lowercase)
        w.model_dir = with_dropout(ensure_model(kiln, args.cache, w), w, args.dropout)
        vocab = json.loads((w.model_dir / "config.json").read_text()).get("vocab_size")
        if vocab != w.vocab_size:
            raise SetupError(f"{w.model_dir / 'config.json'} has vocab_size {vocab}, "
                             f"expected {w.vocab_size}")
        out.append(w)
    return out, valid


# ---------------------------------------------------------------------------------------------
# Processes: every measured run is a fresh process started through a small launcher


# Forks and execs the command, prints the child's pid, waits for it and prints its exit code,
# peak RSS (wait4's ru_maxrss, KiB) and wall time as JSON. Peak RSS survives exec: a process
# started directly from this script (vfork + exec) would report at least this script's own peak,
# torch and all. A plain fork of this small interpreter (-S: no site packages) starts the child
# from a few MiB instead.
LAUNCHER = r"""
import json, os, sys, time
out, err, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        os.dup2(os.open(out, flags, 0o644), 1)
        os.dup2(os.open(err, flags, 0o644), 2)
        os.execvp(cmd[0], cmd)
    except BaseException as e:
        os.write(2, f"cannot start {cmd[0]}: {e}\n".encode())
    os._exit(127)
print(pid, flush=True)
_, status, usage = os.wait4(pid, 0)
print(json.dumps({"exit": os.waitstatus_to_exitcode(status), "maxrss_kib": usage.ru_maxrss,
                  "wall_s": time.perf_counter() - start}), flush=True)
"""

PAGE = os.sysconf("SC_PAGE_SIZE")


class Launched:
    """One process started through LAUNCHER, its stdout and stderr going to files."""

    def __init__(self, cmd, env, tmp, stem):
        self.cmd = [str(c) for c in cmd]
        self.out, self.err = tmp / f"{stem}.stdout", tmp / f"{stem}.stderr"
        self.proc = subprocess.Popen(
            [sys.executable, "-S", "-c", LAUNCHER, str(self.out), str(self.err), *self.cmd],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True, env=env)
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.proc.wait()
            raise RunError(f"could not start `{' '.join(self.cmd)}`: launcher said {line!r}")
        self.pid = int(line)

    def running(self):
        return self.proc.poll() is None

    def finish(self):
        """Waits for the process; its exit code, ru_maxrss (bytes), wall time, stdout, stderr."""
        rest = self.proc.stdout.read()
        self.proc.wait()
        try:
            res = json.loads(rest.strip().splitlines()[-1])
        except (IndexError, ValueError):
            res = {"exit": None, "maxrss_kib": None, "wall_s": None}
        read = lambda f: f.read_text(errors="replace") if f.exists() else ""
        return {"exit": res["exit"], "wall_s": res["wall_s"],
                "maxrss": None if res["maxrss_kib"] is None else res["maxrss_kib"] * 1024,
                "stdout": read(self.out), "stderr": read(self.err)}

    def describe(self, res):
        return (f"`{' '.join(self.cmd)}` exited {res['exit']}:\n"
                f"{(res['stderr'] or res['stdout'])[-3000:]}")


def proc_rss(pid):
    """Resident set size of `pid` in bytes (/proc/PID/statm), None once it is gone."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, ValueError, IndexError):
        return None


def proc_status(pid, field):
    """A /proc/PID/status memory field (VmRSS, VmHWM) in bytes, None if unavailable."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


# ---------------------------------------------------------------------------------------------
# The two sides. Each `run` returns a dict with per-step tokens/s and losses, and the memory.


class Kiln:
    name = "kiln"

    def __init__(self, binary, tmp):
        self.binary, self.tmp = binary, tmp
        if not os.access(binary, os.X_OK):
            raise SetupError(f"no kiln binary at {binary}: run `cargo build --release` "
                             "or pass --kiln PATH")
        probe = subprocess.run([str(binary), "pretrain", "--help"], capture_output=True, text=True,
                               env=KILN_ENV)
        if probe.returncode != 0 or "--objective" not in probe.stdout + probe.stderr:
            raise SetupError(f"`{binary} pretrain --help` does not describe the pretrain command "
                             f"(exit {probe.returncode}); rebuild with `cargo build --release`")
        ver = subprocess.run([str(binary), "--version"], capture_output=True, text=True, env=KILN_ENV)
        self.version = ver.stdout.strip() if ver.returncode == 0 and ver.stdout.strip() else "unknown"

    def command(self, w, corpus, out, steps):
        return [str(self.binary), "pretrain", "--model", str(w.model_dir), "--out", str(out),
                "--objective", w.objective, "--corpus", str(corpus),
                "--seq-len", str(SEQ_LEN), "--batch-size", str(w.batch_size),
                "--max-steps", str(steps), "--lr", str(LR), "--schedule", "constant",
                "--weight-decay", str(WEIGHT_DECAY), "--clip-norm", str(CLIP_NORM),
                "--mask-prob", str(MLM_PROBABILITY), "--seed", str(SEED),
                "--log-every", "1", "--threads", str(THREADS),
                # no checkpoints but the last, as the PyTorch side saves none
                "--save-every", "0", "--save-minutes", "0",
                # stream order, as the PyTorch side reads the same text
                "--shuffle-buffer", "0"]

    def run(self, w, corpus, steps):
        out = self.tmp / f"kiln-out-{w.key}"
        shutil.rmtree(out, ignore_errors=True)
        metrics, initial_save = out / "metrics.jsonl", out / "model.safetensors"
        child = Launched(self.command(w, corpus, out, steps), KILN_ENV, self.tmp, "kiln")
        t0 = time.perf_counter()
        # Until the first metrics line: (time, RSS) every POLL_S and when the initial save of the
        # model into --out began. Then only metrics.jsonl is watched, for the last step's line:
        # every POLL_S during the last step, every POLL_SLOW_S before it (less load on the CPUs).
        samples, t_saved, t_first, first_tps, steps_hwm = [], None, None, None, None
        size, seen = None, 0
        try:
            while child.running():
                now = time.perf_counter() - t0
                if t_first is None:
                    rss = proc_rss(child.pid)
                    if rss is not None:
                        samples.append((now, rss))
                    if t_saved is None and initial_save.exists():
                        t_saved = now
                try:
                    st = metrics.stat().st_size
                except OSError:
                    st = None
                if st is not None and st != size:
                    size = st
                    text = metrics.read_text()
                    lines = text[:text.rfind("\n") + 1].splitlines()
                    seen = len(lines)
                    if lines and t_first is None:
                        t_first, first_tps = now, float(json.loads(lines[0])["tokens_per_s"])
                    if len(lines) >= steps:
                        # The last step is done and the final saves have not begun yet.
                        steps_hwm = proc_status(child.pid, "VmHWM")
                        break
                time.sleep(POLL_S if t_first is None or seen >= steps - 1 else POLL_SLOW_S)
        finally:
            res = child.finish()
        try:
            if res["exit"] != 0:
                raise KilnRunError(child.describe(res))
            if not metrics.exists():
                raise KilnRunError(f"`{' '.join(child.cmd)}` wrote no {metrics}")
            lines = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
            steps_seen = [x.get("step") for x in lines]
            if steps_seen != list(range(1, steps + 1)):
                raise KilnRunError(f"`{' '.join(child.cmd)}`: metrics.jsonl holds steps {steps_seen}, "
                                   f"expected 1..{steps}")
        finally:
            shutil.rmtree(out, ignore_errors=True)
        # Step 1 began its own duration (batch x 128 / its tokens_per_s) before its line appeared.
        before = before_how = None
        if t_first is not None:
            t_step1 = t_first - w.batch_size * SEQ_LEN / first_tps
            window = [r for t, r in samples if t_saved is not None and t_saved <= t <= t_step1]
            if window:
                before, before_how = min(window), "lowest RSS from the initial save to step 1"
            else:
                earlier = [r for t, r in samples if t <= t_step1]
                if earlier:
                    before, before_how = earlier[-1], "RSS at the start of step 1"
        peak, peak_how = steps_hwm, "VmHWM at the last step's metrics line"
        if peak is None:
            peak, peak_how = res["maxrss"], "process peak (final saves included)"
        return {
            "tokens_per_s": [float(x["tokens_per_s"]) for x in lines],
            "loss": [float(x["loss"]) for x in lines],
            "grad_norm": [x.get("grad_norm") for x in lines],
            "wall_s": res["wall_s"],
            "rss_before": before, "rss_before_how": before_how,
            "peak_rss": peak, "peak_rss_how": peak_how, "process_peak_rss": res["maxrss"],
            "train_mem": None if before is None or peak is None else peak - before,
        }


class PyTorchTrainer:
    """Packs the text once here; every run is a fresh worker process (pytorch_worker below)."""
    name = "pytorch"

    def __init__(self, dropout, tmp):
        import transformers

        self.dropout, self.tmp = dropout, tmp
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        self.sequences = {}
        self.tokenizers = {}
        self.attention = {}

    def prepare(self, w, corpus, steps):
        """Tokenize and pack the corpus as `kiln pretrain` does: every non-empty text tokenized
        without special tokens, followed by a separator ([SEP] / end-of-text), the stream cut into
        windows of 126 tokens framed as [CLS] ... [SEP] (BERT) or of 128 tokens (GPT-2)."""
        from transformers import AutoConfig, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(w.model_dir))
        if w.objective == "mlm":
            cls, sep = tok.cls_token_id, tok.sep_token_id
            if cls is None or sep is None or tok.mask_token_id is None:
                raise SetupError(f"the tokenizer in {w.model_dir} lacks [CLS]/[SEP]/[MASK]")
            body, separator = SEQ_LEN - 2, sep
        else:
            eos = AutoConfig.from_pretrained(str(w.model_dir)).eos_token_id
            eos = tok.eos_token_id if eos is None else eos
            if eos is None:
                raise SetupError(f"the tokenizer in {w.model_dir} has no end-of-text token")
            body, separator = SEQ_LEN, eos
        need = steps * w.batch_size
        seqs, buf = [], []
        for _ in range(2):  # a second pass over the corpus if one is not enough, as kiln would
            with gzip.open(corpus, "rt", encoding="utf-8") as f:
                for line in f:
                    if not line.strip():
                        continue
                    text = json.loads(line).get("text") or ""
                    if not text:
                        continue
                    ids = tok(text, add_special_tokens=False, verbose=False)["input_ids"]
                    if not ids:
                        continue
                    buf.extend(ids)
                    buf.append(separator)
                    while len(buf) >= body and len(seqs) < need:
                        chunk, buf = buf[:body], buf[body:]
                        seqs.append([cls, *chunk, sep] if w.objective == "mlm" else chunk)
                    if len(seqs) == need:
                        break
            if len(seqs) == need:
                break
        if len(seqs) < need:
            raise SetupError(f"{corpus} holds too little text for {need} sequences")
        path = self.tmp / f"sequences-{w.key}.json"
        path.write_text(json.dumps(seqs))
        self.sequences[w.key] = path
        self.tokenizers[w.key] = tok

    def run(self, w, corpus, steps):
        spec = self.tmp / f"pytorch-{w.key}.json"
        spec.write_text(json.dumps({
            "model_dir": str(w.model_dir), "objective": w.objective, "batch_size": w.batch_size,
            "steps": steps, "dropout": self.dropout, "dropout_keys": w.dropout_keys,
            "sequences": str(self.sequences[w.key])}))
        child = Launched([sys.executable, Path(__file__).resolve(), "--pytorch-worker", spec],
                         dict(os.environ), self.tmp, "pytorch")
        res = child.finish()
        if res["exit"] != 0:
            raise PyTorchRunError(child.describe(res))
        try:
            out = json.loads(res["stdout"].strip().splitlines()[-1])
        except (IndexError, ValueError):
            raise PyTorchRunError(f"`{' '.join(child.cmd)}` printed no result:\n"
                                  f"{(res['stderr'] or res['stdout'])[-3000:]}") from None
        self.attention[w.key] = out.pop("attention")
        out["wall_s"] = res["wall_s"]
        out["process_peak_rss"] = res["maxrss"]
        out["train_mem"] = out["peak_rss"] - out["rss_before"]
        return out


def pytorch_worker(spec_path):
    """One PyTorch run in this (fresh) process; prints its measurements as one JSON line."""
    import torch
    import transformers
    from transformers import (AutoTokenizer, BertForMaskedLM, DataCollatorForLanguageModeling,
                              GPT2LMHeadModel)

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(THREADS)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    steps, batch_size = spec["steps"], spec["batch_size"]
    seqs = json.loads(Path(spec["sequences"]).read_text())[:steps * batch_size]

    torch.manual_seed(SEED)
    cls = BertForMaskedLM if spec["objective"] == "mlm" else GPT2LMHeadModel
    # The directory's config.json already holds these rates; passing them makes it explicit.
    model = cls.from_pretrained(spec["model_dir"], **{k: spec["dropout"] for k in spec["dropout_keys"]})
    for k in spec["dropout_keys"]:
        assert getattr(model.config, k) == spec["dropout"], (k, getattr(model.config, k))
    model.train()
    # Kiln's (and transformers Trainer's) split: no decay on biases and LayerNorm weights,
    # which are exactly the 1-D parameters of these two models.
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": WEIGHT_DECAY},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=LR, weight_decay=WEIGHT_DECAY)
    collator = None
    if spec["objective"] == "mlm":
        tok = AutoTokenizer.from_pretrained(spec["model_dir"])
        collator = DataCollatorForLanguageModeling(tok, mlm=True, mlm_probability=MLM_PROBABILITY)
    gc.collect()
    rss_before = proc_status("self", "VmRSS")
    setup_hwm = proc_status("self", "VmHWM")  # loading's high-water mark, for reference
    rates, losses, norms = [], [], []
    for step in range(steps):
        batch = seqs[step * batch_size:(step + 1) * batch_size]
        start = time.perf_counter()
        if collator is not None:
            b = collator([{"input_ids": s} for s in batch])
            inputs, labels = b["input_ids"], b["labels"]
        else:
            inputs = torch.tensor(batch, dtype=torch.long)
            labels = inputs
        loss = model(input_ids=inputs, labels=labels).loss
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM)
        opt.step()
        opt.zero_grad()
        loss = loss.item()
        seconds = time.perf_counter() - start
        rates.append(batch_size * SEQ_LEN / seconds)
        losses.append(loss)
        norms.append(float(norm))
    peak = proc_status("self", "VmHWM")
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(json.dumps({
        "tokens_per_s": rates, "loss": losses, "grad_norm": norms,
        "rss_before": rss_before, "rss_before_how": "VmRSS after setup",
        "peak_rss": max(peak or 0, maxrss), "peak_rss_how": "VmHWM after the last step",
        "vmhwm": peak, "ru_maxrss": maxrss, "setup_vmhwm": setup_hwm,
        "attention": model.config._attn_implementation}), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------
# Reporting


def fmt(x, spec=".0f"):
    return "—" if x is None else format(x, spec)


def run_figure(result):
    """Median tokens/s over the steps after the warm-up."""
    return statistics.median(result["tokens_per_s"][WARMUP_STEPS:])


def mib(x, spec=".0f"):
    return fmt(None if x is None else x / MIB, spec)


def median_or_none(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main():
    args = parse_args()
    load = os.getloadavg()  # before this process adds its own
    check_versions(PINNED, SETUP_HINT)

    import transformers

    tmp_dir = tempfile.TemporaryDirectory(prefix="kiln-train-bench-")
    tmp = Path(tmp_dir.name)
    kiln = Kiln(args.kiln, tmp)
    workloads, corpus = setup_workloads(args, args.kiln)
    pytorch = PyTorchTrainer(args.dropout, tmp)
    for w in workloads:
        pytorch.prepare(w, corpus, args.steps)
    gc.collect()

    print("== environment")
    print(f"cpu: {cpu_model()} ({os.cpu_count()} logical CPUs, "
          f"{len(os.sched_getaffinity(0))} usable by this process)")
    print(f"load average before the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"python {platform.python_version()} | torch {version('torch')} | transformers "
          f"{transformers.__version__}")
    print(f"kiln: {kiln.binary} ({kiln.version})")
    print(f"threads: kiln --threads {THREADS} | torch.set_num_threads({THREADS}) | "
          f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} | "
          f"tokenizers RAYON_NUM_THREADS={os.environ['RAYON_NUM_THREADS']}")
    print(f"corpus: {corpus}; {args.rounds} rounds x {args.steps} steps per side, the first "
          f"{WARMUP_STEPS} steps of every run left out of tokens/s"
          + ("; QUICK smoke test: no warm-up runs, the numbers are not results" if args.quick else ""))
    print(f"optimizer: AdamW lr {LR:g} constant, weight decay {WEIGHT_DECAY} (not on biases and "
          f"LayerNorm weights), clip norm {CLIP_NORM}")
    print(f"dropout {args.dropout:g} on both sides: written into each model directory's config.json "
          "(BERT hidden_dropout_prob, attention_probs_dropout_prob; GPT-2 resid_pdrop, embd_pdrop, "
          "attn_pdrop), which kiln pretrain applies and PyTorch loads in train mode")
    for w in workloads:
        tok_size = len(pytorch.tokenizers[w.key])
        print(f"workload {w.title}: model {w.model_dir} | tokenizer {w.tokenizer_dir} "
              f"({w.tokenizer_kind}, vocab {tok_size})")
    print("every run is a fresh process on each side. speed: kiln's step time is its own "
          "tokens_per_s (data packing and masking included); pytorch's is the batch + forward + "
          "backward + clip + AdamW step, model loaded untimed. training memory: peak RSS up to "
          "the end of the last step minus RSS just before step 1 (MiB; see the script's docstring).",
          flush=True)

    results = {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "load_average_before": load,
               "versions": {n: version(n) for n in PINNED}, "kiln_version": kiln.version,
               "threads": THREADS, "seq_len": SEQ_LEN, "dropout": args.dropout, "steps": args.steps,
               "warmup_steps": WARMUP_STEPS, "rounds": args.rounds, "quick": args.quick,
               "speed_goals": SPEED_GOAL, "memory_goal": MEMORY_GOAL, "workloads": {}}
    failures = []
    noisy = []
    contention = OtherLoad()
    sides = (kiln, pytorch)

    for w in workloads:
        print(f"\n== {w.title}")
        print(f"kiln command: {' '.join(kiln.command(w, corpus, 'OUT', args.steps))}")
        ok = {s.name: True for s in sides}

        def attempt(side, steps):
            try:
                return side.run(w, corpus, steps)
            except RunError as e:
                print(f"{side.name} FAILED:\n{e}", flush=True)
                failures.append(f"{w.title}: {side.name}: {str(e).splitlines()[0]}")
                ok[side.name] = False
                return None

        if not args.quick:
            # Warm-up: one 1-step run per side (page cache, allocator), untimed.
            for side in sides:
                attempt(side, 1)

        per_run = {s.name: [] for s in sides}
        figures = {s.name: [] for s in sides}
        walls, other_load = [], []
        for r in range(args.rounds):
            contention.start()
            parts = []
            for side in sides:
                if not ok[side.name]:
                    continue
                gc.collect()
                res = attempt(side, args.steps)
                if res is None:
                    continue
                per_run[side.name].append(res)
                figures[side.name].append(run_figure(res))
                part = (f"{side.name} {figures[side.name][-1]:.0f} tok/s, "
                        f"train mem {mib(res['train_mem'])} MiB")
                if side is kiln:
                    walls.append(res["wall_s"])
                    part += f" (process {res['wall_s']:.1f} s)"
                parts.append(part)
            other_load.append(contention.share())
            busy = "" if other_load[-1] is None else f"  (other processes: {other_load[-1]:.0%} of the CPUs)"
            print(f"round {r + 1}/{args.rounds}: " + "  ".join(parts) + busy, flush=True)
        if any(x is not None and x >= BUSY_SHARE for x in other_load):
            noisy.append(w.title)

        med = {n: (statistics.median(v) if v else None) for n, v in figures.items()}
        print("median (min..max) tokens/s: " + "  ".join(
            f"{n} {med[n]:.0f} ({min(v):.0f}..{max(v):.0f})" for n, v in figures.items() if v))
        for n, runs in per_run.items():
            if runs:
                steps_ms = [w.batch_size * SEQ_LEN / x * 1000 for x in runs[0]["tokens_per_s"]]
                print(f"{n} step times, round 1 (ms): " + " ".join(f"{t:.0f}" for t in steps_ms))
        mem = {}
        for n, runs in per_run.items():
            mem[n] = {k: median_or_none([x[k] for x in runs])
                      for k in ("train_mem", "rss_before", "peak_rss", "process_peak_rss")}
            if runs:
                m = mem[n]
                print(f"{n} memory, median over rounds (MiB): training {mib(m['train_mem'])} = peak "
                      f"{mib(m['peak_rss'])} ({runs[0]['peak_rss_how']}) - before "
                      f"{mib(m['rss_before'])} ({runs[0]['rss_before_how']}); whole-process peak "
                      f"{mib(m['process_peak_rss'])}")
        if any(x["rss_before_how"] != "lowest RSS from the initial save to step 1"
               for x in per_run["kiln"]):
            print("note: in some kiln run the initial save was not seen before step 1; its "
                  "'before' is the RSS sampled at the start of step 1")
        wall_med = statistics.median(walls) if walls else None
        if walls:
            step_s = sum(w.batch_size * SEQ_LEN / x for x in per_run["kiln"][0]["tokens_per_s"])
            print(f"kiln process wall time for {args.steps} steps: median {wall_med:.2f} s "
                  f"({min(walls):.2f}..{max(walls):.2f}); round 1: {step_s:.2f} s in steps, "
                  f"{walls[0] - step_s:.2f} s start, load and saves")

        # Checks on every run: finite losses; same first causal-LM loss (same weights, same batch).
        first_loss = {}
        for n, runs in per_run.items():
            for res in runs:
                if not all(math.isfinite(x) for x in res["loss"]):
                    failures.append(f"{w.title}: {n} loss not finite: {res['loss']}")
            if runs:
                first_loss[n] = runs[0]["loss"][0]
        line = "first-step loss: " + "  ".join(f"{n} {v:.4f}" for n, v in first_loss.items())
        last = {n: runs[0]["loss"][-1] for n, runs in per_run.items() if runs}
        line += f" | step {args.steps}: " + "  ".join(f"{n} {v:.4f}" for n, v in last.items())
        if w.objective == "mlm":
            line += " (MLM: different random masks, so only roughly equal)"
        elif args.dropout > 0:
            line += " (dropout on: different random dropout masks, so only roughly equal)"
        elif len(first_loss) == 2:
            diff = abs(first_loss["kiln"] - first_loss["pytorch"])
            ok_loss = diff <= CLM_FIRST_LOSS_TOLERANCE
            line += f" (difference {diff:.4f}: {'ok' if ok_loss else 'TOO LARGE'})"
            if not ok_loss:
                failures.append(f"{w.title}: first-step loss kiln {first_loss['kiln']:.4f} vs "
                                f"pytorch {first_loss['pytorch']:.4f}")
        print(line)
        if w.key in pytorch.attention:
            print(f"pytorch attention implementation: {pytorch.attention[w.key]}")

        results["workloads"][w.key] = {
            "title": w.title, "batch_size": w.batch_size, "objective": w.objective,
            "model_dir": str(w.model_dir), "tokenizer_dir": str(w.tokenizer_dir),
            "vocab_size": len(pytorch.tokenizers[w.key]),
            "pytorch_attention": pytorch.attention.get(w.key),
            "tokens_per_s_per_round": figures, "median_tokens_per_s": med,
            "median_memory_bytes": mem,
            "runs": per_run, "kiln_wall_s": walls, "median_kiln_wall_s": wall_med,
            "other_processes_cpu_share": other_load,
            "kiln_command": kiln.command(w, corpus, "OUT", args.steps),
        }

    print(f"\n== summary{' (QUICK smoke test: not a result)' if args.quick else ''}: medians over "
          f"{args.rounds} alternating rounds; tok/s = median of steps {WARMUP_STEPS + 1}.."
          f"{args.steps} per run; train mem = peak RSS - RSS before step 1, MiB")
    print("| workload | Kiln tok/s | PyTorch tok/s | Kiln/PyTorch tok/s (goal) | Kiln train mem "
          "(MiB) | PyTorch train mem (MiB) | Kiln/PyTorch mem (goal) | Kiln process, "
          f"{args.steps} steps (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for w in workloads:
        r = results["workloads"][w.key]
        k, p = r["median_tokens_per_s"]["kiln"], r["median_tokens_per_s"]["pytorch"]
        ratio = k / p if k is not None and p is not None else None
        km = r["median_memory_bytes"]["kiln"]["train_mem"]
        pm = r["median_memory_bytes"]["pytorch"]["train_mem"]
        mem_ratio = km / pm if km is not None and pm else None
        r["ratio_kiln_pytorch"] = ratio
        r["memory_ratio_kiln_pytorch"] = mem_ratio
        r["speed_goal_met"] = None if ratio is None else ratio >= SPEED_GOAL[w.key]
        r["memory_goal_met"] = None if mem_ratio is None else mem_ratio <= MEMORY_GOAL
        print(f"| {w.title} | {fmt(k)} | {fmt(p)} | {goal_text(ratio, SPEED_GOAL[w.key], True)} "
              f"| {mib(km)} | {mib(pm)} | "
              f"{goal_text(mem_ratio, MEMORY_GOAL, False)} | {fmt(r['median_kiln_wall_s'], '.1f')} |")
    print(f"\ngoals: Kiln/PyTorch tokens/s ≥ {SPEED_GOAL['a']} for (a) BERT and ≥ {SPEED_GOAL['b']} "
          f"for (b) GPT; Kiln training memory ≤ {MEMORY_GOAL} x PyTorch's")
    print(f"cpu: {cpu_model()}, {os.cpu_count()} logical CPUs; {THREADS} threads per side")

    if noisy:
        print(f"\nwarning: other processes used >= {BUSY_SHARE:.0%} of the CPUs in some rounds of "
              f"{'; '.join(noisy)}; those figures measure contention as much as speed, "
              "rerun on an idle machine")

    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    if failures:
        print("\nFAILED:\n  " + "\n  ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--pytorch-worker":
        sys.exit(pytorch_worker(sys.argv[2]))
    try:
        sys.exit(main())
    except SetupError as e:
        print(f"train_bench: {e}", file=sys.stderr)
        sys.exit(2)
