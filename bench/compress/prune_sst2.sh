#!/usr/bin/env bash
# Structured pruning on SST-2, and the whole pipeline: the fine-tuned all-MiniLM-L6-v2 teacher
# with half its attention heads and half its feed-forward neurons removed (importance from data,
# and from weight magnitudes beside it), each recovered by fine-tuning; then distilled 3-layer
# student -> pruned -> recovered -> int8 quantized. Validation accuracy, parameters, size and
# `kiln predict` sentences/s of each, the teacher measured in the same run. Appends to
# bench/results/compress.jsonl and prints the rows.
#
#   bench/compress/prune_sst2.sh [STEPS] [THREADS]
#
# Run bench/compress/distill_sst2.sh first (it makes the teacher and the distilled student in
# $W). Recovery: STEPS (1000) steps of 32 at lr 5e-5, about 8 min each on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
STEPS=${1:-1000}
THREADS=${2:-2}
K=${KILN:-$PWD/target/release/kiln}
D=${DATA:-$(cd ../shared/data && pwd)}
W=${WORK:-$HOME/.cache/kiln-bench/distill}
OUT=${RESULTS:-bench/results/compress.jsonl}
T=${TEACHER:-$W/teacher}
BENCH=prune_sst2
RUN="prune_sst2 $(date -u +%FT%TZ)"
source bench/compress/measure.sh
recover() { # in out
  $K finetune --model "$1" --task classify --train $D/sst2/train.jsonl --valid $D/sst2/validation.jsonl \
    --max-steps "$STEPS" --lr 5e-5 --batch-size 32 --eval-every 250 --threads "$THREADS" \
    --overwrite --out "$2"
}
imp=(--data $D/sst2/train.jsonl --data-examples 2048)
$K prune --model "$T" --out "$W/p50" --heads 0.5 --ffn 0.5 "${imp[@]}"
$K prune --model "$T" --out "$W/p50-mag" --heads 0.5 --ffn 0.5 --importance magnitude
recover "$W/p50" "$W/p50-rec"
recover "$W/p50-mag" "$W/p50-mag-rec"
# The pipeline: distilled student -> prune -> recover -> int8.
$K prune --model "$W/kd" --out "$W/kd-p50" --heads 0.5 --ffn 0.5 "${imp[@]}"
recover "$W/kd-p50" "$W/kd-p50-rec"
$K quantize --model "$W/kd-p50-rec" --out "$W/kd-p50-int8" --calibration $D/sst2/train.jsonl
$K quantize --model "$T" --out "$W/teacher-int8" --calibration $D/sst2/train.jsonl
{
  measure "teacher (6 layers)" "$T" all
  measure "pruned 50% heads+FFN, no recovery" "$W/p50" all
  measure "pruned 50% heads+FFN (data)" "$W/p50-rec" all
  measure "pruned 50% heads+FFN (magnitude)" "$W/p50-mag-rec" all
  measure "teacher int8" "$W/teacher-int8" all
  measure "distilled 3L, pruned 50%" "$W/kd-p50-rec" all
  measure "distilled 3L, pruned 50%, int8" "$W/kd-p50-int8" all
} | tee -a "$OUT"
