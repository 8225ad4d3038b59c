#!/usr/bin/env bash
# The seed's picture both ways: a bidirectional LSTM (ELMo's biLM) against BERT-mini's masked
# LM at the same pre-training budget. Same corpus (en_gutenberg), tokenizer (WordPiece 8k),
# embedding width (256) and wall time. The BiLSTM's speed is measured first (a short
# calibration run, nothing else running). It then trains for the number of steps that fill
# MINUTES at that speed, so the result does not depend on what else runs later.
#
# The BERT-mini is the one `bench/variants/electra_vs_bert.sh` pre-trained for the same 25
# minutes. It is reused, with its SST-2 and CoNLL-2003 runs, when it is there.
#
# Then SST-2 and CoNLL-2003 NER are fine-tuned from the BiLSTM and from a randomly initialized
# BiLSTM, each at the LSTM's learning rate (1e-3; BERT's runs used 1e-4, the usual rates of
# each family). Last, bench/lstm/sense_gap.py compares how each model's layers separate word
# senses, with heatmaps. Prints and appends one JSON line per model to
# bench/results/lstm.jsonl.
#
#   bench/lstm/lstm_vs_bert.sh [MINUTES] [THREADS]
#
# Defaults: 25 minutes of pre-training on 2 threads (about an hour in all).
set -euo pipefail
cd "$(dirname "$0")/../.."
MINUTES=${1:-25}
THREADS=${2:-2}
K=${KILN:-$PWD/target/release/kiln}
D=${DATA:-$(cd ../shared/data && pwd)}
W=${WORK:-$HOME/.cache/kiln-bench/lstm}
BERT=${BERT_WORK:-$HOME/.cache/kiln-bench/electra}
OUT=${RESULTS:-bench/results/lstm.jsonl}
PY=${PYTHON:-$HOME/.cache/kiln-ref-venv/bin/python}
G=$D/corpora/en_gutenberg
mkdir -p "$W"
TOK=${TOKENIZER:-$HOME/.cache/kiln-bench/distill-mlm/tok}
[ -f "$TOK/tokenizer.json" ] || $K tokenizer train --corpus $G/validation.jsonl.gz \
  --kind wordpiece --vocab-size 8000 --lowercase --out "$TOK"
[ -f "$W/lstm-init/config.json" ] || $K init --arch lstm --size mini --bidirectional \
  --tokenizer "$TOK" --out "$W/lstm-init"
PT=(--corpus $G/train.jsonl.gz --valid $G/validation.jsonl.gz --seq-len 128 --batch-size 16
  --lr 1e-3 --warmup-steps 300 --threads "$THREADS" --overwrite)
if [ -z "${SKIP_PRETRAIN:-}" ]; then
  $K pretrain --model "$W/lstm-init" --objective bilm "${PT[@]}" --max-steps 40 --log-every 5 \
    --eval-every 0 --eval-sequences 1 --out "$W/calib" > /dev/null 2>&1
  RATE=$(python3 -c "
import json, statistics
rows = [json.loads(l) for l in open('$W/calib/metrics.jsonl')][2:]
print(statistics.median(r['tokens_per_s'] for r in rows) / (16 * 128))")
  STEPS=$(python3 -c "print(int($RATE * 60 * $MINUTES))")
  echo "steps/s: bilm $RATE -> $STEPS steps" >&2
  echo "{\"bilm_steps\": $STEPS, \"bilm_rate\": $RATE}" > "$W/budget.json"
  /usr/bin/time -f %e -o "$W/lstm.secs" $K pretrain --model "$W/lstm-init" --objective bilm \
    "${PT[@]}" --max-steps "$STEPS" --eval-every 500 --out "$W/lstm"
fi
C=$D/conll2003
tune() { # name model lr
  [ -f "$W/sst2-$1/config.json" ] || $K finetune --model "$2" --task classify \
    --train $D/sst2/train.jsonl --valid $D/sst2/validation.jsonl --labels $D/sst2/labels.json \
    --epochs 2 --lr "$3" --batch-size 32 --eval-every 1000 --threads "$THREADS" \
    --out "$W/sst2-$1" --overwrite > /dev/null 2>&1
  [ -f "$W/ner-$1/config.json" ] || $K finetune --model "$2" --task tag --tag-field ner \
    --train $C/train.jsonl --valid $C/validation.jsonl --labels $C/labels.json --epochs 3 \
    --lr "$3" --batch-size 32 --eval-every 400 --threads "$THREADS" --out "$W/ner-$1" \
    --overwrite > /dev/null 2>&1
}
tune lstm "$W/lstm" 1e-3
tune lstm-random "$W/lstm-init" 1e-3
# The BERT side: electra_vs_bert.sh's runs, made here when missing.
if [ ! -f "$BERT/bert/config.json" ]; then
  echo "no pre-trained BERT-mini in $BERT: run bench/variants/electra_vs_bert.sh first" >&2
  exit 2
fi
$PY bench/lstm/sense_gap.py --kiln "$K" --model "bert=$BERT/bert" --model "bilstm=$W/lstm" \
  --layers 0-4,mean --json "$W/senses.json" --plot bench/results/lstm-senses.png \
  --heatmap-dir bench/results > "$W/senses.txt"
cat "$W/senses.txt"
python3 - "$W" "$BERT" "$MINUTES" "$THREADS" "$(git rev-parse --short HEAD)" >> "$OUT" <<'PY'
import json, sys, datetime
w, bert, minutes, threads, commit = sys.argv[1:6]
budget = json.load(open(f"{w}/budget.json"))
senses = json.load(open(f"{w}/senses.json"))
def rows(d):
    return [json.loads(l) for l in open(f"{d}/metrics.jsonl")]
def best(d, key):
    return max(r[key] for r in rows(d) if key in r)
def last(d, key):
    return [r for r in rows(d) if key in r][-1][key]
def params(d):
    import struct
    with open(f"{d}/model.safetensors", "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        head = json.loads(f.read(n))
    total = 0
    for k, v in head.items():
        if k != "__metadata__":
            c = 1
            for s in v["shape"]:
                c *= s
            total += c
    return total
out = [
    ("BiLSTM-mini biLM (2 x 512 cells, projection 256)", f"{w}/lstm", "lstm", "bilstm"),
    ("BiLSTM-mini, random init", f"{w}/lstm-init", "lstm-random", None),
    ("BERT-mini masked LM (electra_vs_bert.sh)", f"{bert}/bert", None, "bert"),
]
for name, model, tag, sense in out:
    row = {"bench": "lstm_vs_bert", "model": name, "minutes": float(minutes),
           "threads": int(threads), "parameters": params(model)}
    if tag == "lstm":
        row["pretrain_steps"] = budget["bilm_steps"]
        row["pretrain_seconds"] = float(open(f"{w}/lstm.secs").read().split()[-1])
        for k in ["valid_loss", "valid_loss_forward", "valid_loss_backward", "perplexity"]:
            row[k] = last(model, k)
    if tag:
        row["sst2_accuracy"] = best(f"{w}/sst2-{tag}", "accuracy")
        row["conll_f1"] = best(f"{w}/ner-{tag}", "f1")
    else:
        row["sst2_accuracy"] = best(f"{bert}/sst2-bert", "accuracy")
        row["conll_f1"] = best(f"{bert}/ner-bert", "f1")
    if sense:
        layers = senses["models"][sense]["layers"]
        row["sense_gap_by_layer"] = {l: v["mean_gap"] for l, v in layers.items()}
    row["date"] = datetime.datetime.utcnow().strftime("%Y-%m-%dT%H:%M:%SZ")
    row["commit"] = commit
    print(json.dumps(row))
PY
tail -n 3 "$OUT"
