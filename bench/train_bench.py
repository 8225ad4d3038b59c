#!/usr/bin/env python3
"""Training-step throughput: `kiln pretrain` vs PyTorch/transformers, same model, same batch shape.

Two workloads, each a full optimizer step on CPU with 2 threads on both sides:
  (a) bert - BERT-mini masked LM (L4/H256, 4 heads, FFN 1024), WordPiece vocab 30522 (uncased),
             batch 16 x 128 tokens, 15% masking;
  (b) gpt2 - GPT-2 L6/H384 (6 heads, FFN 1536, 128 positions) causal LM, byte-level BPE vocab
             50257 (32000 if training that tokenizer takes too long; the header prints the size
             used), batch 8 x 128 tokens.
Both sides start every run from the SAME initial model directory (`kiln init`, with the dropout
rates in its config.json set to --dropout, default 0.0), read the same text (the Gutenberg
validation books, packed into 128-token sequences the same way) and take the same optimizer step:
AdamW lr 1e-4 (constant), weight decay 0.01 (not on biases and LayerNorm weights), gradient
clipping at norm 1.0. Both sides take their dropout rates from that config.json (`kiln pretrain`
applies them in training; the PyTorch models are loaded in train mode with the same values).

Runs alternate (kiln, pytorch, kiln, ...) for --rounds rounds in one invocation; each run is
--steps optimizer steps from the initial model, the first 2 of which are warm-up and ignored. A
run's figure is the median over its remaining steps of tokens/s = batch x 128 / step time; the
table reports the median over rounds per side and the ratio of the medians. The baseline is
measured live on every run, never read from a file.

What each side's step time covers:
  kiln     one `kiln pretrain` process per run; its own per-step `tokens_per_s` from
           metrics.jsonl (--log-every 1): everything between two log lines, i.e. packing and
           tokenizing text, masking, forward, backward, clipping, the AdamW update, the log line.
           The whole process's wall time (start, model load, the initial and final saves
           included) is reported separately.
  pytorch  BertForMaskedLM / GPT2LMHeadModel.from_pretrained(the same directory) in train mode,
           transformers' default attention (sdpa); per step: build the batch (MLM:
           DataCollatorForLanguageModeling, mlm_probability 0.15), forward with labels, backward,
           clip_grad_norm_(1.0), AdamW.step(), zero_grad(). Text tokenized and packed once,
           outside the timed region; model loaded once per run, untimed.

Setup (cached in ~/.cache/kiln-bench/train/, reused when present): tokenizers trained with
`kiln tokenizer train` on the Gutenberg training books, models created with `kiln init`, and a
copy of each model whose config.json carries the --dropout rate.

Usage (from the repository root, after `cargo build --release` and ../shared/reference/setup-python.sh):
    ~/.cache/kiln-ref-venv/bin/python bench/train_bench.py [--rounds 3] [--steps 12]
        [--workloads a,b] [--kiln target/release/kiln] [--dropout 0.0] [--json results.json]
Exit status: 0 all runs succeeded and the checks passed; 1 a Kiln run failed, a loss was not
finite, or (dropout 0 only) the two sides' first-step causal-LM losses disagree; 2 setup error (wrong package
versions, no kiln binary, missing data, a setup command failed).
"""

import argparse
import gc
import gzip
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

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
# Training the 50257-token BPE tokenizer longer than this falls back to BPE_FALLBACK_VOCAB.
BPE_TRAIN_TIMEOUT_S = 150
BPE_FALLBACK_VOCAB = 32000
# Same weights and same first batch: the first causal-LM losses must agree this closely (nats).
CLM_FIRST_LOSS_TOLERANCE = 0.01
# A round in which other processes took this share of the CPUs is not a clean measurement.
BUSY_SHARE = 0.10

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


def workload_specs(bpe_vocab):
    return {
        "a": Workload(
            "a", "(a) BERT-mini MLM, 16 x 128", "bert", "mlm", 16, "wordpiece", 30522, True,
            ["--size", "mini"], "bert-mini",
            ["hidden_dropout_prob", "attention_probs_dropout_prob"]),
        "b": Workload(
            "b", "(b) GPT-2 L6/H384 CLM, 8 x 128", "gpt2", "clm", 8, "bpe", bpe_vocab, False,
            ["--size", "small", "--layers", "6", "--hidden", "384", "--heads", "6",
             "--intermediate", "1536", "--max-positions", str(SEQ_LEN)], "gpt2-L6-H384",
            ["resid_pdrop", "embd_pdrop", "attn_pdrop"]),
    }


class SetupError(Exception):
    """Something to fix before benchmarking (exit status 2)."""


class KilnRunError(Exception):
    """A `kiln pretrain` run failed; the message holds the command and its error output."""


def check_versions(pins):
    wrong = []
    for name, want in pins.items():
        try:
            have = version(name).split("+")[0]
        except PackageNotFoundError:
            have = "not installed"
        if have != want:
            wrong.append(f"{name}=={want} (found {have})")
    if wrong:
        raise SetupError(f"this benchmark pins {', '.join(wrong)}; {SETUP_HINT}")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kiln", type=Path, default=REPO / "target" / "release" / "kiln",
                   help="kiln binary (default: target/release/kiln)")
    p.add_argument("--data", type=Path, default=SHARED / "data",
                   help="shared data folder with corpora/en_gutenberg/")
    p.add_argument("--rounds", type=int, default=3, help="alternating timed rounds per workload")
    p.add_argument("--steps", type=int, default=12,
                   help=f"optimizer steps per run, the first {WARMUP_STEPS} of them warm-up")
    p.add_argument("--workloads", default="a,b", help="comma-separated subset of a,b")
    p.add_argument("--dropout", type=float, default=0.0,
                   help="dropout rate written into the models' config.json, used by both sides "
                        "(default 0.0; kiln init writes 0.1)")
    p.add_argument("--bpe-vocab", type=int, default=50257,
                   help="vocabulary of workload (b)'s byte-level BPE tokenizer")
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "kiln-bench" / "train",
                   help="where the tokenizers and initial models are kept between runs")
    p.add_argument("--json", type=Path, help="also write all measurements to this JSON file")
    args = p.parse_args()
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


def run_setup_command(cmd, timeout=None):
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=KILN_ENV, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, time.perf_counter() - start
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


def ensure_tokenizer(kiln, cache, corpus, kind, vocab, lowercase, timeout=None):
    """The tokenizer directory for (kind, vocab), trained once; None if training timed out."""
    name = f"{kind}-{vocab}" + ("-uncased" if lowercase else "")
    path = cache / name
    too_slow = cache / (name + ".too-slow")
    if (path / "tokenizer.json").exists():
        return path
    if too_slow.exists() and timeout is not None:
        return None
    partial = fresh(path)
    cmd = [str(kiln), "tokenizer", "train", "--corpus", str(corpus), "--kind", kind,
           "--vocab-size", str(vocab), "--out", str(partial), "--threads", str(THREADS)]
    if lowercase:
        cmd.append("--lowercase")
    print(f"setup: {' '.join(cmd)}", flush=True)
    proc, seconds = run_setup_command(cmd, timeout)
    if proc is None:
        shutil.rmtree(partial, ignore_errors=True)
        too_slow.write_text(f"took more than {timeout} s\n")
        print(f"setup: training the {vocab}-token {kind} tokenizer took more than {timeout} s; "
              "giving up on it", flush=True)
        return None
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
    specs = workload_specs(args.bpe_vocab)
    out = []
    for key in args.workloads:
        w = specs[key]
        if w.tokenizer_kind == "bpe":
            tok = ensure_tokenizer(kiln, args.cache, train, "bpe", w.vocab_size, False,
                                   timeout=BPE_TRAIN_TIMEOUT_S)
            if tok is None and w.vocab_size != BPE_FALLBACK_VOCAB:
                print(f"setup: using a {BPE_FALLBACK_VOCAB}-token BPE vocabulary instead", flush=True)
                w.vocab_size = BPE_FALLBACK_VOCAB
                tok = ensure_tokenizer(kiln, args.cache, train, "bpe", w.vocab_size, False)
            if tok is None:
                raise SetupError(f"could not train a {w.vocab_size}-token BPE tokenizer in time; "
                                 f"delete {args.cache}/bpe-*.too-slow to retry")
        else:
            tok = ensure_tokenizer(kiln, args.cache, train, w.tokenizer_kind, w.vocab_size,
                                   w.lowercase)
        w.tokenizer_dir = tok
        w.model_dir = with_dropout(ensure_model(kiln, args.cache, w), w, args.dropout)
        out.append(w)
    return out, valid


# ---------------------------------------------------------------------------------------------
# The two sides. Each `run` returns a dict with per-step tokens/s and losses.


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
                "--log-every", "1", "--threads", str(THREADS)]

    def run(self, w, corpus, steps):
        out = self.tmp / f"kiln-out-{w.key}"
        shutil.rmtree(out, ignore_errors=True)
        cmd = self.command(w, corpus, out, steps)
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=KILN_ENV)
        wall = time.perf_counter() - start
        try:
            if proc.returncode != 0:
                raise KilnRunError(f"`{' '.join(cmd)}` exited {proc.returncode}:\n"
                                   f"{(proc.stderr or proc.stdout)[-3000:]}")
            metrics = out / "metrics.jsonl"
            if not metrics.exists():
                raise KilnRunError(f"`{' '.join(cmd)}` wrote no {metrics}")
            lines = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
            steps_seen = [x.get("step") for x in lines]
            if steps_seen != list(range(1, steps + 1)):
                raise KilnRunError(f"`{' '.join(cmd)}`: metrics.jsonl holds steps {steps_seen}, "
                                   f"expected 1..{steps}")
            return {
                "tokens_per_s": [float(x["tokens_per_s"]) for x in lines],
                "loss": [float(x["loss"]) for x in lines],
                "grad_norm": [x.get("grad_norm") for x in lines],
                "wall_s": wall,
            }
        finally:
            shutil.rmtree(out, ignore_errors=True)


class PyTorchTrainer:
    name = "pytorch"

    def __init__(self, dropout):
        import torch
        import transformers

        self.dropout = dropout
        torch.set_num_threads(THREADS)
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        self.torch = torch
        self.sequences = {}
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
        self.sequences[w.key] = seqs
        self.tokenizers = getattr(self, "tokenizers", {})
        self.tokenizers[w.key] = tok

    def load(self, w):
        from transformers import BertForMaskedLM, GPT2LMHeadModel

        cls = BertForMaskedLM if w.objective == "mlm" else GPT2LMHeadModel
        # The directory's config.json already holds these rates; passing them makes it explicit.
        model = cls.from_pretrained(str(w.model_dir), **{k: self.dropout for k in w.dropout_keys})
        for k in w.dropout_keys:
            assert getattr(model.config, k) == self.dropout, (k, getattr(model.config, k))
        self.attention[w.key] = model.config._attn_implementation
        return model

    def run(self, w, corpus, steps):
        from transformers import DataCollatorForLanguageModeling

        torch = self.torch
        torch.manual_seed(SEED)
        model = self.load(w)
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
        if w.objective == "mlm":
            collator = DataCollatorForLanguageModeling(
                self.tokenizers[w.key], mlm=True, mlm_probability=MLM_PROBABILITY)
        seqs = self.sequences[w.key]
        rates, losses, norms = [], [], []
        for step in range(steps):
            batch = seqs[step * w.batch_size:(step + 1) * w.batch_size]
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
            rates.append(w.batch_size * SEQ_LEN / seconds)
            losses.append(loss)
            norms.append(float(norm))
        del model, opt
        gc.collect()
        return {"tokens_per_s": rates, "loss": losses, "grad_norm": norms}


# ---------------------------------------------------------------------------------------------
# Reporting


class OtherLoad:
    """Share of the machine's CPU time used by processes other than this one and its children
    between start() and share(): the competition a round's figures were measured under.
    Machine-wide busy time comes from /proc/stat (steal included); None where there is none."""

    def __init__(self):
        self.tick = os.sysconf("SC_CLK_TCK")
        self.start()

    def _snapshot(self):
        try:
            with open("/proc/stat") as f:
                user, nice, system, idle, iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
        except (OSError, ValueError):
            return None
        t = os.times()
        own = t.user + t.system + t.children_user + t.children_system
        busy = (user + nice + system + irq + softirq + steal) / self.tick
        return busy, own, time.perf_counter()

    def start(self):
        self.begin = self._snapshot()

    def share(self):
        end = self._snapshot()
        if self.begin is None or end is None:
            return None
        busy, own, wall = (e - b for e, b in zip(end, self.begin))
        return max(0.0, (busy - own) / (wall * os.cpu_count()))


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def fmt(x, spec=".0f"):
    return "—" if x is None else format(x, spec)


def run_figure(result):
    """Median tokens/s over the steps after the warm-up."""
    return statistics.median(result["tokens_per_s"][WARMUP_STEPS:])


def main():
    args = parse_args()
    load = os.getloadavg()  # before this process adds its own
    check_versions(PINNED)

    import torch
    import transformers

    tmp_dir = tempfile.TemporaryDirectory(prefix="kiln-train-bench-")
    tmp = Path(tmp_dir.name)
    kiln = Kiln(args.kiln, tmp)
    workloads, corpus = setup_workloads(args, args.kiln)
    pytorch = PyTorchTrainer(args.dropout)
    for w in workloads:
        pytorch.prepare(w, corpus, args.steps)
        pytorch.load(w)  # reads the weights once (page cache) and records the attention kind
        gc.collect()

    print("== environment")
    print(f"cpu: {cpu_model()} ({os.cpu_count()} logical CPUs, "
          f"{len(os.sched_getaffinity(0))} usable by this process)")
    print(f"load average before the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"python {platform.python_version()} | torch {torch.__version__} | transformers "
          f"{transformers.__version__}")
    print(f"kiln: {kiln.binary} ({kiln.version})")
    print(f"threads: kiln --threads {THREADS} | torch intra-op {torch.get_num_threads()} | "
          f"tokenizers RAYON_NUM_THREADS={os.environ['RAYON_NUM_THREADS']}")
    print(f"corpus: {corpus}; {args.rounds} rounds x {args.steps} steps per side, the first "
          f"{WARMUP_STEPS} steps of every run ignored")
    print(f"optimizer: AdamW lr {LR:g} constant, weight decay {WEIGHT_DECAY} (not on biases and "
          f"LayerNorm weights), clip norm {CLIP_NORM}")
    print(f"dropout {args.dropout:g} on both sides: written into each model directory's config.json "
          "(BERT hidden_dropout_prob, attention_probs_dropout_prob; GPT-2 resid_pdrop, embd_pdrop, "
          "attn_pdrop), which kiln pretrain applies and PyTorch loads in train mode")
    for w in workloads:
        tok_size = len(pytorch.tokenizers[w.key])
        print(f"workload {w.title}: model {w.model_dir} | tokenizer {w.tokenizer_dir} "
              f"({w.tokenizer_kind}, vocab {tok_size}) | pytorch attention: {pytorch.attention[w.key]}")
    print("kiln's step time is its own tokens_per_s (data packing and masking included); "
          "pytorch's is the batch + forward + backward + clip + AdamW step, model loaded untimed.",
          flush=True)

    results = {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "load_average_before": load,
               "versions": {n: version(n) for n in PINNED}, "kiln_version": kiln.version,
               "threads": THREADS, "seq_len": SEQ_LEN, "dropout": args.dropout, "steps": args.steps,
               "warmup_steps": WARMUP_STEPS, "rounds": args.rounds, "workloads": {}}
    failures = []
    noisy = []
    contention = OtherLoad()

    for w in workloads:
        print(f"\n== {w.title}")
        print(f"kiln command: {' '.join(kiln.command(w, corpus, 'OUT', args.steps))}")
        # Warm-up: one 1-step run per side (page cache, allocator, kernels), untimed.
        kiln_ok = True
        try:
            kiln.run(w, corpus, 1)
        except KilnRunError as e:
            print(f"kiln FAILED:\n{e}", flush=True)
            failures.append(f"{w.title}: {str(e).splitlines()[0]}")
            kiln_ok = False
        pytorch.run(w, corpus, 1)

        per_run = {"kiln": [], "pytorch": []}
        figures = {"kiln": [], "pytorch": []}
        walls, other_load = [], []
        for r in range(args.rounds):
            contention.start()
            parts = []
            if kiln_ok:
                gc.collect()
                try:
                    res = kiln.run(w, corpus, args.steps)
                    per_run["kiln"].append(res)
                    figures["kiln"].append(run_figure(res))
                    walls.append(res["wall_s"])
                    parts.append(f"kiln {figures['kiln'][-1]:.0f} tok/s "
                                 f"(process {res['wall_s']:.1f} s)")
                except KilnRunError as e:
                    print(f"kiln FAILED:\n{e}", flush=True)
                    failures.append(f"{w.title}: {str(e).splitlines()[0]}")
                    kiln_ok = False
            gc.collect()
            res = pytorch.run(w, corpus, args.steps)
            per_run["pytorch"].append(res)
            figures["pytorch"].append(run_figure(res))
            parts.append(f"pytorch {figures['pytorch'][-1]:.0f} tok/s")
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
            ok = diff <= CLM_FIRST_LOSS_TOLERANCE
            line += f" (difference {diff:.4f}: {'ok' if ok else 'TOO LARGE'})"
            if not ok:
                failures.append(f"{w.title}: first-step loss kiln {first_loss['kiln']:.4f} vs "
                                f"pytorch {first_loss['pytorch']:.4f}")
        print(line)

        results["workloads"][w.key] = {
            "title": w.title, "batch_size": w.batch_size, "objective": w.objective,
            "model_dir": str(w.model_dir), "tokenizer_dir": str(w.tokenizer_dir),
            "vocab_size": len(pytorch.tokenizers[w.key]),
            "pytorch_attention": pytorch.attention[w.key],
            "tokens_per_s_per_round": figures, "median_tokens_per_s": med,
            "runs": per_run, "kiln_wall_s": walls, "median_kiln_wall_s": wall_med,
            "other_processes_cpu_share": other_load,
            "kiln_command": kiln.command(w, corpus, "OUT", args.steps),
        }

    print(f"\n== summary (median tokens/s over {args.rounds} alternating rounds; each round's figure "
          f"is the median of steps {WARMUP_STEPS + 1}..{args.steps})")
    print(f"| workload | Kiln tok/s | PyTorch tok/s | Kiln/PyTorch | Kiln process, {args.steps} steps (s) |")
    print("|---|---:|---:|---:|---:|")
    for w in workloads:
        r = results["workloads"][w.key]
        k, p = r["median_tokens_per_s"]["kiln"], r["median_tokens_per_s"]["pytorch"]
        ratio = k / p if k is not None else None
        r["ratio_kiln_pytorch"] = ratio
        print(f"| {w.title} | {fmt(k)} | {fmt(p)} | {fmt(ratio, '.2f')} | "
              f"{fmt(r['median_kiln_wall_s'], '.1f')} |")
    print(f"\ncpu: {cpu_model()}, {os.cpu_count()} logical CPUs; {THREADS} threads per side")

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
    try:
        sys.exit(main())
    except SetupError as e:
        print(f"train_bench: {e}", file=sys.stderr)
        sys.exit(2)
