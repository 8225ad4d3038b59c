#!/usr/bin/env bash
# Task-agnostic distillation on en_gutenberg (`kiln distill --task mlm`, as DistilBERT was
# trained): a Kiln BERT-mini (4 layers, 256 wide) pre-trained with masked LM is the teacher;
# a 3-layer student cut from it (--student-layers 0,1,3) learns from the teacher's vocabulary
# distributions at the masked positions (+ the masked tokens), against the same cut student
# pre-trained on masked LM alone for the same steps. Prints both runs' held-out MLM loss,
# perplexity and accuracy, appends them to bench/results/compress.jsonl and draws the loss
# curves of the three runs into bench/results/distill_mlm.png.
#
#   bench/compress/distill_mlm.sh [TEACHER_STEPS] [STUDENT_STEPS] [THREADS]
#
# Defaults: 1500 teacher steps, 1000 student steps of 16 x 128 tokens (about 45 min in all on
# 2 cores). TEACHER=dir uses a masked-LM model you have (its tokenizer is the student's).
set -euo pipefail
cd "$(dirname "$0")/../.."
TSTEPS=${1:-1500}
STEPS=${2:-1000}
THREADS=${3:-2}
K=${KILN:-$PWD/target/release/kiln}
D=${DATA:-$(cd ../shared/data && pwd)}
W=${WORK:-$HOME/.cache/kiln-bench/distill-mlm}
OUT=${RESULTS:-bench/results/compress.jsonl}
G=$D/corpora/en_gutenberg
mkdir -p "$W"
COMMON=(--train $G/train.jsonl.gz --valid $G/validation.jsonl.gz --max-length 128 --batch-size 16
  --eval-every 250 --threads "$THREADS" --overwrite)
T=${TEACHER:-$W/teacher}
if [ ! -f "$T/model.safetensors" ]; then
  [ -f "$W/tok/tokenizer.json" ] || $K tokenizer train --corpus $G/validation.jsonl.gz \
    --kind wordpiece --vocab-size 8000 --lowercase --out "$W/tok"
  [ -f "$W/bert-mini/config.json" ] || $K init --arch bert --size mini --tokenizer "$W/tok" --out "$W/bert-mini"
  $K pretrain --model "$W/bert-mini" --out "$T" --objective mlm --corpus $G/train.jsonl.gz \
    --valid $G/validation.jsonl.gz --seq-len 128 --batch-size 16 --lr 5e-4 --warmup-steps 100 \
    --max-steps "$TSTEPS" --eval-every 250 --threads "$THREADS" --overwrite
fi
$K distill --teacher "$T" --student-layers 0,1,3 --task mlm "${COMMON[@]}" --max-steps "$STEPS" \
  --lr 5e-4 --warmup-steps 100 --alpha-kd 0.5 --alpha-ce 0.5 --temperature 2 --out "$W/kd"
$K distill --teacher "$T" --student-layers 0,1,3 --task mlm "${COMMON[@]}" --max-steps "$STEPS" \
  --lr 5e-4 --warmup-steps 100 --alpha-kd 0 --alpha-ce 1 --out "$W/ce"
$K plot "$T/metrics.jsonl" "$W/kd/metrics.jsonl" "$W/ce/metrics.jsonl" \
  --title "MLM on en_gutenberg: teacher (4L), distilled 3L, MLM-only 3L" --output bench/results/distill_mlm.png
python3 - "$T" "$W/kd" "$W/ce" "$STEPS" "$(git rev-parse --short HEAD)" >> "$OUT" <<'PY'
import json, sys, datetime
names = ["teacher BERT-mini (4 layers)", "distilled 3L", "MLM-only 3L"]
for name, d in zip(names, sys.argv[1:4]):
    rows = [json.loads(l) for l in open(f"{d}/metrics.jsonl")]
    last = [r for r in rows if "valid_loss" in r][-1]
    print(json.dumps({"bench": "distill_mlm", "method": name, "step": last["step"],
        "valid_loss": last["valid_loss"], "perplexity": last.get("perplexity"),
        "mlm_accuracy": last.get("mlm_accuracy"), "student_steps": int(sys.argv[4]),
        "date": datetime.datetime.utcnow().strftime("%Y-%m-%dT%H:%M:%SZ"), "commit": sys.argv[5]}))
PY
tail -n 3 "$OUT"
