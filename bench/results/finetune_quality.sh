#!/usr/bin/env bash
# Fine-tuning quality on real data (validation splits), and the thesis of pre-training measured:
# the same fine-tuning from a pretrained checkpoint and from a random initialization of the
# same shape. Usage (from the repository root, after `cargo build --release`):
#
#   bench/results/finetune_quality.sh RUN [RUN...]      RUN = sst2-minilm | sst2-kiln-pt |
#                                                          sst2-kiln-random | rte-minilm | ner-minilm |
#                                                          squad-minilm (SQUAD_N questions, default 12000) |
#                                                          chnsenticorp-minilm | pos-minilm
#
# PRETRAINED (default bench/results/runs/bert-mini-gutenberg) is the BERT-mini Kiln pre-trained
# (see bench/results/README.md); its random init is re-made with the same seed and tokenizer.
# Each run writes OUT=bench/results/runs/<name>/ (model, metrics.jsonl) and appends one JSON
# line with its final validation metrics to bench/results/finetune.jsonl.
set -euo pipefail
KILN=${KILN:-target/release/kiln}
D=${DATA:-../shared/data}
RUNS=${RUNS:-bench/results/runs}
PRETRAINED=${PRETRAINED:-$RUNS/bert-mini-gutenberg}
THREADS=${THREADS:-2}
mkdir -p "$RUNS"

record() { # name task data
  local m
  m=$("$KILN" eval --model "$RUNS/$1" --task "$2" --data "$3" --json ${4:-} --threads "$THREADS")
  echo "{\"run\": \"$1\", \"metrics\": $m}" | tee -a bench/results/finetune.jsonl
}

sst2() { # name model lr epochs
  "$KILN" finetune --model "$2" --task classify --train $D/sst2/train.jsonl \
    --valid $D/sst2/validation.jsonl --labels $D/sst2/labels.json --lr "$3" --epochs "$4" \
    --batch-size 32 --warmup-steps 200 --eval-every 500 --save-every 1000 --max-length 66 \
    --threads "$THREADS" --out "$RUNS/$1"
  record "$1" classify $D/sst2/validation.jsonl
}

for run in "$@"; do
  case $run in
    sst2-minilm) sst2 sst2-minilm "$("${GET_MINILM:-../shared/models/get-minilm.sh}")" 5e-5 1 ;;
    sst2-kiln-pt) sst2 sst2-kiln-pt "$PRETRAINED" 1e-4 1 ;;
    sst2-kiln-random)
      rm -rf "$RUNS/bert-mini-random"
      "$KILN" init --arch bert --size mini --tokenizer "$PRETRAINED" --out "$RUNS/bert-mini-random"
      sst2 sst2-kiln-random "$RUNS/bert-mini-random" 1e-4 1 ;;
    rte-minilm)
      "$KILN" finetune --model "$("${GET_MINILM:-../shared/models/get-minilm.sh}")" --task classify \
        --train $D/rte/train.jsonl --valid $D/rte/validation.jsonl --labels $D/rte/labels.json \
        --lr 3e-5 --epochs 5 --batch-size 16 --warmup-steps 50 --eval-every 100 --max-length 256 \
        --threads "$THREADS" --out "$RUNS/rte-minilm"
      record rte-minilm classify $D/rte/validation.jsonl "--max-length 256" ;;
    ner-minilm)
      "$KILN" finetune --model "$("${GET_MINILM:-../shared/models/get-minilm.sh}")" --task tag \
        --tag-field ner --labels $D/conll2003/labels.json --train $D/conll2003/train.jsonl \
        --valid $D/conll2003/validation.jsonl --lr 1e-4 --epochs 3 --batch-size 32 \
        --warmup-steps 200 --eval-every 500 --threads "$THREADS" --out "$RUNS/ner-minilm"
      record ner-minilm tag $D/conll2003/validation.jsonl "--tag-field ner" ;;
    squad-minilm)
      # A seeded sample of SQUAD_N training questions (all 82,668 take hours on two cores).
      N=${SQUAD_N:-12000}
      python3 - "$D/squad_v1.1/train.jsonl.gz" "$RUNS/squad-train-$N.jsonl" "$N" <<'EOF'
import gzip, random, sys
lines = gzip.open(sys.argv[1], "rt").read().splitlines()
random.Random(7).shuffle(lines)
open(sys.argv[2], "w").write("\n".join(lines[: int(sys.argv[3])]) + "\n")
EOF
      "$KILN" finetune --model "$("${GET_MINILM:-../shared/models/get-minilm.sh}")" --task qa \
        --train "$RUNS/squad-train-$N.jsonl" --lr 1e-4 --epochs 1 --batch-size 16 \
        --warmup-steps 100 --max-length 384 --doc-stride 128 --threads "$THREADS" \
        --out "$RUNS/squad-minilm"
      record squad-minilm qa $D/squad_v1.1/validation.jsonl.gz ;;
    chnsenticorp-minilm)
      "$KILN" finetune --model "$("${GET_MINILM:-../shared/models/get-minilm.sh}")" --task classify \
        --train $D/chnsenticorp/train.jsonl --valid $D/chnsenticorp/validation.jsonl \
        --labels $D/chnsenticorp/labels.json --lr 5e-5 --epochs 1 --batch-size 32 \
        --warmup-steps 30 --eval-every 0 --max-length 128 --threads "$THREADS" \
        --out "$RUNS/chnsenticorp-minilm"
      record chnsenticorp-minilm classify $D/chnsenticorp/validation.jsonl ;;
    pos-minilm)
      "$KILN" finetune --model "$("${GET_MINILM:-../shared/models/get-minilm.sh}")" --task tag \
        --tag-field pos --labels $D/conll2003/labels.json --train $D/conll2003/train.jsonl \
        --valid $D/conll2003/validation.jsonl --lr 1e-4 --epochs 1 --batch-size 32 \
        --warmup-steps 50 --eval-every 0 --threads "$THREADS" --out "$RUNS/pos-minilm"
      record pos-minilm tag $D/conll2003/validation.jsonl "--tag-field pos" ;;
    *) echo "unknown run $run" >&2; exit 2 ;;
  esac
done
