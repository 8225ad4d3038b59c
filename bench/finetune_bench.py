#!/usr/bin/env python3
"""Fine-tuning throughput on SST-2, `kiln finetune` vs transformers' Trainer on PyTorch: examples/s.

One workload: all-MiniLM-L6-v2 with a fresh 2-way classification head, fine-tuned on the first
N = --steps x 32 sentences of ../shared/data/sst2/train.jsonl, CPU, 2 threads on both sides, fp32.
Same settings on both sides: batch 32, max length 66 (truncated; Kiln packs, PyTorch pads each
batch to its longest sentence with DataCollatorWithPadding, as Trainer users do), AdamW lr 5e-5,
weight decay 0.01 (not on biases and LayerNorm weights), gradient clipping at norm 1.0, linear
schedule, no warm-up, dropout as the model's config.json says (train mode), no evaluation, no
checkpoint saving while training. Goal: Kiln/PyTorch examples/s >= 1.5.

Timing, the same two-run difference on both sides: every round runs each side twice, a short run of
--short-steps optimizer steps and a long run of --steps steps, both on the same N sentences, and a
side's examples/s for the round = (steps - short_steps) x 32 / (t_long - t_short). What is common to
both runs (process start, loading the model and tokenizer, reading and tokenizing the data, setting
up the optimizer, saving the final model) cancels; what remains is the cost of the extra optimizer
steps: batching, forward, backward, clipping, the AdamW update and the schedule.
  kiln     t = wall time of the whole `kiln finetune ... --max-steps S` process (subprocess.run).
  pytorch  t = wall time of trainer.train() with max_steps=S, in a fresh worker process per round
           (this script with --pytorch-worker): AutoModelForSequenceClassification.from_pretrained
           (dir, num_labels=2) and the tokenized dataset are built untimed before each train();
           an untimed 2-step train() runs first in each worker to take one-time start-up costs.
Rounds alternate (kiln short, kiln long, pytorch short, pytorch long) for --rounds rounds; the
table reports the median over rounds per side and the ratio of the medians. Each side's simple
figure, long-run steps x 32 / t_long (fixed costs included), is printed too.

Usage (from the repository root, after `cargo build --release`, ../shared/reference/setup-python.sh
and scripts/get-minilm.sh):
    ~/.cache/kiln-ref-venv/bin/python bench/finetune_bench.py [--rounds 3] [--steps 60]
        [--short-steps 10] [--quick] [--kiln target/release/kiln] [--model DIR] [--json FILE]
--quick is a smoke test (1 round, 3 and 8 steps): it proves the script works, its numbers are not
results.
Exit status: 0 all runs succeeded and the losses are finite; 1 a run failed or a loss was not
finite; 2 setup error (wrong package versions, no kiln binary, missing model or data). Missing the
goal is not a failure: the table says whether it is met.
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
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
BATCH = 32
MAX_LENGTH = 66
LR = 5e-5
WEIGHT_DECAY = 0.01  # kiln finetune's default; passed to both sides
CLIP_NORM = 1.0      # both sides' default; passed to both sides
SEED = 42
SPEED_GOAL = 1.5
BUSY_SHARE = 0.10
QUICK_ROUNDS, QUICK_SHORT, QUICK_STEPS = 1, 3, 8

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
SETUP_HINT = (
    f"run {SHARED / 'reference' / 'setup-python.sh'} and use its venv: "
    "~/.cache/kiln-ref-venv/bin/python bench/finetune_bench.py"
)
DEFAULT_MODEL = Path(os.environ.get("KILN_MODEL_CACHE", Path.home() / ".cache" / "kiln-models")) \
    / "all-MiniLM-L6-v2"

# Kiln runs with the caller's environment, untouched; the knobs below are for the Python side.
KILN_ENV = dict(os.environ)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["RAYON_NUM_THREADS"] = str(THREADS)
os.environ["OMP_NUM_THREADS"] = str(THREADS)
os.environ["TOKENIZERS_PARALLELISM"] = "false"


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kiln", type=Path, default=REPO / "target" / "release" / "kiln",
                   help="kiln binary (default: target/release/kiln)")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                   help="sentence-transformers model directory (default: all-MiniLM-L6-v2 in "
                        "~/.cache/kiln-models or $KILN_MODEL_CACHE)")
    p.add_argument("--data", type=Path, default=SHARED / "data",
                   help="shared data folder with sst2/train.jsonl and sst2/labels.json")
    p.add_argument("--rounds", type=int, help="alternating timed rounds (default 3)")
    p.add_argument("--steps", type=int, help="optimizer steps of the long run (default 60)")
    p.add_argument("--short-steps", type=int, help="optimizer steps of the short run (default 10)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke test: {QUICK_ROUNDS} round of {QUICK_SHORT} and {QUICK_STEPS} steps "
                        "(unless --rounds/--steps/--short-steps say otherwise)")
    p.add_argument("--json", type=Path, help="also write all measurements to this JSON file")
    args = p.parse_args()
    if args.rounds is None:
        args.rounds = QUICK_ROUNDS if args.quick else 3
    if args.steps is None:
        args.steps = QUICK_STEPS if args.quick else 60
    if args.short_steps is None:
        args.short_steps = QUICK_SHORT if args.quick else 10
    if args.rounds < 1:
        p.error("--rounds must be positive")
    if not 1 <= args.short_steps < args.steps:
        p.error("need 1 <= --short-steps < --steps")
    return args


# ---------------------------------------------------------------------------------------------
# Kiln


def kiln_command(kiln, model, train, labels, steps, out):
    return [str(kiln), "finetune", "--model", str(model), "--task", "classify",
            "--train", str(train), "--labels", str(labels),
            "--batch-size", str(BATCH), "--max-length", str(MAX_LENGTH),
            "--max-steps", str(steps), "--lr", str(LR), "--warmup-steps", "0",
            "--schedule", "linear", "--weight-decay", str(WEIGHT_DECAY),
            "--clip-norm", str(CLIP_NORM), "--seed", str(SEED),
            "--eval-every", "0", "--save-every", "0", "--save-minutes", "0", "--log-every", str(steps),
            "--threads", str(THREADS), "--out", str(out)]


def run_kiln(kiln, model, train, labels, steps, tmp, stem):
    out = tmp / stem
    cmd = kiln_command(kiln, model, train, labels, steps, out)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=KILN_ENV)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RunError(f"`{' '.join(cmd)}` exited {proc.returncode}:\n"
                       f"{(proc.stderr or proc.stdout)[-2000:]}")
    losses = []
    metrics = out / "metrics.jsonl"
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            rec = json.loads(line)
            if "loss" in rec and "step" in rec:
                losses.append(rec["loss"])
    subprocess.run(["rm", "-rf", str(out)])
    return {"seconds": seconds, "loss": losses[-1] if losses else None}


# ---------------------------------------------------------------------------------------------
# PyTorch worker: one process per round, runs the short and then the long trainer.train()


def pytorch_worker(spec_path):
    spec = json.loads(Path(spec_path).read_text())
    import torch
    torch.set_num_threads(THREADS)
    torch.set_num_interop_threads(1)
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer,
                              DataCollatorWithPadding, Trainer, TrainingArguments)
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()

    tok = AutoTokenizer.from_pretrained(spec["model"])
    rows = [json.loads(l) for l in Path(spec["train"]).read_text().splitlines() if l.strip()]
    enc = tok([r["text"] for r in rows], truncation=True, max_length=MAX_LENGTH)
    dataset = [{**{k: enc[k][i] for k in enc.keys()}, "labels": int(rows[i]["label"])}
               for i in range(len(rows))]
    collator = DataCollatorWithPadding(tok)
    results = []
    # The first trainer.train() in a process pays one-time costs (kernel selection, lazy imports);
    # an untimed 2-step run takes them so the short and long timed runs differ only in steps.
    for steps in [2] + spec["steps"]:
        model = AutoModelForSequenceClassification.from_pretrained(spec["model"], num_labels=2)
        model.train()
        targs = TrainingArguments(
            output_dir=spec["out"], per_device_train_batch_size=BATCH, max_steps=steps,
            learning_rate=LR, lr_scheduler_type="linear", warmup_steps=0,
            weight_decay=WEIGHT_DECAY, max_grad_norm=CLIP_NORM, optim="adamw_torch",
            save_strategy="no", eval_strategy="no", report_to=[], logging_steps=10**9,
            dataloader_num_workers=0, use_cpu=True, seed=SEED, disable_tqdm=True)
        trainer = Trainer(model=model, args=targs, train_dataset=dataset,
                          data_collator=collator)
        start = time.perf_counter()
        out = trainer.train()
        seconds = time.perf_counter() - start
        if len(results) == 0 and steps == 2 and not getattr(pytorch_worker, "warm", False):
            pytorch_worker.warm = True
            continue
        results.append({"steps": steps, "seconds": seconds, "loss": out.training_loss,
                        "global_step": out.global_step})
    print(json.dumps({"runs": results, "threads": torch.get_num_threads(),
                      "attention": model.config._attn_implementation}), flush=True)
    return 0


def run_pytorch(model, train, steps_list, tmp, stem):
    spec = tmp / f"{stem}.json"
    spec.write_text(json.dumps({"model": str(model), "train": str(train), "steps": steps_list,
                                "out": str(tmp / stem)}))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--pytorch-worker", str(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RunError(f"`{' '.join(cmd)}` exited {proc.returncode}:\n"
                       f"{(proc.stderr or proc.stdout)[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    for r in res["runs"]:
        if r["global_step"] != r["steps"]:
            raise RunError(f"PyTorch ran {r['global_step']} steps, not {r['steps']}")
    return res


# ---------------------------------------------------------------------------------------------
# Reporting


def fmt(x, spec=".1f"):
    return "—" if x is None else format(x, spec)


def main():
    args = parse_args()
    load = os.getloadavg()
    check_versions(PINNED, SETUP_HINT)
    if not args.kiln.exists():
        raise SetupError(f"no kiln binary at {args.kiln}; run `cargo build --release`")
    for f in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (args.model / f).exists():
            raise SetupError(f"missing {args.model / f}; run scripts/get-minilm.sh "
                             "or pass --model")
    source = args.data / "sst2" / "train.jsonl"
    labels = args.data / "sst2" / "labels.json"
    for path in (source, labels):
        if not path.exists():
            raise SetupError(f"missing {path}; pass --data with the shared data folder")

    n = args.steps * BATCH
    tmp_dir = tempfile.TemporaryDirectory(prefix="kiln-finetune-bench-")
    tmp = Path(tmp_dir.name)
    train = tmp / "train.jsonl"
    with open(source) as src:
        lines = [l for _, l in zip(range(n), src)]
    if len(lines) < n:
        raise SetupError(f"{source} has only {len(lines)} lines, need {n}")
    train.write_text("".join(lines))

    print(f"finetune_bench{' (QUICK smoke test)' if args.quick else ''}: {args.model.name}, SST-2 "
          f"first {n} sentences, batch {BATCH}, max length {MAX_LENGTH}, {THREADS} threads per side")
    print(f"torch {version('torch')}, transformers {version('transformers')}; cpu: {cpu_model()}, "
          f"{os.cpu_count()} logical CPUs; load average before start {load[0]:.2f}")
    print(f"runs of {args.short_steps} and {args.steps} steps; examples/s = "
          f"{args.steps - args.short_steps} x {BATCH} / (t_long - t_short)")
    print("kiln command: " + " ".join(
        kiln_command(args.kiln, args.model, "SUBSET.jsonl", labels, "S", "OUT")))

    rounds = []
    failures = []
    other = OtherLoad()
    try:
        for r in range(1, args.rounds + 1):
            other.start()
            ks = run_kiln(args.kiln, args.model, train, labels, args.short_steps, tmp, f"k{r}s")
            kl = run_kiln(args.kiln, args.model, train, labels, args.steps, tmp, f"k{r}l")
            pt = run_pytorch(args.model, train, [args.short_steps, args.steps], tmp, f"p{r}")
            share = other.share()
            ps, pl = pt["runs"]
            extra = (args.steps - args.short_steps) * BATCH
            rec = {
                "round": r, "other_processes_cpu_share": share,
                "kiln": {"t_short": ks["seconds"], "t_long": kl["seconds"],
                         "loss_short": ks["loss"], "loss_long": kl["loss"],
                         "examples_per_s": extra / (kl["seconds"] - ks["seconds"]),
                         "simple_examples_per_s": args.steps * BATCH / kl["seconds"]},
                "pytorch": {"t_short": ps["seconds"], "t_long": pl["seconds"],
                            "loss_short": ps["loss"], "loss_long": pl["loss"],
                            "examples_per_s": extra / (pl["seconds"] - ps["seconds"]),
                            "simple_examples_per_s": args.steps * BATCH / pl["seconds"],
                            "attention": pt["attention"], "threads": pt["threads"]},
            }
            rounds.append(rec)
            for side in ("kiln", "pytorch"):
                s = rec[side]
                print(f"round {r} {side:8s}: t({args.short_steps})={s['t_short']:.2f} s  "
                      f"t({args.steps})={s['t_long']:.2f} s  -> {s['examples_per_s']:.1f} ex/s "
                      f"(simple {s['simple_examples_per_s']:.1f}); train loss "
                      f"{fmt(s['loss_long'], '.4f')}", flush=True)
                if s["loss_long"] is None or not math.isfinite(s["loss_long"]):
                    failures.append(f"round {r}: {side} loss not finite: {s['loss_long']}")
            if share is not None:
                print(f"round {r}: other processes used {share:.0%} of the CPUs", flush=True)
    except RunError as e:
        failures.append(str(e))

    med = {}
    for side in ("kiln", "pytorch"):
        vals = [rd[side]["examples_per_s"] for rd in rounds]
        simple = [rd[side]["simple_examples_per_s"] for rd in rounds]
        med[side] = {"examples_per_s": statistics.median(vals) if vals else None,
                     "simple_examples_per_s": statistics.median(simple) if simple else None,
                     "min": min(vals) if vals else None, "max": max(vals) if vals else None}
    k, p = med["kiln"]["examples_per_s"], med["pytorch"]["examples_per_s"]
    ratio = k / p if k and p else None
    ks, ps = med["kiln"]["simple_examples_per_s"], med["pytorch"]["simple_examples_per_s"]
    simple_ratio = ks / ps if ks and ps else None

    print(f"\n== summary{' (QUICK smoke test: not a result)' if args.quick else ''}: medians over "
          f"{len(rounds)} alternating rounds; examples/s from the {args.short_steps}/{args.steps}-step "
          "run difference")
    print("| workload | Kiln ex/s | PyTorch ex/s | Kiln/PyTorch (goal) | Kiln simple ex/s | "
          "PyTorch simple ex/s | simple ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| MiniLM-L6 SST-2 classify, {BATCH} x ≤{MAX_LENGTH} | {fmt(k)} | {fmt(p)} | "
          f"{goal_text(ratio, SPEED_GOAL)} | {fmt(ks)} | {fmt(ps)} | {fmt(simple_ratio, '.2f')} |")
    print(f"\ngoal: Kiln/PyTorch examples/s ≥ {SPEED_GOAL}. 'simple' = {args.steps} x {BATCH} / "
          "t_long: Kiln's whole process vs PyTorch's trainer.train(), fixed costs included")
    noisy = [rd["round"] for rd in rounds
             if rd["other_processes_cpu_share"] is not None
             and rd["other_processes_cpu_share"] >= BUSY_SHARE]
    if noisy:
        print(f"\nwarning: other processes used >= {BUSY_SHARE:.0%} of the CPUs in rounds {noisy}; "
              "rerun on an idle machine")

    if args.json:
        args.json.write_text(json.dumps({
            "model": str(args.model), "examples": n, "batch_size": BATCH,
            "max_length": MAX_LENGTH, "threads": THREADS, "steps": args.steps,
            "short_steps": args.short_steps, "quick": args.quick,
            "versions": {k2: version(k2) for k2 in PINNED}, "cpu": cpu_model(),
            "load_average_before": load, "rounds": rounds, "median": med,
            "ratio_kiln_pytorch": ratio, "simple_ratio_kiln_pytorch": simple_ratio,
            "speed_goal": SPEED_GOAL, "speed_goal_met": None if ratio is None else ratio >= SPEED_GOAL,
            "kiln_command": kiln_command(args.kiln, args.model, "SUBSET.jsonl", labels, "S", "OUT"),
            "failures": failures,
        }, indent=2) + "\n")
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
        print(f"finetune_bench: {e}", file=sys.stderr)
        sys.exit(2)
