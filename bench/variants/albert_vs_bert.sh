#!/usr/bin/env bash
# ALBERT against BERT of the same depth and width (4 layers, 256 wide, 4 heads, FFN 1024; the
# BERT-mini that bench/variants/electra_vs_bert.sh pre-trains): parameters and file size, then
# ALBERT (tables 128 wide, one block shared by the four layers) pre-trained with masked LM on
# en_gutenberg for the same number of steps of the same batches as that BERT (the same compute:
# sharing weights saves memory and disk, not arithmetic), its held-out MLM loss, SST-2 and
# CoNLL-2003 fine-tuned as for the BERT, and the training (tokens/s, a 40-step run each) and
# inference (`kiln embed`, sentences/s on 4,000 SST-2 sentences, best of 3) speed of both,
# measured back to back at the end. Appends one JSON line per model to
# bench/results/variants.jsonl.
#
#   bench/variants/albert_vs_bert.sh [THREADS]
#
# Needs the electra_vs_bert.sh work folder (its BERT, tokenizer and budget.json).
set -euo pipefail
cd "$(dirname "$0")/../.."
THREADS=${1:-2}
K=${KILN:-$PWD/target/release/kiln}
D=${DATA:-$(cd ../shared/data && pwd)}
W=${WORK:-$HOME/.cache/kiln-bench/electra}
OUT=${RESULTS:-bench/results/variants.jsonl}
G=$D/corpora/en_gutenberg
C=$D/conll2003
TOK=${TOKENIZER:-$HOME/.cache/kiln-bench/distill-mlm/tok}
STEPS=$(python3 -c "import json; print(json.load(open('$W/budget.json'))['mlm_steps'])")
[ -f "$W/albert-init/config.json" ] || $K init --arch albert --size mini --embedding-size 128 \
  --tokenizer "$TOK" --out "$W/albert-init"
PT=(--corpus $G/train.jsonl.gz --valid $G/validation.jsonl.gz --seq-len 128 --batch-size 16
  --lr 5e-4 --warmup-steps 300 --threads "$THREADS" --overwrite)
if [ -z "${SKIP_PRETRAIN:-}" ]; then
  /usr/bin/time -f %e -o "$W/albert.secs" $K pretrain --model "$W/albert-init" --objective mlm \
    "${PT[@]}" --max-steps "$STEPS" --eval-every 500 --out "$W/albert"
fi
$K finetune --model "$W/albert" --task classify --train $D/sst2/train.jsonl --valid $D/sst2/validation.jsonl \
  --labels $D/sst2/labels.json --epochs 2 --lr 1e-4 --batch-size 32 --eval-every 1000 \
  --threads "$THREADS" --out "$W/sst2-albert" --overwrite > /dev/null 2>&1
$K finetune --model "$W/albert" --task tag --tag-field ner --train $C/train.jsonl --valid $C/validation.jsonl \
  --labels $C/labels.json --epochs 3 --lr 1e-4 --batch-size 32 --eval-every 400 \
  --threads "$THREADS" --out "$W/ner-albert" --overwrite > /dev/null 2>&1
# Speed, back to back: training (median logged tokens/s of a 40-step run) and inference.
head -4000 $D/sst2/train.jsonl | python3 -c 'import json,sys; [print(json.loads(l)["text"]) for l in sys.stdin]' > "$W/speed.txt"
for m in bert albert; do
  $K pretrain --model "$W/$m-init" --objective mlm "${PT[@]}" --max-steps 40 --log-every 5 \
    --eval-every 0 --eval-sequences 1 --out "$W/speed-$m" > /dev/null 2>&1
  best=999999
  for _ in 1 2 3; do
    t0=$(date +%s.%N)
    $K embed --model "$W/$m" --input "$W/speed.txt" --threads "$THREADS" > /dev/null 2>&1
    t1=$(date +%s.%N)
    best=$(python3 -c "print(min($best, $t1 - $t0))")
  done
  echo "$best" > "$W/embed-$m.secs"
done
python3 - "$W" "$THREADS" "$STEPS" "$(git rev-parse --short HEAD)" >> "$OUT" <<'PY'
import json, os, statistics, sys, datetime, subprocess
w, threads, steps, commit = sys.argv[1:5]
def rows(d):
    return [json.loads(l) for l in open(f"{d}/metrics.jsonl")]
def last(d, key):
    return [r for r in rows(d) if key in r][-1][key]
def best(d, key):
    return max(r[key] for r in rows(d) if key in r)
for name, m in [("BERT-mini masked LM", "bert"), ("ALBERT-mini masked LM (E 128, 1 shared block)", "albert")]:
    info = json.loads(subprocess.check_output([os.environ.get("KILN", "target/release/kiln"), "info", f"{w}/{m}", "--json"]))
    row = {"bench": "albert_vs_bert", "model": name, "threads": int(threads),
           "parameters": info["parameters"],
           "bytes": os.path.getsize(f"{w}/{m}/model.safetensors"),
           "pretrain_steps": int(steps),
           # Empty when the pre-training was interrupted and resumed (its time is then partial).
           "pretrain_seconds": next((float(t) for t in open(f"{w}/{m}.secs").read().split()[-1:]), None),
           "train_tokens_per_s": statistics.median(r["tokens_per_s"] for r in rows(f"{w}/speed-{m}")[2:]),
           "embed_sentences_per_s": round(4000 / float(open(f"{w}/embed-{m}.secs").read()), 1),
           "valid_mlm_loss": last(f"{w}/{m}", "valid_loss"),
           "valid_mlm_accuracy": last(f"{w}/{m}", "mlm_accuracy"),
           "sst2_accuracy": best(f"{w}/sst2-{m}", "accuracy"),
           "conll_f1": best(f"{w}/ner-{m}", "f1"),
           "date": datetime.datetime.utcnow().strftime("%Y-%m-%dT%H:%M:%SZ"), "commit": commit}
    print(json.dumps(row))
PY
tail -n 2 "$OUT"
