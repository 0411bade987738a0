#!/usr/bin/env bash
# Where a model's first training steps go on a fresh machine: each model's bench (eager,
# autotuning on), its first-step time, then the Triton cache's compiled kernels by name.
#   scripts/model_warmup_probe.sh SECONDS_PER_MODEL MODEL...
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/out}"; mkdir -p "$OUT"
export PYTHONPATH="$PWD/src" PYTHONUNBUFFERED=1
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-/tmp/corrmm-triton-cache}"
seconds="$1"; shift
for m in "$@"; do
    t0=$(date +%s)
    timeout "$seconds" python3 -m corrmm bench --models "$m" --modes ${MODES:-eager} --steps 10 --warmup-steps 3 \
        --no-progress --json "$OUT/model-$m.json" > "$OUT/model-$m.log" 2>&1
    echo "== model $m rc=$? in $(( $(date +%s) - t0 )) s"; grep -E "img/s|eager|compiled|first" "$OUT/model-$m.log" | tail -8
    python3 - "$OUT/model-$m.json" <<'PY'
import json, sys
try:
    data = json.load(open(sys.argv[1]))
except Exception as err:
    print("no json:", err); sys.exit()
for m in data.get("measurements", []):
    print(m.get("model"), m.get("mode"), m.get("side"), "first step s", m.get("first_step_s"), "img/s", m.get("images_per_s"))
PY
    echo "compiled kernels so far:"; find "$TRITON_CACHE_DIR" -name "*.json" ! -name "__grp__*" ! -name "*.autotune.json" \
        | xargs -n1 basename | sort | uniq -c | sort -rn | head -12
done
