#!/usr/bin/env bash
# Unstructured pruning on SST-2: all-MiniLM-L6-v2 fine-tuned with `--prune-to` S (the blocks'
# linear weights, cubic schedule to two thirds of the run), magnitude vs movement, against the
# dense teacher: validation accuracy and `kiln predict` sentences/s (Kiln's kernels are dense:
# zeros cost as much as other values, which the speed column shows). Appends to
# bench/results/compress.jsonl.
#
#   bench/compress/sparse_sst2.sh [STEPS] [THREADS] [SPARSITIES] [METHODS]
#
# Defaults: 1000 steps of 32 at lr 5e-5 (about 8 min a run on 2 cores), sparsities "0.5 0.8
# 0.9", methods "magnitude movement". The teacher: TEACHER, or bench/compress/distill_sst2.sh's.
set -euo pipefail
cd "$(dirname "$0")/../.."
STEPS=${1:-1000}
THREADS=${2:-2}
SPARSITIES=${3:-0.5 0.8 0.9}
METHODS=${4:-magnitude movement}
K=${KILN:-$PWD/target/release/kiln}
D=${DATA:-$(cd ../shared/data && pwd)}
W=${WORK:-$HOME/.cache/kiln-bench/distill}
M=${MINILM:-$HOME/.cache/kiln-models/all-MiniLM-L6-v2}
OUT=${RESULTS:-bench/results/compress.jsonl}
T=${TEACHER:-$W/teacher}
BENCH=sparse_sst2
RUN="sparse_sst2 $(date -u +%FT%TZ)"
source bench/compress/measure.sh
rows=()
for method in $METHODS; do
  for s in $SPARSITIES; do
    $K finetune --model "$M" --task classify --train $D/sst2/train.jsonl --valid $D/sst2/validation.jsonl \
      --labels $D/sst2/labels.json --max-steps "$STEPS" --lr 5e-5 --batch-size 32 --eval-every 250 \
      --prune-to "$s" --prune-method "$method" --threads "$THREADS" --overwrite --out "$W/sparse-$method-$s"
    rows+=("$method $s")
  done
done
{
  measure "teacher (6 layers)" "$T" all
  for r in "${rows[@]}"; do
    set -- $r
    measure "$1 pruning to $2 sparsity" "$W/sparse-$1-$2" all
  done
} | tee -a "$OUT"
