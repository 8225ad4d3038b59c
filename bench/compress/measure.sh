# Sourced by bench/compress/*.sh: `measure METHOD DIR LABELS` prints one JSON line for a model —
# its validation metric (`kiln eval`), parameters (`kiln info`), model.safetensors bytes and
# `kiln predict` sentences/s on the first 4,000 training sentences (best of 3) — with $BENCH,
# $STEPS, $THREADS, the date and the commit. Needs K (the kiln binary), D (the data folder) and W
# (the work folder). The task defaults to SST-2; set TASK_DATA (a folder with train.jsonl and
# validation.jsonl), METRIC (the `kiln eval --json` field) and EVAL_FLAGS for another.
measure() {
  local acc params bytes best=999999 t0 t1 s
  local data=${TASK_DATA:-$D/sst2} metric=${METRIC:-accuracy}
  [ -f "$W/speed.jsonl" ] || head -4000 "$data/train.jsonl" > "$W/speed.jsonl"
  # shellcheck disable=SC2086
  acc=$($K eval --model "$2" --data "$data/validation.jsonl" --threads "$THREADS" --json ${EVAL_FLAGS:-} 2>/dev/null \
    | python3 -c "import json,sys; print(json.load(sys.stdin)['$metric'])")
  params=$($K info "$2" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["parameters"])')
  bytes=$(stat -c %s "$2/model.safetensors")
  for _ in 1 2 3; do
    t0=$(date +%s.%N)
    $K predict --model "$2" --input "$W/speed.jsonl" --threads "$THREADS" > /dev/null 2>&1
    t1=$(date +%s.%N)
    best=$(python3 -c "print(min($best, $t1 - $t0))")
  done
  s=$(python3 -c "print(round(4000 / $best, 1))")
  printf '{"bench":"%s","run":"%s","method":"%s","labels":"%s","steps":%s,"%s":%s,"parameters":%s,"bytes":%s,"sentences_per_s":%s,"threads":%s,"date":"%s","commit":"%s"}\n' \
    "$BENCH" "$RUN" "$1" "$3" "$STEPS" "$metric" "$acc" "$params" "$bytes" "$s" "$THREADS" "$(date -u +%FT%TZ)" "$(git rev-parse --short HEAD)"
}
