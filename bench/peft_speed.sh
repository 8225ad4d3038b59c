#!/usr/bin/env bash
# Training speed and memory of full fine-tuning vs LoRA vs bottleneck adapters, side by side:
# the same model (all-MiniLM-L6-v2), data (SST-2 train), batch (32) and steps, in alternating
# rounds, and prints examples/s, peak RSS and the ratios to full fine-tuning. `lora-int8` is
# the same LoRA on the int8-quantized MiniLM (`kiln quantize`: the QLoRA idea, in int8). Usage
# (from the repository root, after `cargo build --release`, on an otherwise idle machine):
#
#   bench/peft_speed.sh [STEPS] [ROUNDS]          defaults: 150 steps, 2 rounds
#   METHODS="lora lora-int8" bench/peft_speed.sh  a subset (default: full lora adapter lora-int8)
#
# Each run evaluates once on 32 validation sentences (negligible) and saves its result (model or
# adapter) once; examples/s = steps × 32 / the process's wall time, so loading and saving count
# against every method alike. Peak RSS is /usr/bin/time's maximum resident set size.
set -euo pipefail
KILN=${KILN:-target/release/kiln}
D=${DATA:-../shared/data}
THREADS=${THREADS:-2}
STEPS=${1:-150}
ROUNDS=${2:-2}
M=${MINILM:-$("${GET_MINILM:-scripts/get-minilm.sh}")}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
head -32 "$D/sst2/validation.jsonl" > "$WORK/valid.jsonl"
METHODS=${METHODS:-full lora adapter lora-int8}
case " $METHODS " in *" lora-int8 "*)
  "$KILN" quantize --model "$M" --out "$WORK/minilm-int8" --calibration "$D/sst2/train.jsonl" 2> /dev/null ;;
esac

flags() {
  case $1 in
    full) echo "--lr 5e-5" ;;
    lora|lora-int8) echo "--method lora --lora-r 8 --lora-alpha 16 --lora-targets query,value --lr 1e-3" ;;
    adapter) echo "--method adapter --adapter-size 64 --lr 1e-3" ;;
  esac
}

declare -A EPS RSS
for round in $(seq "$ROUNDS"); do
  for m in $METHODS; do
    base=$M
    [ "$m" = lora-int8 ] && base=$WORK/minilm-int8
    # shellcheck disable=SC2046
    /usr/bin/time -v "$KILN" finetune --model "$base" --task classify --train "$D/sst2/train.jsonl" \
      --valid "$WORK/valid.jsonl" --labels "$D/sst2/labels.json" --batch-size 32 \
      --max-length 66 --max-steps "$STEPS" --warmup-steps 10 --eval-every 0 --save-every 0 --save-minutes 0 \
      --threads "$THREADS" --overwrite --out "$WORK/$m" $(flags $m) 2> "$WORK/$m.log" > /dev/null
    wall=$(grep "Elapsed (wall clock)" "$WORK/$m.log" | awk '{print $NF}' | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }')
    rss=$(grep "Maximum resident set size" "$WORK/$m.log" | awk '{print $NF}')
    eps=$(python3 -c "print(round($STEPS * 32 / $wall, 1))")
    echo "round $round  $m: $eps examples/s, peak RSS $((rss / 1024)) MiB"
    EPS[$m]="${EPS[$m]:-} $eps"
    RSS[$m]=$rss
  done
done
median() { python3 -c "import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))" "$@"; }
# Ratios against full fine-tuning, or the first method measured when it is not among them.
ref=${METHODS%% *}
case " $METHODS " in *" full "*) ref=full ;; esac
first=$(median ${EPS[$ref]})
echo
printf "%-10s %12s %10s %14s %10s\n" method examples/s "vs $ref" "peak RSS MiB" "vs $ref"
for m in $METHODS; do
  e=$(median ${EPS[$m]})
  printf "%-10s %12.1f %9.2fx %14d %9.2fx\n" "$m" "$e" "$(python3 -c "print($e / $first)")" \
    "$((RSS[$m] / 1024))" "$(python3 -c "print(${RSS[$m]} / ${RSS[$ref]})")"
done
