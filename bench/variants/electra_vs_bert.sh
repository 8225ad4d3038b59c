#!/usr/bin/env bash
# ELECTRA's replaced-token detection against BERT's masked LM at the same budget: the same
# corpus (en_gutenberg), tokenizer (WordPiece 8k), model size (4 layers, 256 wide: the
# discriminator is as large as the BERT; its generator is a quarter as wide) and wall time.
# Each objective's speed is measured first (a short calibration run, nothing else running),
# and each then trains for the number of steps that fill MINUTES at that speed, so the result
# does not depend on what else runs later. Then SST-2 and CoNLL-2003 NER are fine-tuned the same
# way from the BERT, from the ELECTRA discriminator and from a random init. Prints and appends
# one JSON line per model to bench/results/variants.jsonl.
#
#   bench/variants/electra_vs_bert.sh [MINUTES] [THREADS]
#
# Defaults: 25 minutes of pre-training each on 2 threads (about 75 minutes in all with the
# calibration and six fine-tuning runs).
set -euo pipefail
cd "$(dirname "$0")/../.."
MINUTES=${1:-25}
THREADS=${2:-2}
K=${KILN:-$PWD/target/release/kiln}
D=${DATA:-$(cd ../shared/data && pwd)}
W=${WORK:-$HOME/.cache/kiln-bench/electra}
OUT=${RESULTS:-bench/results/variants.jsonl}
G=$D/corpora/en_gutenberg
mkdir -p "$W"
TOK=${TOKENIZER:-$HOME/.cache/kiln-bench/distill-mlm/tok}
[ -f "$TOK/tokenizer.json" ] || $K tokenizer train --corpus $G/validation.jsonl.gz \
  --kind wordpiece --vocab-size 8000 --lowercase --out "$TOK"
[ -f "$W/bert-init/config.json" ] || $K init --arch bert --size mini --tokenizer "$TOK" --out "$W/bert-init"
[ -f "$W/electra-init/config.json" ] || $K init --arch electra --size mini --tokenizer "$TOK" --out "$W/electra-init"
PT=(--corpus $G/train.jsonl.gz --valid $G/validation.jsonl.gz --seq-len 128 --batch-size 16
  --lr 5e-4 --warmup-steps 300 --threads "$THREADS" --overwrite)
# Steps per second of an objective: the median of its logged speeds after the first lines.
rate() { # model objective
  $K pretrain --model "$1" --objective "$2" "${PT[@]}" --max-steps 40 --log-every 5 --eval-every 0 \
    --eval-sequences 1 --out "$W/calib-$2" > /dev/null 2>&1
  python3 -c "
import json, statistics
rows = [json.loads(l) for l in open('$W/calib-$2/metrics.jsonl')][2:]
print(statistics.median(r['tokens_per_s'] for r in rows) / (16 * 128))"
}
if [ -z "${SKIP_PRETRAIN:-}" ]; then
  BERT_RATE=$(rate "$W/bert-init" mlm)
  ELECTRA_RATE=$(rate "$W/electra-init" electra)
  BERT_STEPS=$(python3 -c "print(int($BERT_RATE * 60 * $MINUTES))")
  ELECTRA_STEPS=$(python3 -c "print(int($ELECTRA_RATE * 60 * $MINUTES))")
  echo "steps/s: mlm $BERT_RATE, electra $ELECTRA_RATE -> $BERT_STEPS and $ELECTRA_STEPS steps" >&2
  echo "{\"mlm_steps\": $BERT_STEPS, \"electra_steps\": $ELECTRA_STEPS, \"mlm_rate\": $BERT_RATE, \"electra_rate\": $ELECTRA_RATE}" > "$W/budget.json"
  /usr/bin/time -f %e -o "$W/bert.secs" $K pretrain --model "$W/bert-init" --objective mlm "${PT[@]}" \
    --max-steps "$BERT_STEPS" --eval-every 500 --out "$W/bert"
  /usr/bin/time -f %e -o "$W/electra.secs" $K pretrain --model "$W/electra-init" --objective electra \
    "${PT[@]}" --max-steps "$ELECTRA_STEPS" --eval-every 500 --out "$W/electra"
fi
C=$D/conll2003
tune() { # name model
  $K finetune --model "$2" --task classify --train $D/sst2/train.jsonl --valid $D/sst2/validation.jsonl \
    --labels $D/sst2/labels.json --epochs 2 --lr 1e-4 --batch-size 32 --eval-every 1000 \
    --threads "$THREADS" --out "$W/sst2-$1" --overwrite > /dev/null 2>&1
  $K finetune --model "$2" --task tag --tag-field ner --train $C/train.jsonl --valid $C/validation.jsonl \
    --labels $C/labels.json --epochs 3 --lr 1e-4 --batch-size 32 --eval-every 400 \
    --threads "$THREADS" --out "$W/ner-$1" --overwrite > /dev/null 2>&1
}
tune bert "$W/bert"
tune electra "$W/electra/discriminator"
tune random "$W/bert-init"
python3 - "$W" "$MINUTES" "$THREADS" "$(git rev-parse --short HEAD)" >> "$OUT" <<'PY'
import json, sys, datetime
w, minutes, threads, commit = sys.argv[1:5]
budget = json.load(open(f"{w}/budget.json"))
def best(d, key):
    rows = [json.loads(l) for l in open(f"{d}/metrics.jsonl")]
    return max(r[key] for r in rows if key in r)
def last(d, key):
    rows = [json.loads(l) for l in open(f"{d}/metrics.jsonl")]
    return [r for r in rows if key in r][-1][key]
for name, pt in [("BERT-mini masked LM", "bert"), ("ELECTRA-mini discriminator", "electra"), ("random init", None)]:
    row = {"bench": "electra_vs_bert", "model": name, "minutes": float(minutes), "threads": int(threads)}
    if pt:
        row["pretrain_steps"] = budget["mlm_steps" if pt == "bert" else "electra_steps"]
        row["pretrain_seconds"] = float(open(f"{w}/{pt}.secs").read().split()[-1])
    if pt == "bert":
        row["valid_mlm_loss"] = last(f"{w}/bert", "valid_loss")
        row["valid_mlm_accuracy"] = last(f"{w}/bert", "mlm_accuracy")
    if pt == "electra":
        for k in ["valid_gen_loss", "valid_gen_accuracy", "valid_disc_loss", "valid_disc_accuracy", "valid_replaced_fraction"]:
            row[k] = last(f"{w}/electra", k)
    tag = pt or "random"
    row["sst2_accuracy"] = best(f"{w}/sst2-{tag}", "accuracy")
    row["conll_f1"] = best(f"{w}/ner-{tag}", "f1")
    row["date"] = datetime.datetime.utcnow().strftime("%Y-%m-%dT%H:%M:%SZ")
    row["commit"] = commit
    print(json.dumps(row))
PY
tail -n 3 "$OUT"
