#!/usr/bin/env bash
# The BERT side of bench/lstm/lstm_vs_bert.sh at another fine-tuning learning rate: the
# BiLSTM's runs used 1e-3 and BERT's 1e-4 (each family's usual rate), so this fine-tunes the
# same BERT-mini (pre-trained by bench/variants/electra_vs_bert.sh) and its random init again
# at LR with the same flags (SST-2 2 epochs, CoNLL-2003 NER 3 epochs, batch 32), and appends a
# JSON line per model, with its best validation figures, to bench/results/lstm.jsonl. The
# comparison then takes each model at its better rate on validation.
#
#   bench/lstm/bert_lr.sh [LR] [THREADS]        (defaults: 5e-4, 2 threads; about 25 minutes)
set -euo pipefail
cd "$(dirname "$0")/../.."
LR=${1:-5e-4}
THREADS=${2:-2}
K=${KILN:-$PWD/target/release/kiln}
D=${DATA:-$(cd ../shared/data && pwd)}
C=$D/conll2003
BERT=${BERT_WORK:-$HOME/.cache/kiln-bench/electra}
OUT=${RESULTS:-bench/results/lstm.jsonl}
for m in bert bert-init; do
  [ -f "$BERT/$m/config.json" ] || { echo "no $BERT/$m: run bench/variants/electra_vs_bert.sh first" >&2; exit 2; }
done
tune() { # name model
  [ -f "$BERT/sst2-$1-lr$LR/config.json" ] || $K finetune --model "$2" --task classify \
    --train $D/sst2/train.jsonl --valid $D/sst2/validation.jsonl --labels $D/sst2/labels.json \
    --epochs 2 --lr "$LR" --batch-size 32 --eval-every 1000 --threads "$THREADS" \
    --out "$BERT/sst2-$1-lr$LR" --overwrite > /dev/null 2>&1
  [ -f "$BERT/ner-$1-lr$LR/config.json" ] || $K finetune --model "$2" --task tag --tag-field ner \
    --train $C/train.jsonl --valid $C/validation.jsonl --labels $C/labels.json --epochs 3 \
    --lr "$LR" --batch-size 32 --eval-every 400 --threads "$THREADS" --out "$BERT/ner-$1-lr$LR" \
    --overwrite > /dev/null 2>&1
}
tune bert "$BERT/bert"
tune random "$BERT/bert-init"
python3 - "$BERT" "$LR" "$THREADS" "$(git rev-parse --short HEAD)" >> "$OUT" <<'PY'
import json, sys, datetime
bert, lr, threads, commit = sys.argv[1:5]
def best(d, key):
    return max(json.loads(l)[key] for l in open(f"{d}/metrics.jsonl") if key in json.loads(l))
for name, tag in [("BERT-mini masked LM (electra_vs_bert.sh)", "bert"), ("BERT-mini, random init", "random")]:
    print(json.dumps({
        "bench": "lstm_vs_bert", "model": name, "finetune_lr": float(lr), "threads": int(threads),
        "sst2_accuracy": best(f"{bert}/sst2-{tag}-lr{lr}", "accuracy"),
        "conll_f1": best(f"{bert}/ner-{tag}-lr{lr}", "f1"),
        "date": datetime.datetime.utcnow().strftime("%Y-%m-%dT%H:%M:%SZ"), "commit": commit,
    }))
PY
tail -n 2 "$OUT"
