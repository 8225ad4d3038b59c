#!/usr/bin/env bash
# What MPI costs on one machine: 2 ranks × 1 thread against 1 process × 2 threads, at the same
# global batch (2 × 8 against 16 sequences of 128 tokens), for BERT-mini masked LM and GPT-2 mini
# next-token pre-training on en_gutenberg. Rounds alternate the two ways so drift in the machine
# hits both. Reports tokens/s (median over the logged steps after the first log line), the
# gradient bytes summed per step and the allreduce time per step (the 2-rank run's
# `allreduce_mb` / `allreduce_ms` metrics, and `rank_wait_ms`, the wait for the slower rank
# before it), and appends one JSON line per model to
# bench/results/distributed.jsonl. docs/distributed.md turns these into a scaling estimate.
#
#   bench/distributed/mpi_overhead.sh [STEPS] [ROUNDS]      (defaults: 60 steps, 3 rounds)
#
# Needs the kiln binary built with the mpi feature: cargo build --release --features mpi
set -euo pipefail
cd "$(dirname "$0")/../.."
STEPS=${1:-60}
ROUNDS=${2:-3}
K=${KILN:-$PWD/target/release/kiln}
D=${DATA:-$(cd ../shared/data && pwd)}
G=$D/corpora/en_gutenberg
W=${WORK:-$HOME/.cache/kiln-bench/mpi}
OUT=${RESULTS:-bench/results/distributed.jsonl}
MPIRUN=(mpirun --allow-run-as-root --oversubscribe --bind-to none --mca btl self,vader -np 2)
mkdir -p "$W"
[ -f "$W/wordpiece/tokenizer.json" ] || $K tokenizer train --corpus $G/validation.jsonl.gz \
  --kind wordpiece --vocab-size 8000 --lowercase --out "$W/wordpiece" > /dev/null
[ -f "$W/bpe/tokenizer.json" ] || $K tokenizer train --corpus $G/validation.jsonl.gz \
  --kind bpe --vocab-size 8000 --out "$W/bpe" > /dev/null
[ -f "$W/bert/config.json" ] || $K init --arch bert --size mini --tokenizer "$W/wordpiece" \
  --out "$W/bert" > /dev/null
[ -f "$W/gpt/config.json" ] || $K init --arch gpt2 --size mini --tokenizer "$W/bpe" \
  --out "$W/gpt" > /dev/null

run() { # model objective ranks out
  local flags=(pretrain --model "$W/$1" --objective "$2" --corpus $G/train.jsonl.gz --seq-len 128
    --lr 5e-4 --warmup-steps 10 --max-steps "$STEPS" --log-every 5 --save-every 0
    --save-minutes 0 --overwrite --out "$4")
  if [ "$3" = 1 ]; then
    $K "${flags[@]}" --batch-size 16 --threads 2 > /dev/null 2>&1
  else
    "${MPIRUN[@]}" $K "${flags[@]}" --batch-size 8 --threads 1 > /dev/null 2>&1
  fi
}

for m in "bert mlm" "gpt clm"; do
  set -- $m
  for r in $(seq "$ROUNDS"); do
    run "$1" "$2" 1 "$W/$1-one-$r"
    run "$1" "$2" 2 "$W/$1-two-$r"
  done
done

python3 - "$W" "$ROUNDS" "$STEPS" "$(git rev-parse --short HEAD)" "$OUT" <<'PY'
import json, statistics, sys, datetime
w, rounds, steps, commit, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
def rows(d):
    return [json.loads(l) for l in open(f"{d}/metrics.jsonl")][1:]
names = {"bert": "BERT-mini masked LM", "gpt": "GPT-2 mini next-token"}
print(f"{'model':<24}{'1 x 2 thr tok/s':>17}{'2 x 1 thr tok/s':>17}{'ratio':>8}{'MB/step':>9}{'allreduce ms':>14}{'share':>7}{'wait ms':>9}")
with open(out, "a") as f:
    for m in ["bert", "gpt"]:
        one = [statistics.median(r["tokens_per_s"] for r in rows(f"{w}/{m}-one-{i}")) for i in range(1, rounds + 1)]
        two_rows = [rows(f"{w}/{m}-two-{i}") for i in range(1, rounds + 1)]
        two = [statistics.median(r["tokens_per_s"] for r in rs) for rs in two_rows]
        ms = statistics.median(r["allreduce_ms"] for rs in two_rows for r in rs)
        wait = statistics.median(r["rank_wait_ms"] for rs in two_rows for r in rs)
        mb = two_rows[0][0]["allreduce_mb"]
        t1, t2 = statistics.median(one), statistics.median(two)
        # Share of a 2-rank step spent in the allreduce: tokens per step / rate = step time.
        step_s = 16 * 128 / t2
        share = ms / 1e3 / step_s
        print(f"{names[m]:<24}{t1:>17.0f}{t2:>17.0f}{t2 / t1:>8.2f}{mb:>9.1f}{ms:>14.1f}{100 * share:>6.1f}%{wait:>9.1f}")
        f.write(json.dumps({
            "bench": "mpi_overhead", "model": names[m], "steps": steps, "rounds": rounds,
            "global_batch": 16, "seq_len": 128,
            "one_process_2_threads_tokens_per_s": round(t1), "two_ranks_1_thread_tokens_per_s": round(t2),
            "ratio": round(t2 / t1, 3), "allreduce_mb_per_step": mb, "allreduce_ms_per_step": round(ms, 2),
            "allreduce_share_of_step": round(share, 4), "rank_wait_ms_per_step": round(wait, 2), "rounds_one": one, "rounds_two": two,
            "commit": commit, "date": datetime.date.today().isoformat(),
        }) + "\n")
PY
