#!/usr/bin/env python3
"""Estimated scaling of Kiln's data-parallel pre-training over N machines (docs/distributed.md).

Reads the newest BERT-mini row of bench/results/distributed.jsonl (measured by
mpi_overhead.sh on this 2-core machine) and models N such machines, one rank each, training
BERT-mini and a BERT-base-sized model with masked LM at 2,048 tokens per machine and step
(16 sequences of 128), over 10 and 100 Gbit/s links.

The model, and its assumptions:
- Compute per step on one machine, T_c = 2048 tokens / R. R for BERT-mini is the measured
  one-process, two-thread rate. For BERT-base it is scaled by the training FLOPs per token:
  6 x (multiply-adds per token of the blocks' matrices, attention over 128 positions, and the
  MLM head at the 15 % masked positions). This assumes the kernels reach the same FLOP rate on
  the bigger matrices; they reach more, so T_c for base is if anything overestimated and the
  efficiency underestimated.
- The gradients, S = 4 bytes x trained values, are summed by a ring allreduce (Open MPI's
  choice for large messages). Each machine sends and receives 2 (N-1)/N x S bytes at 90 % of the
  link rate. Each of the 2 (N-1) ring steps of each 16 MB bucket also pays a latency of 30 us
  (TCP on a LAN).
- Kiln sums after the backward pass (no overlap), so a step takes T_c + t_allreduce, and the
  efficiency is E = T_c / (T_c + t_allreduce). The speed-up over one machine is N x E.
  The "overlap" column is the bound if the sum were fully hidden behind the backward pass
  (about 2/3 of T_c): E = T_c / max(T_c, t_allreduce + T_c / 3).

    python3 bench/distributed/scaling.py [RESULTS_JSONL]
"""

import json
import sys

MODELS = {
    # layers, hidden, ffn, vocabulary, trained values (as kiln init makes them)
    "BERT-mini (8k vocab)": dict(L=4, H=256, F=1024, V=8000),
    "BERT-base (30k vocab)": dict(L=12, H=768, F=3072, V=30522),
}
SEQ, TOKENS, MASKED = 128, 16 * 128, 0.15
BUCKET = 16e6
LATENCY = 30e-6
EFFICIENCY_OF_LINK = 0.9


def params(L, H, F, V):
    emb = V * H + 512 * H + 2 * H + 2 * H
    block = 4 * H * H + 4 * H + 2 * H * F + H + F + 4 * H
    head = H * H + H + 2 * H + V
    return emb + L * block + head


def macs_per_token(L, H, F, V):
    blocks = L * (4 * H * H + 2 * H * F + 2 * SEQ * H)
    head = MASKED * (H * H + V * H)
    return blocks + head


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "bench/results/distributed.jsonl"
    rows = [json.loads(l) for l in open(path) if l.strip()]
    mini = [r for r in rows if r.get("bench") == "mpi_overhead" and "BERT" in r["model"]][-1]
    rate_mini = mini["one_process_2_threads_tokens_per_s"]
    print(
        f"measured on one machine (commit {mini['commit']}): BERT-mini {rate_mini} tokens/s with "
        f"1 process x 2 threads, {mini['two_ranks_1_thread_tokens_per_s']} with 2 ranks x 1 thread "
        f"({mini['ratio']:.2f}x); {mini['allreduce_mb_per_step']:.1f} MB summed per step in "
        f"{mini['allreduce_ms_per_step']:.1f} ms (shared memory)\n"
    )
    base_macs = macs_per_token(**MODELS["BERT-mini (8k vocab)"])
    print("| model | MB/step | T_c (s) | link | " + " | ".join(f"N={n}" for n in NS) + " | N=64 overlap |")
    print("|---|---:|---:|---|" + "---:|" * (len(NS) + 1))
    for name, dims in MODELS.items():
        size = params(**dims) * 4
        if "mini" in name:
            size = mini["allreduce_mb_per_step"] * 1e6
        rate = rate_mini * base_macs / macs_per_token(**dims)
        t_c = TOKENS / rate
        for gbit in (10, 100):
            beta = gbit * 1e9 / 8 * EFFICIENCY_OF_LINK
            def allreduce(n):
                steps = 2 * (n - 1)
                return steps / n * size / beta + steps * LATENCY * max(1, size / BUCKET)

            cells = []
            for n in NS:
                e = t_c / (t_c + allreduce(n))
                cells.append(f"{100 * e:.0f} % ({n * e:.1f}x)")
            cells.append(f"{100 * t_c / max(t_c, allreduce(64) + t_c / 3):.0f} %")
            print(f"| {name} | {size / 1e6:.0f} | {t_c:.2f} | {gbit} Gbit/s | " + " | ".join(cells) + " |")


NS = [2, 4, 8, 16, 64]

if __name__ == "__main__":
    main()
