#!/usr/bin/env bash
# Full fine-tuning vs LoRA vs bottleneck adapters from all-MiniLM-L6-v2 on real data (validation
# splits): metric, trainable parameters, file size, training examples/s and peak RSS. Usage
# (from the repository root, after `cargo build --release`; run nothing else meanwhile, the
# speed and memory columns are measured):
#
#   bench/results/peft_compare.sh RUN [RUN...]     RUN = {sst2,ner}-{full,lora,adapter,lora-all}
#       (SST-2 runs take a -Nep suffix for N epochs: sst2-lora-all-2ep)
#
# Every run evaluates once, at its end, so the wall time is training plus one evaluation; the
# examples/s column is (steps × batch) / (wall time − evaluation time, measured by `kiln eval`
# separately). Peak RSS is /usr/bin/time's maximum resident set size of the whole process.
# Each run writes bench/results/runs/<name>/ and appends one JSON line to
# bench/results/peft.jsonl.
set -euo pipefail
KILN=${KILN:-target/release/kiln}
D=${DATA:-../shared/data}
RUNS=${RUNS:-bench/results/runs}
THREADS=${THREADS:-2}
M=${MINILM:-$("${GET_MINILM:-scripts/get-minilm.sh}")}
mkdir -p "$RUNS"

# method flags per run: full fine-tuning at transformers' usual rate, LoRA r=8 alpha=16 on
# query/value (PEFT's BERT default), Houlsby adapters of size 64; the additions at 1e-3.
# lora-all: r=4 on every linear module (query, key, value and the dense layers, pooler included).
method_flags() {
  case $1 in
    full) echo "--lr 5e-5" ;;
    lora) echo "--method lora --lora-r 8 --lora-alpha 16 --lora-dropout 0.1 --lora-targets query,value --lr 1e-3" ;;
    adapter) echo "--method adapter --adapter-size 64 --lr 1e-3" ;;
    lora-all) echo "--method lora --lora-r 4 --lora-alpha 8 --lora-dropout 0.1 --lora-targets query,key,value,dense --lr 1e-3" ;;
  esac
}

run() { # name task data-flags eval-flags valid method
  local name=$1 task=$2 flags=$3 evflags=$4 valid=$5 method=$6 out="$RUNS/$1"
  rm -rf "$out"
  local log="$RUNS/$name.log"
  # shellcheck disable=SC2046,SC2086
  /usr/bin/time -v "$KILN" finetune --model "$M" --task "$task" $flags $(method_flags "$method") \
    --valid "$valid" --eval-every 0 --save-every 0 --save-minutes 0 --threads "$THREADS" --out "$out" \
    2> "$log"
  local wall rss steps batch trainable total size evalargs eval_s
  wall=$(grep "Elapsed (wall clock)" "$log" | awk '{print $NF}' | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }')
  rss=$(grep "Maximum resident set size" "$log" | awk '{print $NF}')
  steps=$(tail -1 "$out/metrics.jsonl" | python3 -c 'import json,sys; print(json.load(sys.stdin)["step"])')
  batch=$(echo "$flags" | sed -E 's/.*--batch-size ([0-9]+).*/\1/')
  read -r trainable total < <(grep -o "trainable params [0-9]* || all params [0-9]*" "$log" | awk '{print $3, $7}')
  if [ "$method" = full ]; then
    size=$(stat -c %s "$out/model.safetensors"); evalargs=(--model "$out")
  else
    size=$(stat -c %s "$out/adapter_model.safetensors"); evalargs=(--model "$M" --adapter "$out")
  fi
  local t0 t1 metrics
  t0=$(date +%s.%N)
  # shellcheck disable=SC2086
  metrics=$("$KILN" eval "${evalargs[@]}" --task "$task" --data "$valid" --json $evflags --threads "$THREADS")
  t1=$(date +%s.%N)
  eval_s=$(python3 -c "print($t1 - $t0)")
  python3 - "$name" "$metrics" "$trainable" "$total" "$size" "$wall" "$eval_s" "$steps" "$batch" "$rss" <<'EOF' | tee -a bench/results/peft.jsonl
import json, sys
name, metrics, trainable, total, size, wall, eval_s, steps, batch, rss = sys.argv[1:]
train_s = float(wall) - float(eval_s)
print(json.dumps({
    "run": name, "metrics": json.loads(metrics),
    "trainable": int(trainable), "total": int(total),
    "trainable_percent": round(100 * int(trainable) / int(total), 3),
    "file_bytes": int(size), "wall_s": round(float(wall), 1), "eval_s": round(float(eval_s), 1),
    "examples_per_s": round(int(steps) * int(batch) / train_s, 1),
    "peak_rss_mib": round(int(rss) / 1024, 1),
}))
EOF
}

SST2="--train $D/sst2/train.jsonl --labels $D/sst2/labels.json --epochs 1 --batch-size 32 --warmup-steps 200 --max-length 66"
NER="--train $D/conll2003/train.jsonl --tag-field ner --labels $D/conll2003/labels.json --epochs 3 --batch-size 32 --warmup-steps 200"
for r in "$@"; do
  case $r in
    sst2-*) # a -Nep suffix trains N epochs instead of one (sst2-lora-all-2ep)
      m=${r#sst2-} ep=1
      if [[ $m =~ ^(.*)-([0-9]+)ep$ ]]; then m=${BASH_REMATCH[1]} ep=${BASH_REMATCH[2]}; fi
      run "$r" classify "${SST2/--epochs 1/--epochs $ep}" "" $D/sst2/validation.jsonl "$m" ;;
    ner-*) run "$r" tag "$NER" "--tag-field ner" $D/conll2003/validation.jsonl "${r#ner-}" ;;
    *) echo "unknown run $r" >&2; exit 2 ;;
  esac
done
