#!/usr/bin/env python3
"""LSTM language-model training steps, `kiln pretrain` vs PyTorch `nn.LSTM`: tokens/s.

Two workloads, each a full optimizer step on CPU with 2 threads on both sides, on Kiln's LSTM
"mini" (`kiln init --arch lstm --size mini`: 2 layers, cell width 512, projection 256, residual
between layers, tied softmax; see docs/lstm.md), an 8k WordPiece vocabulary, batch 16 x 128:
  bilm - bidirectional (ELMo's biLM): `kiln pretrain --objective bilm`, the mean of the forward
         LM's next-token and the backward LM's previous-token cross-entropy;
  clm  - one-directional: `kiln pretrain --objective clm`, the forward LM alone.
Both sides start every run from the SAME initial model directory, made once per invocation by
`kiln init --arch lstm --size mini [--bidirectional] --tokenizer TOK` with `"dropout": 0.0`
written into its config.json, read the same text (--data, packed into full 128-token windows the
same way: every non-empty text tokenized without special tokens, followed by the end-of-text
token, the stream cut into windows; stream order, Kiln's shuffle buffer off) and take the same
optimizer step: AdamW lr 1e-3 (betas 0.9/0.999, eps 1e-8), linear decay to 0 over the run's steps
with no warm-up (Kiln's default schedule), weight decay 0.01 on the embeddings, the LSTM weight
matrices and the projection weights, not on biases (Kiln's `parameters()` decay flags), gradient
clipping at global norm 1.0 (Kiln's default).

Every run, on both sides, is a fresh process: one `kiln pretrain` process, or one PyTorch worker
process (this script with --pytorch-worker). Runs alternate (kiln, pytorch, kiln, ...) for
--rounds rounds in one invocation; each run is --steps optimizer steps from the initial model, the
first 2 of which are warm-up and ignored. A run's figure is the median over its remaining steps
of tokens/s = 16 x 128 / step time; the table reports the median over rounds per side and the
ratio of the medians. Goal: Kiln/PyTorch tokens/s >= 1.2 on both workloads.
  kiln     its own per-step `tokens_per_s` from metrics.jsonl (--log-every 1): everything between
           two log lines, i.e. reading, tokenizing and packing text, forward, backward, clipping,
           the AdamW update, the log line. The whole process's wall time (start, model load, the
           initial and final saves included) is printed separately.
  pytorch  the docs/lstm.md module tree loaded from INIT/model.safetensors with strict=True; the
           computation runs one unidirectional nn.LSTM(P, H, batch_first=True) per layer and
           direction holding that direction's Parameter objects (the *_reverse ones for the
           backward stack), nn.Linear projections, the residual from layer 1 on and the tied
           softmax. The backward stack runs on the time-flipped batch and stays in that order: its
           previous-token LM is then a next-token LM on the flipped ids (the same targets). Per
           step: the batch tensor, forward, loss, backward(), clip_grad_norm_(1.0),
           AdamW.step(), the schedule's step, zero_grad(). torch.set_num_threads(2),
           torch.set_num_interop_threads(1). Text tokenized (tokenizers, the model directory's
           tokenizer.json) and packed by this script, outside the timed region.

Check: before timing, each PyTorch worker computes the loss of the initial model on the first
batch (no_grad) and compares it with the first `loss` that the same round's `kiln pretrain` run
logged (dropout 0, same weights, same batch): they must agree within 1e-3 relative.

Usage (from the repository root, after `cargo build --release` and ../shared/reference/setup-python.sh):
    ~/.cache/kiln-ref-venv/bin/python bench/lstm_speed.py [--rounds 3] [--steps 12]
        [--workloads bilm,clm] [--kiln target/release/kiln] [--tokenizer DIR] [--data FILE]
        [--json results.json]
Exit status: 0 all runs succeeded and the checks passed; 1 a run failed, a loss was not finite, or
a first-step loss check failed; 2 setup error (wrong package versions, no kiln binary, missing
tokenizer or data, `kiln init` failed). Missing the goal is not a failure: the table says.
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
from importlib.metadata import version
from pathlib import Path

from benchcommon import OtherLoad, RunError, SetupError, check_versions, cpu_model, goal_text

# The reference stack, as installed by ../shared/reference/setup-python.sh (tokenizers comes with
# its transformers). A different version is a different baseline: the script refuses to run.
PINNED = {
    "torch": "2.15.0",
    "tokenizers": "0.23.3",
    "safetensors": "0.8.0",
}

THREADS = 2
SEQ_LEN = 128
BATCH_SIZE = 16
WARMUP_STEPS = 2  # per run, on both sides: measured but left out of the figures
# The optimizer step, on both sides. SCHEDULE, WEIGHT_DECAY, CLIP_NORM and SEED are kiln
# pretrain's defaults; the script passes them explicitly anyway.
LR = 1e-3
SCHEDULE = "linear"  # from LR down to 0 over the run's steps, no warm-up
WEIGHT_DECAY = 0.01
CLIP_NORM = 1.0
BETAS, EPS = (0.9, 0.999), 1e-8  # Kiln's AdamW constants = torch.optim.AdamW's defaults
SEED = 42
# Same weights and same first batch: the first losses must agree this closely (relative).
FIRST_LOSS_RTOL = 1e-3
# A round in which other processes took this share of the CPUs is not a clean measurement.
BUSY_SHARE = 0.10
SPEED_GOAL = 1.2
# mini = 2 layers, cell width 512, projection 256: what the initial model must be.
MINI = {"num_hidden_layers": 2, "hidden_size": 512, "projection_size": 256}

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
SETUP_HINT = (
    f"run {SHARED / 'reference' / 'setup-python.sh'} and use its venv: "
    "~/.cache/kiln-ref-venv/bin/python bench/lstm_speed.py"
)

# Kiln runs with the caller's environment, untouched; the knobs below are for the Python side.
KILN_ENV = dict(os.environ)
# Hold the tokenizers' rayon pool and any OpenMP pool to the same 2 threads torch gets.
# Must be set before the imports.
os.environ["RAYON_NUM_THREADS"] = str(THREADS)
os.environ["OMP_NUM_THREADS"] = str(THREADS)

WORKLOADS = {
    "bilm": ("(a) bilm: bidirectional LSTM-mini, forward + backward LM, 16 x 128", True),
    "clm": ("(b) clm: one-directional LSTM-mini, next-token LM, 16 x 128", False),
}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kiln", type=Path, default=REPO / "target" / "release" / "kiln",
                   help="kiln binary (default: target/release/kiln)")
    p.add_argument("--tokenizer", type=Path,
                   default=Path.home() / ".cache" / "kiln-bench" / "distill-mlm" / "tok",
                   help="tokenizer directory for kiln init (default: "
                        "~/.cache/kiln-bench/distill-mlm/tok, an 8k WordPiece tokenizer.json)")
    p.add_argument("--data", type=Path,
                   default=SHARED / "data" / "corpora" / "en_gutenberg" / "validation.jsonl.gz",
                   help="training text, JSONL with a \"text\" field (default: "
                        "../shared/data/corpora/en_gutenberg/validation.jsonl.gz)")
    p.add_argument("--rounds", type=int, default=3,
                   help="alternating timed rounds per workload (default 3)")
    p.add_argument("--steps", type=int, default=12,
                   help=f"optimizer steps per run, the first {WARMUP_STEPS} of them warm-up "
                        "(default 12)")
    p.add_argument("--workloads", default="bilm,clm",
                   help="comma-separated subset of bilm,clm (default both)")
    p.add_argument("--json", type=Path, help="also write all measurements to this JSON file")
    args = p.parse_args()
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if not args.workloads or any(w not in WORKLOADS for w in args.workloads):
        p.error("--workloads takes a comma-separated subset of bilm,clm")
    if args.rounds < 1:
        p.error("--rounds must be positive")
    if args.steps <= WARMUP_STEPS:
        p.error(f"--steps must be more than the {WARMUP_STEPS} warm-up steps")
    return args


# ---------------------------------------------------------------------------------------------
# Setup: the kiln binary, the initial models, the packed batches


def kiln_probe(binary):
    """The binary's version; SetupError unless it is a kiln whose pretrain knows bilm."""
    if not os.access(binary, os.X_OK):
        raise SetupError(f"no kiln binary at {binary}: run `cargo build --release` "
                         "or pass --kiln PATH")
    probe = subprocess.run([str(binary), "pretrain", "--help"], capture_output=True, text=True,
                           env=KILN_ENV)
    text = probe.stdout + probe.stderr
    if probe.returncode != 0 or "bilm" not in text or "--shuffle-buffer" not in text:
        raise SetupError(f"`{binary} pretrain --help` does not offer --objective bilm "
                         f"(exit {probe.returncode}); rebuild with `cargo build --release`")
    ver = subprocess.run([str(binary), "--version"], capture_output=True, text=True, env=KILN_ENV)
    return ver.stdout.strip() if ver.returncode == 0 and ver.stdout.strip() else "unknown"


def make_model(kiln, tokenizer, out, bidirectional):
    """`kiln init --arch lstm --size mini` into `out`, then dropout 0.0 in its config.json."""
    cmd = [str(kiln), "init", "--arch", "lstm", "--size", "mini", "--tokenizer", str(tokenizer),
           "--out", str(out)]
    if bidirectional:
        cmd.append("--bidirectional")
    print(f"setup: {' '.join(cmd)}", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=KILN_ENV)
    if proc.returncode != 0:
        raise SetupError(f"`{' '.join(cmd)}` exited {proc.returncode}:\n"
                         f"{(proc.stderr or proc.stdout)[-2000:]}")
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["dropout"] = 0.0
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    want = dict(MINI, model_type="kiln_lstm", bidirectional=bidirectional)
    wrong = {k: cfg.get(k) for k, v in want.items() if cfg.get(k) != v}
    if wrong:
        raise SetupError(f"{cfg_path}: expected {want}, found {wrong}")
    return cfg


def pack(tokenizer_json, corpus, eos, steps):
    """The first steps x 16 windows of 128 tokens, as `kiln pretrain` packs them for clm/bilm
    (kiln's Packer, Framing::Gpt): every non-empty text tokenized without special tokens and
    followed by the end-of-text token, the stream cut into windows, no framing tokens."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    tok.no_padding()
    tok.no_truncation()
    need = steps * BATCH_SIZE
    seqs, buf = [], []
    for _ in range(2):  # a second pass over the corpus if one is not enough, as kiln would
        with gzip.open(corpus, "rt", encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                text = json.loads(line).get("text")
                if not isinstance(text, str):
                    raise SetupError(f"{corpus}: a line without a string \"text\" field")
                ids = tok.encode(text, add_special_tokens=False).ids
                if not ids:
                    continue
                buf.extend(ids)
                buf.append(eos)
                while len(buf) >= SEQ_LEN and len(seqs) < need:
                    seqs.append(buf[:SEQ_LEN])
                    buf = buf[SEQ_LEN:]
                if len(seqs) == need:
                    break
        if len(seqs) == need:
            break
    if len(seqs) < need:
        raise SetupError(f"{corpus} holds too little text for {need} sequences")
    return seqs, tok.get_vocab_size(with_added_tokens=True)


# ---------------------------------------------------------------------------------------------
# The two sides. Each `run` returns a dict with per-step tokens/s and losses.


class Kiln:
    name = "kiln"

    def __init__(self, binary, tmp):
        self.binary, self.tmp = binary, tmp
        self.version = kiln_probe(binary)

    def command(self, objective, model_dir, corpus, out, steps):
        return [str(self.binary), "pretrain", "--model", str(model_dir), "--objective", objective,
                "--corpus", str(corpus), "--seq-len", str(SEQ_LEN),
                "--batch-size", str(BATCH_SIZE), "--lr", str(LR), "--warmup-steps", "0",
                "--schedule", SCHEDULE, "--weight-decay", str(WEIGHT_DECAY),
                "--clip-norm", str(CLIP_NORM), "--seed", str(SEED),
                "--max-steps", str(steps), "--log-every", "1", "--eval-every", "0",
                # no checkpoints but the last, as the PyTorch side saves none
                "--save-every", "0", "--save-minutes", "0",
                # stream order, as the PyTorch side reads the same text
                "--shuffle-buffer", "0",
                "--threads", str(THREADS), "--out", str(out), "--overwrite"]

    def run(self, w, steps):
        out = self.tmp / f"kiln-out-{w['key']}"
        shutil.rmtree(out, ignore_errors=True)
        cmd = self.command(w["key"], w["model_dir"], w["corpus"], out, steps)
        metrics = out / "metrics.jsonl"
        start = time.perf_counter()
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              env=KILN_ENV)
        wall = time.perf_counter() - start
        try:
            if proc.returncode != 0:
                raise RunError(f"`{' '.join(cmd)}` exited {proc.returncode}:\n"
                               f"{(proc.stderr or proc.stdout)[-3000:]}")
            if not metrics.exists():
                raise RunError(f"`{' '.join(cmd)}` wrote no {metrics}")
            lines = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
        finally:
            shutil.rmtree(out, ignore_errors=True)
        steps_seen = [x.get("step") for x in lines]
        if steps_seen != list(range(1, steps + 1)):
            raise RunError(f"`{' '.join(cmd)}`: metrics.jsonl holds steps {steps_seen}, "
                           f"expected 1..{steps}")
        res = {
            "tokens_per_s": [float(x["tokens_per_s"]) for x in lines],
            "loss": [float(x["loss"]) for x in lines],
            "grad_norm": [x.get("grad_norm") for x in lines],
            "lr": [x.get("lr") for x in lines],
            "wall_s": wall,
        }
        if "loss_forward" in lines[0]:
            res["loss_forward"] = [float(x["loss_forward"]) for x in lines]
            res["loss_backward"] = [float(x["loss_backward"]) for x in lines]
        return res


class PyTorchLstm:
    """Every run is a fresh worker process (pytorch_worker below) on the batches packed here."""
    name = "pytorch"

    def __init__(self, tmp):
        self.tmp = tmp

    def run(self, w, steps, kiln_first=None):
        spec = self.tmp / f"pytorch-{w['key']}.json"
        spec.write_text(json.dumps({
            "model_dir": str(w["model_dir"]), "objective": w["key"], "steps": steps,
            "sequences": str(w["sequences"]), "kiln_first": kiln_first}))
        cmd = [sys.executable, str(Path(__file__).resolve()), "--pytorch-worker", str(spec)]
        start = time.perf_counter()
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              env=dict(os.environ))
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RunError(f"`{' '.join(cmd)}` exited {proc.returncode}:\n"
                           f"{(proc.stderr or proc.stdout)[-3000:]}")
        try:
            out = json.loads(proc.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            raise RunError(f"`{' '.join(cmd)}` printed no result:\n"
                           f"{(proc.stderr or proc.stdout)[-3000:]}") from None
        out["wall_s"] = wall
        return out


def pytorch_worker(spec_path):
    """One PyTorch run in this (fresh) process; prints its measurements as one JSON line."""
    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file
    from torch import nn

    torch.set_num_threads(THREADS)
    torch.set_num_interop_threads(1)
    torch.manual_seed(SEED)
    spec = json.loads(Path(spec_path).read_text())
    steps, bilm = spec["steps"], spec["objective"] == "bilm"
    model_dir = Path(spec["model_dir"])
    cfg = json.loads((model_dir / "config.json").read_text())
    V, P, H = cfg["vocab_size"], cfg["projection_size"], cfg["hidden_size"]
    L, bi, residual = cfg["num_hidden_layers"], cfg["bidirectional"], cfg.get("residual", True)
    assert cfg["dropout"] == 0.0, cfg["dropout"]
    assert cfg.get("tie_word_embeddings", True), "the benchmark expects the tied softmax"
    assert bi == bilm, (bi, spec["objective"])
    seqs = json.loads(Path(spec["sequences"]).read_text())[:steps * BATCH_SIZE]

    # docs/lstm.md's module tree: exactly the tensor names of model.safetensors.
    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(P, H, batch_first=True, bidirectional=bi)
            self.proj = nn.Linear(H, P)
            if bi:
                self.proj_reverse = nn.Linear(H, P)

    class KilnLstm(nn.Module):
        def __init__(self):
            super().__init__()
            self.embeddings = nn.Embedding(V, P)
            self.layers = nn.ModuleList(Layer() for _ in range(L))

    tree = KilnLstm()
    state = load_file(str(model_dir / "model.safetensors"))
    bad = {k: str(t.dtype) for k, t in state.items() if t.dtype != torch.float32}
    assert not bad, f"expected float32 tensors: {bad}"
    tree.load_state_dict(state, strict=True)
    del state

    # The computation: per direction and layer a one-directional nn.LSTM holding that
    # direction's Parameter objects of the tree (shared, not copied), and its projection.
    names = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")

    def one_way(lstm, suffix):
        m = nn.LSTM(P, H, batch_first=True)
        for n in names:
            # RNNBase.__setattr__ also puts the Parameter into the module's _flat_weights.
            setattr(m, n, getattr(lstm, n + suffix))
        for n, i in zip(names, range(len(names))):
            assert getattr(m, n) is getattr(lstm, n + suffix) and m._flat_weights[i] is getattr(m, n)
        return m

    dirs = [[(one_way(lay.lstm, ""), lay.proj) for lay in tree.layers]]
    if bi:
        dirs.append([(one_way(lay.lstm, "_reverse"), lay.proj_reverse) for lay in tree.layers])
    E = tree.embeddings.weight

    def losses(ids):
        """[forward LM loss, backward LM loss (bilm)] on ids [B, T], each a mean over B x (T-1)."""
        x0 = F.embedding(ids, E)
        out = []
        for d, stack in enumerate(dirs):
            # The backward stack reads right to left: it runs on the flipped sequence (all
            # full length, nothing to pad) and its output stays flipped, where its
            # previous-token LM is the next-token LM of the flipped ids.
            y, tgt = (x0, ids) if d == 0 else (x0.flip(1), ids.flip(1))
            for l, (lstm, proj) in enumerate(stack):
                h, _ = lstm(y)
                z = proj(h)
                y = z + y if (residual and l > 0) else z
            logits = F.linear(y[:, :-1].reshape(-1, P), E)  # tied softmax, no bias
            out.append(F.cross_entropy(logits, tgt[:, 1:].reshape(-1)))
        return out

    def total(parts):
        return (parts[0] + parts[1]) / 2 if bilm else parts[0]

    # Kiln's decay flags (train/backprop.rs parameters()): the embeddings, weight_ih, weight_hh
    # and the projection weights decay, the biases do not; i.e. exactly the matrices here.
    params = list(tree.parameters())
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": WEIGHT_DECAY},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    n_tensors = len(tree.state_dict())
    assert sum(len(g["params"]) for g in groups) == n_tensors, "a parameter is shared or missing"
    opt = torch.optim.AdamW(groups, lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY)
    # Kiln's linear schedule without warm-up: step s (0-based) uses LR x (1 - s / steps).
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - min(s / steps, 1.0))
    tree.train()

    # The check, before timing: the initial model's loss on the first batch.
    with torch.no_grad():
        parts = losses(torch.tensor(seqs[:BATCH_SIZE], dtype=torch.long))
    check = {"pytorch": float(total(parts)), "pytorch_parts": [float(x) for x in parts]}
    kf = spec.get("kiln_first")
    if kf is not None:
        check["kiln"] = kf["loss"]
        check["kiln_parts"] = kf.get("parts")
        check["rel_diff"] = abs(check["pytorch"] - kf["loss"]) / max(abs(kf["loss"]), 1e-12)
        check["ok"] = check["rel_diff"] <= FIRST_LOSS_RTOL
    gc.collect()

    rates, step_losses, norms, lrs = [], [], [], []
    for step in range(steps):
        batch = seqs[step * BATCH_SIZE:(step + 1) * BATCH_SIZE]
        start = time.perf_counter()
        ids = torch.tensor(batch, dtype=torch.long)
        loss = total(losses(ids))
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, CLIP_NORM)
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        opt.zero_grad()
        loss = loss.item()
        seconds = time.perf_counter() - start
        rates.append(BATCH_SIZE * SEQ_LEN / seconds)
        step_losses.append(loss)
        norms.append(float(norm))
    print(json.dumps({
        "tokens_per_s": rates, "loss": step_losses, "grad_norm": norms, "lr": lrs,
        "first_loss_check": check, "parameters": sum(p.numel() for p in params),
        "tensors": n_tensors}), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------
# Reporting


def fmt(x, spec=".0f"):
    return "—" if x is None else format(x, spec)


def run_figure(result):
    """Median tokens/s over the steps after the warm-up."""
    return statistics.median(result["tokens_per_s"][WARMUP_STEPS:])


def main():
    args = parse_args()
    load = os.getloadavg()  # before this process adds its own
    check_versions(PINNED, SETUP_HINT)
    tok_json = args.tokenizer / "tokenizer.json"
    if not tok_json.exists():
        raise SetupError(f"no {tok_json}: pass --tokenizer DIR (a directory with tokenizer.json)")
    corpus = args.data.resolve()
    if not corpus.exists():
        raise SetupError(f"no training text at {corpus} (--data)")

    tmp_dir = tempfile.TemporaryDirectory(prefix="kiln-lstm-speed-")
    tmp = Path(tmp_dir.name)
    kiln = Kiln(args.kiln, tmp)
    pytorch = PyTorchLstm(tmp)
    workloads = []
    for key in args.workloads:
        title, bi = WORKLOADS[key]
        model_dir = tmp / f"init-{key}"
        cfg = make_model(args.kiln, args.tokenizer, model_dir, bi)
        # The tokenizer kiln pretrain reads: the model directory's copy (kiln init writes one),
        # else the one it was made from.
        model_tok = model_dir / "tokenizer.json"
        used_tok = model_tok if model_tok.exists() else tok_json
        eos = cfg.get("eos_token_id")
        if eos is None:
            raise SetupError(f"{model_dir / 'config.json'} has no eos_token_id")
        seqs, tok_vocab = pack(used_tok, corpus, eos, args.steps)
        if tok_vocab != cfg["vocab_size"]:
            raise SetupError(f"{used_tok}: {tok_vocab} tokens, the model {cfg['vocab_size']}")
        path = tmp / f"sequences-{key}.json"
        path.write_text(json.dumps(seqs))
        workloads.append({"key": key, "title": title, "model_dir": model_dir, "config": cfg,
                          "tokenizer_json": used_tok, "eos": eos, "corpus": corpus,
                          "sequences": path})
    gc.collect()

    print("== environment")
    print(f"cpu: {cpu_model()} ({os.cpu_count()} logical CPUs, "
          f"{len(os.sched_getaffinity(0))} usable by this process)")
    print(f"load average before the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"python {platform.python_version()} | " + " | ".join(f"{n} {version(n)}" for n in PINNED))
    print(f"kiln: {kiln.binary} ({kiln.version})")
    print(f"threads: kiln --threads {THREADS} | torch.set_num_threads({THREADS}), "
          f"set_num_interop_threads(1) | OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} | "
          f"tokenizers RAYON_NUM_THREADS={os.environ['RAYON_NUM_THREADS']}")
    print(f"corpus: {corpus}; tokenizer: {args.tokenizer}; {args.rounds} rounds x {args.steps} "
          f"steps per side, the first {WARMUP_STEPS} steps of every run left out of tokens/s")
    print(f"optimizer: AdamW lr {LR:g}, {SCHEDULE} decay to 0 over the run, no warm-up, weight "
          f"decay {WEIGHT_DECAY} (not on biases), clip norm {CLIP_NORM}; dropout 0.0 in both "
          f"models' config.json; batch {BATCH_SIZE} x {SEQ_LEN}, all windows full length")
    for w in workloads:
        c = w["config"]
        print(f"workload {w['title']}: model {w['model_dir']} (V {c['vocab_size']}, P "
              f"{c['projection_size']}, H {c['hidden_size']}, L {c['num_hidden_layers']}, "
              f"residual {c.get('residual')}), eos {w['eos']}, tokenizer {w['tokenizer_json']}")
    print("every run is a fresh process on each side. kiln's step time is its own tokens_per_s "
          "(text reading and packing included); pytorch's is the batch tensor + forward + "
          "backward + clip + AdamW + schedule, model loaded and text packed untimed.", flush=True)

    results = {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "load_average_before": load,
               "versions": {n: version(n) for n in PINNED}, "kiln_version": kiln.version,
               "threads": THREADS, "seq_len": SEQ_LEN, "batch_size": BATCH_SIZE, "lr": LR,
               "schedule": SCHEDULE, "weight_decay": WEIGHT_DECAY, "clip_norm": CLIP_NORM,
               "steps": args.steps, "warmup_steps": WARMUP_STEPS, "rounds": args.rounds,
               "speed_goal": SPEED_GOAL, "corpus": str(corpus), "tokenizer": str(args.tokenizer),
               "workloads": {}}
    failures, noisy = [], []
    contention = OtherLoad()
    sides = (kiln, pytorch)

    for w in workloads:
        print(f"\n== {w['title']}")
        print("kiln command: " + " ".join(kiln.command(w["key"], w["model_dir"], corpus, "OUT",
                                                       args.steps)))
        per_run = {s.name: [] for s in sides}
        figures = {s.name: [] for s in sides}
        checks, walls, other_load = [], {s.name: [] for s in sides}, []
        for r in range(args.rounds):
            contention.start()
            parts = []
            kiln_first = None
            for side in sides:
                gc.collect()
                try:
                    if side is kiln:
                        res = kiln.run(w, args.steps)
                        kiln_first = {"loss": res["loss"][0]}
                        if "loss_forward" in res:
                            kiln_first["parts"] = [res["loss_forward"][0], res["loss_backward"][0]]
                    else:
                        res = pytorch.run(w, args.steps, kiln_first)
                except RunError as e:
                    print(f"{side.name} FAILED:\n{e}", flush=True)
                    failures.append(f"{w['title']}: {side.name}: {str(e).splitlines()[0]}")
                    continue
                per_run[side.name].append(res)
                figures[side.name].append(run_figure(res))
                walls[side.name].append(res["wall_s"])
                parts.append(f"{side.name} {figures[side.name][-1]:.0f} tok/s "
                             f"(process {res['wall_s']:.1f} s)")
                if side is pytorch:
                    c = res["first_loss_check"]
                    checks.append(c)
                    if "ok" in c and not c["ok"]:
                        failures.append(f"{w['title']}: round {r + 1}: first-batch loss pytorch "
                                        f"{c['pytorch']:.6f} vs kiln {c['kiln']:.6f} (relative "
                                        f"difference {c['rel_diff']:.2e} > {FIRST_LOSS_RTOL:g})")
            other_load.append(contention.share())
            busy = ("" if other_load[-1] is None
                    else f"  (other processes: {other_load[-1]:.0%} of the CPUs)")
            print(f"round {r + 1}/{args.rounds}: " + "  ".join(parts) + busy, flush=True)
        if any(x is not None and x >= BUSY_SHARE for x in other_load):
            noisy.append(w["title"])

        med = {n: (statistics.median(v) if v else None) for n, v in figures.items()}
        print("median (min..max) tokens/s: " + "  ".join(
            f"{n} {med[n]:.0f} ({min(v):.0f}..{max(v):.0f})" for n, v in figures.items() if v))
        for n, runs in per_run.items():
            if runs:
                ms = [BATCH_SIZE * SEQ_LEN / x * 1000 for x in runs[0]["tokens_per_s"]]
                print(f"{n} step times, round 1 (ms): " + " ".join(f"{t:.0f}" for t in ms))

        # Checks: finite losses on every run; the first-batch loss against kiln's step 1.
        for n, runs in per_run.items():
            for res in runs:
                if not all(math.isfinite(x) for x in res["loss"]):
                    failures.append(f"{w['title']}: {n} loss not finite: {res['loss']}")
        for i, c in enumerate(checks):
            if "kiln" not in c:
                print(f"first-batch loss check, run {i + 1}: pytorch {c['pytorch']:.6f}; no kiln "
                      "loss from this round (its kiln run failed), not checked")
                continue
            line = (f"first-batch loss check, run {i + 1}: pytorch {c['pytorch']:.6f} vs kiln "
                    f"step 1 {c['kiln']:.6f}, relative difference {c['rel_diff']:.1e} "
                    f"({'ok' if c['ok'] else 'TOO LARGE'}, tolerance {FIRST_LOSS_RTOL:g})")
            if w["key"] == "bilm" and c.get("kiln_parts"):
                pf, pb = c["pytorch_parts"]
                kf, kb = c["kiln_parts"]
                line += f"; forward/backward LM: pytorch {pf:.6f}/{pb:.6f}, kiln {kf:.6f}/{kb:.6f}"
            print(line)
        last = {n: runs[0]["loss"][-1] for n, runs in per_run.items() if runs}
        if last:
            print(f"step {args.steps} loss, round 1: " + "  ".join(f"{n} {v:.4f}"
                                                                 for n, v in last.items()))

        results["workloads"][w["key"]] = {
            "title": w["title"], "model_dir": str(w["model_dir"]), "config": w["config"],
            "tokenizer_json": str(w["tokenizer_json"]), "eos_token_id": w["eos"],
            "tokens_per_s_per_round": figures, "median_tokens_per_s": med,
            "process_wall_s": walls, "first_loss_checks": checks, "runs": per_run,
            "other_processes_cpu_share": other_load,
            "kiln_command": kiln.command(w["key"], w["model_dir"], corpus, "OUT", args.steps),
        }

    print(f"\n== summary: medians over {args.rounds} alternating rounds; tok/s = median of steps "
          f"{WARMUP_STEPS + 1}..{args.steps} per run, batch {BATCH_SIZE} x {SEQ_LEN}, "
          f"{THREADS} threads per side")
    print("| workload | Kiln tok/s | PyTorch tok/s | Kiln/PyTorch (goal) |")
    print("|---|---:|---:|---:|")
    for w in workloads:
        r = results["workloads"][w["key"]]
        k, p = r["median_tokens_per_s"]["kiln"], r["median_tokens_per_s"]["pytorch"]
        ratio = k / p if k is not None and p else None
        r["ratio_kiln_pytorch"] = ratio
        r["speed_goal_met"] = None if ratio is None else ratio >= SPEED_GOAL
        print(f"| {w['title']} | {fmt(k)} | {fmt(p)} | {goal_text(ratio, SPEED_GOAL, True)} |")
    print(f"\ngoal: Kiln/PyTorch tokens/s ≥ {SPEED_GOAL} on each workload")
    print(f"cpu: {cpu_model()}, {os.cpu_count()} logical CPUs; {THREADS} threads per side")

    if noisy:
        print(f"\nwarning: other processes used >= {BUSY_SHARE:.0%} of the CPUs in some rounds of "
              f"{'; '.join(noisy)}; those figures measure contention as much as speed, "
              "rerun on an idle machine")

    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
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
        print(f"lstm_speed: {e}", file=sys.stderr)
        sys.exit(2)
