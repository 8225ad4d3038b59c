#!/usr/bin/env bash
# Distillation on CoNLL-2003 NER: a 3-layer student cut from an all-MiniLM-L6-v2 tagger
# (--student-layers 0,2,4) trained on the teacher's per-token tag distributions + gold tags,
# against the same student trained on gold tags alone and against the teacher: validation
# entity F1 (seqeval-style), parameters, size and `kiln predict` sentences/s, measured in one
# run. Appends one JSON line per model to bench/results/compress.jsonl and prints the table.
#
#   bench/compress/distill_ner.sh [EPOCHS] [THREADS]
#
# MEASURE_ONLY=1 measures a previous run's models. TEACHER=dir uses a tagger you have;
# otherwise one is fine-tuned first (EPOCHS epochs, lr 5e-5). Students: EPOCHS epochs, lr 1e-4.
# About 40 min on 2 cores with the default 2 epochs. Needs `cargo build --release` and
# scripts/get-minilm.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
EPOCHS=${1:-2}
THREADS=${2:-2}
K=${KILN:-$PWD/target/release/kiln}
D=${DATA:-$(cd ../shared/data && pwd)}
W=${WORK:-$HOME/.cache/kiln-bench/distill-ner}
M=${MINILM:-$HOME/.cache/kiln-models/all-MiniLM-L6-v2}
OUT=${RESULTS:-bench/results/compress.jsonl}
C=$D/conll2003
mkdir -p "$W"
T=${TEACHER:-$W/teacher}
if [ ! -f "$T/model.safetensors" ]; then
  $K finetune --model "$M" --task tag --tag-field ner --train $C/train.jsonl --valid $C/validation.jsonl \
    --labels $C/labels.json --epochs "$EPOCHS" --lr 5e-5 --batch-size 32 --eval-every 200 \
    --threads "$THREADS" --out "$T" --overwrite
fi
student() { # out extra-flags...
  local out=$1
  shift
  if [ -n "${MEASURE_ONLY:-}" ]; then return; fi
  $K distill --teacher "$T" --student-layers 0,2,4 --task tag --tag-field ner --train $C/train.jsonl \
    --valid $C/validation.jsonl --epochs "$EPOCHS" --lr 1e-4 --batch-size 32 \
    --eval-every 200 --threads "$THREADS" --overwrite --out "$W/$out" "$@"
}
student kd --alpha-kd 0.5 --alpha-ce 0.5 --temperature 2
student ce --alpha-kd 0 --alpha-ce 1

BENCH=distill_ner
STEPS=$EPOCHS
RUN="distill_ner $(date -u +%FT%TZ)"
TASK_DATA=$C METRIC=f1 EVAL_FLAGS="--tag-field ner"
source bench/compress/measure.sh
{
  measure "teacher (6 layers)" "$T" all
  measure "distilled 3L" "$W/kd" all
  measure "labels-only 3L" "$W/ce" all
} > "$W/rows.jsonl"
cat "$W/rows.jsonl" >> "$OUT"
python3 - "$W/rows.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
t = rows[0]
print(f"{'model':<22}{'F1':>8}{'% teacher':>11}{'params':>12}{'MB':>7}{'sent/s':>9}{'speed-up':>10}")
for r in rows:
    print(f"{r['method']:<22}{r['f1']:>8.2f}{100*r['f1']/t['f1']:>11.1f}{r['parameters']:>12,}"
          f"{r['bytes']/1e6:>7.1f}{r['sentences_per_s']:>9.1f}{r['sentences_per_s']/t['sentences_per_s']:>9.2f}x")
PY
