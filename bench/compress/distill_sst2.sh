#!/usr/bin/env bash
# Distillation on SST-2: 3-layer students cut from a fine-tuned all-MiniLM-L6-v2 teacher
# (--student-layers 0,2,4; embeddings, those blocks and the head copied), against the same
# student trained on gold labels alone and against the teacher, with all labels and with only
# LABELLED of them (+ the rest of the training texts as --unlabeled for the distilled one):
# validation accuracy, parameters, size on disk and `kiln predict` sentences/s, measured in one
# run. Appends one JSON line per model to bench/results/compress.jsonl and prints the table.
#
#   bench/compress/distill_sst2.sh [STEPS] [THREADS] [LABELLED]
#
# MEASURE_ONLY=1 measures the models a previous run left in $W without training them again.
# TEACHER=dir uses a teacher you have; otherwise one is fine-tuned first (one epoch of SST-2,
# 2,105 steps of 32, about 17 min on 2 cores). Needs `cargo build --release` and
# scripts/get-minilm.sh. Students: STEPS (1000) steps of 32, lr 1e-4, about 8 min each.
set -euo pipefail
cd "$(dirname "$0")/../.."
STEPS=${1:-1000}
THREADS=${2:-2}
LABELLED=${3:-2000}
K=${KILN:-$PWD/target/release/kiln}
D=${DATA:-$(cd ../shared/data && pwd)}
W=${WORK:-$HOME/.cache/kiln-bench/distill}
M=${MINILM:-$HOME/.cache/kiln-models/all-MiniLM-L6-v2}
OUT=${RESULTS:-bench/results/compress.jsonl}
mkdir -p "$W"
T=${TEACHER:-$W/teacher}
if [ ! -f "$T/model.safetensors" ]; then
  $K finetune --model "$M" --task classify --train $D/sst2/train.jsonl --valid $D/sst2/validation.jsonl \
    --labels $D/sst2/labels.json --epochs 1 --lr 5e-5 --batch-size 32 --eval-every 700 \
    --threads "$THREADS" --out "$T" --overwrite
fi
head -n "$LABELLED" $D/sst2/train.jsonl > "$W/labelled.jsonl"
tail -n +"$((LABELLED + 1))" $D/sst2/train.jsonl | python3 -c '
import json, sys
for l in sys.stdin:
    print(json.dumps({"text": json.loads(l)["text"]}))' > "$W/unlabelled.jsonl"
UNLABELLED=$(wc -l < "$W/unlabelled.jsonl")
student() { # out train extra-flags...
  local out=$1 train=$2
  shift 2
  # MEASURE_ONLY=1: measure the models a previous run trained (e.g. on a quiet machine).
  if [ -n "${MEASURE_ONLY:-}" ]; then return; fi
  $K distill --teacher "$T" --student-layers 0,2,4 --task classify --train "$train" \
    --valid $D/sst2/validation.jsonl --max-steps "$STEPS" --lr 1e-4 --batch-size 32 \
    --eval-every 250 --threads "$THREADS" --overwrite --out "$W/$out" "$@"
}
student kd $D/sst2/train.jsonl --alpha-kd 0.5 --alpha-ce 0.5 --temperature 2
student ce $D/sst2/train.jsonl --alpha-kd 0 --alpha-ce 1
student ce-few "$W/labelled.jsonl" --alpha-kd 0 --alpha-ce 1
student kd-few-unlabelled "$W/labelled.jsonl" --alpha-kd 0.5 --alpha-ce 0.5 --temperature 2 \
  --unlabeled "$W/unlabelled.jsonl" --unlabeled-ratio "$(python3 -c "print($UNLABELLED / $LABELLED)")"

BENCH=distill_sst2
RUN="distill_sst2 $(date -u +%FT%TZ)"
source bench/compress/measure.sh
{
  measure "teacher (6 layers)" "$T" all
  measure "distilled 3L" "$W/kd" all
  measure "labels-only 3L" "$W/ce" all
  measure "labels-only 3L" "$W/ce-few" "$LABELLED"
  measure "distilled 3L + unlabelled" "$W/kd-few-unlabelled" "$LABELLED + $UNLABELLED unlabelled"
} > "$W/rows.jsonl"
cat "$W/rows.jsonl" >> "$OUT"
python3 - "$W/rows.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
t = rows[0]
print(f"{'model':<27}{'labels':>24}{'accuracy':>10}{'% teacher':>11}{'params':>12}{'MB':>7}{'sent/s':>9}{'speed-up':>10}")
for r in rows:
    print(f"{r['method']:<27}{r['labels']:>24}{r['accuracy']:>10.2f}{100*r['accuracy']/t['accuracy']:>11.1f}"
          f"{r['parameters']:>12,}{r['bytes']/1e6:>7.1f}{r['sentences_per_s']:>9.1f}"
          f"{r['sentences_per_s']/t['sentences_per_s']:>9.2f}x")
PY
