#!/usr/bin/env bash
# Fine-tuning quality on real data (validation splits), and the thesis of pre-training measured:
# the same fine-tuning from a pretrained checkpoint and from a random initialization of the
# same shape. Usage (from the repository root, after `cargo build --release`):
#
#   bench/results/finetune_quality.sh RUN [RUN...]      RUN = sst2-minilm | rte-minilm | ner-minilm |
#       pos-minilm | chnsenticorp-minilm | chnsenticorp-minilm-ext |
#       squad-minilm (SQUAD_N questions, default 50000) | tatoeba-minilm | tatoeba-gpt |
#       tatoeba-gpt-random (the GPT's shape and tokenizer, random weights) |
#       the thesis of pre-training: {sst2,ner}-minilm-random (MiniLM's shape, random weights),
#       {sst2,ner}-kiln-pt and {sst2,ner}-kiln-random (Kiln's BERT-mini and its random init)
#
# PRETRAINED (default bench/results/runs/bert-mini-gutenberg) is the BERT-mini Kiln pre-trained
# (see bench/results/README.md); its random init is re-made with the same seed and tokenizer.
# GPT (default bench/results/runs/gpt-mini-en-zh) is the GPT Kiln pre-trained on English and
# Chinese.
# Each run writes OUT=bench/results/runs/<name>/ (model, metrics.jsonl) and appends one JSON
# line with its final validation metrics to bench/results/finetune.jsonl.
set -euo pipefail
KILN=${KILN:-target/release/kiln}
D=${DATA:-../shared/data}
RUNS=${RUNS:-bench/results/runs}
PRETRAINED=${PRETRAINED:-$RUNS/bert-mini-gutenberg}
GPT=${GPT:-$RUNS/gpt-mini-en-zh}
THREADS=${THREADS:-2}
minilm() { "${GET_MINILM:-scripts/get-minilm.sh}"; }
mkdir -p "$RUNS"

record() { # name task data
  local m
  m=$("$KILN" eval --model "$RUNS/$1" --task "$2" --data "$3" --json ${4:-} --threads "$THREADS")
  echo "{\"run\": \"$1\", \"metrics\": $m}" | tee -a bench/results/finetune.jsonl
}

ner() { # name model
  "$KILN" finetune --model "$2" --task tag \
    --tag-field ner --labels $D/conll2003/labels.json --train $D/conll2003/train.jsonl \
    --valid $D/conll2003/validation.jsonl --lr 1e-4 --epochs 3 --batch-size 32 \
    --warmup-steps 200 --eval-every 500 --threads "$THREADS" --overwrite --out "$RUNS/$1"
  record "$1" tag $D/conll2003/validation.jsonl "--tag-field ner"
}

# Random weights in a pretrained model's shape (transformers' init, seed 42) and tokenizer.
random_init() { # out model-dir
  [ -d "$1" ] && return
  local c="$2/config.json" arch=bert L=num_hidden_layers H=hidden_size A=num_attention_heads
  local I=intermediate_size P=max_position_embeddings
  field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$c" "$1"; }
  if [ "$(field model_type)" = gpt2 ]; then
    arch=gpt2 L=n_layer H=n_embd A=n_head I=n_inner P=n_positions
  fi
  "$KILN" init --arch $arch --tokenizer "$2" --out "$1" --seed 42 \
    --layers "$(field $L)" --hidden "$(field $H)" --heads "$(field $A)" \
    --intermediate "$(field $I)" --max-positions "$(field $P)"
}

tatoeba() { # name model lr epochs [flags]
  "$KILN" finetune --model "$2" --task seq2seq --train $D/tatoeba_cmn_eng/train.jsonl \
    --valid $D/tatoeba_cmn_eng/validation.jsonl --lr "$3" --epochs "$4" --batch-size 32 \
    --warmup-steps 200 --eval-every 0 --max-length 96 --max-target-length 48 \
    --threads "$THREADS" --overwrite --out "$RUNS/$1" ${5:-}
  record "$1" seq2seq $D/tatoeba_cmn_eng/validation.jsonl "--max-length 96 --max-target-length 48"
}

sst2() { # name model lr epochs
  "$KILN" finetune --model "$2" --task classify --train $D/sst2/train.jsonl \
    --valid $D/sst2/validation.jsonl --labels $D/sst2/labels.json --lr "$3" --epochs "$4" \
    --batch-size 32 --warmup-steps 200 --eval-every 500 --save-every 1000 --max-length 66 \
    --threads "$THREADS" --overwrite --out "$RUNS/$1"
  record "$1" classify $D/sst2/validation.jsonl
}

for run in "$@"; do
  case $run in
    sst2-minilm) sst2 sst2-minilm "$(minilm)" 5e-5 1 ;;
    sst2-minilm-random) random_init "$RUNS/minilm-random" "$(minilm)"
      sst2 sst2-minilm-random "$RUNS/minilm-random" 5e-5 1 ;;
    ner-minilm-random) random_init "$RUNS/minilm-random" "$(minilm)"
      ner ner-minilm-random "$RUNS/minilm-random" ;;
    ner-kiln-pt) ner ner-kiln-pt "$PRETRAINED" ;;
    ner-kiln-random) random_init "$RUNS/bert-mini-random" "$PRETRAINED"
      ner ner-kiln-random "$RUNS/bert-mini-random" ;;
    tatoeba-minilm) tatoeba tatoeba-minilm "$(minilm)" 1e-4 3 --extend-vocab ;;
    tatoeba-gpt) tatoeba tatoeba-gpt "$GPT" 5e-4 3 ;;
    tatoeba-gpt-random) random_init "$RUNS/gpt-mini-random" "$GPT"
      tatoeba tatoeba-gpt-random "$RUNS/gpt-mini-random" 5e-4 3 ;;
    chnsenticorp-minilm-ext)
      "$KILN" finetune --model "$(minilm)" --task classify --extend-vocab \
        --train $D/chnsenticorp/train.jsonl --valid $D/chnsenticorp/validation.jsonl \
        --labels $D/chnsenticorp/labels.json --lr 5e-5 --epochs 1 --batch-size 32 \
        --warmup-steps 30 --eval-every 0 --max-length 128 --threads "$THREADS" \
        --overwrite --out "$RUNS/chnsenticorp-minilm-ext"
      record chnsenticorp-minilm-ext classify $D/chnsenticorp/validation.jsonl ;;
    sst2-kiln-pt) sst2 sst2-kiln-pt "$PRETRAINED" 1e-4 1 ;;
    sst2-kiln-random) random_init "$RUNS/bert-mini-random" "$PRETRAINED"
      sst2 sst2-kiln-random "$RUNS/bert-mini-random" 1e-4 1 ;;
    rte-minilm)
      "$KILN" finetune --model "$(minilm)" --task classify \
        --train $D/rte/train.jsonl --valid $D/rte/validation.jsonl --labels $D/rte/labels.json \
        --lr 3e-5 --epochs 5 --batch-size 16 --warmup-steps 50 --eval-every 100 --max-length 256 \
        --threads "$THREADS" --overwrite --out "$RUNS/rte-minilm"
      record rte-minilm classify $D/rte/validation.jsonl "--max-length 256" ;;
    ner-minilm) ner ner-minilm "$(minilm)" ;;
    squad-minilm)
      # A seeded sample of SQUAD_N training questions (all 82,668 take ~1.8 h on two cores;
      # 50,000 took 67 minutes and gave F1 73.3, bench/results/README.md).
      N=${SQUAD_N:-50000}
      python3 - "$D/squad_v1.1/train.jsonl.gz" "$RUNS/squad-train-$N.jsonl" "$N" <<'EOF'
import gzip, random, sys
lines = gzip.open(sys.argv[1], "rt").read().splitlines()
random.Random(7).shuffle(lines)
open(sys.argv[2], "w").write("\n".join(lines[: int(sys.argv[3])]) + "\n")
EOF
      "$KILN" finetune --model "$(minilm)" --task qa \
        --train "$RUNS/squad-train-$N.jsonl" --lr 1e-4 --epochs 1 --batch-size 16 \
        --warmup-steps 100 --max-length 384 --doc-stride 128 --threads "$THREADS" \
        --overwrite --out "$RUNS/squad-minilm"
      record squad-minilm qa $D/squad_v1.1/validation.jsonl.gz ;;
    chnsenticorp-minilm)
      "$KILN" finetune --model "$(minilm)" --task classify \
        --train $D/chnsenticorp/train.jsonl --valid $D/chnsenticorp/validation.jsonl \
        --labels $D/chnsenticorp/labels.json --lr 5e-5 --epochs 1 --batch-size 32 \
        --warmup-steps 30 --eval-every 0 --max-length 128 --threads "$THREADS" \
        --overwrite --out "$RUNS/chnsenticorp-minilm"
      record chnsenticorp-minilm classify $D/chnsenticorp/validation.jsonl ;;
    pos-minilm)
      "$KILN" finetune --model "$(minilm)" --task tag \
        --tag-field pos --labels $D/conll2003/labels.json --train $D/conll2003/train.jsonl \
        --valid $D/conll2003/validation.jsonl --lr 1e-4 --epochs 1 --batch-size 32 \
        --warmup-steps 50 --eval-every 0 --threads "$THREADS" --overwrite --out "$RUNS/pos-minilm"
      record pos-minilm tag $D/conll2003/validation.jsonl "--tag-field pos" ;;
    *) echo "unknown run $run" >&2; exit 2 ;;
  esac
done
