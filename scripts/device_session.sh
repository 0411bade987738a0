#!/usr/bin/env bash
# One device call of a verification: the quick GPU tier (unless QUICK=0), then model benches,
# each under its own time limit so one slow part cannot take the others' results with it.
#   [QUICK=0] [MODES="eager reduce-overhead"] [STEPS=10] scripts/device_session.sh [MODEL_SECONDS] [MODEL ...]
# Triton's cache (compiled kernels and autotuning winners) is shared by every part of the call.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/out}"; mkdir -p "$OUT"
export PYTHONPATH="$PWD/src" PYTHONUNBUFFERED=1
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-/tmp/corrmm-triton-cache}"
seconds="${1:-90}"; shift || true
models=("${@:-resnet18 mobilenet_v2 resnext50_32x4d}")
if [ "${QUICK:-1}" != 0 ]; then
    start=$(date +%s)
    timeout "${QUICK_SECONDS:-270}" scripts/gpu_check.sh --tier quick > "$OUT/quick.log" 2>&1
    echo "== quick tier rc=$? in $(( $(date +%s) - start )) s"
    grep -E "passed|failed|error" "$OUT/quick.log" | tail -5
    grep -E "^FAILED|^ERROR" "$OUT/quick.log" | head -30
fi
for m in ${models[@]}; do
    t0=$(date +%s)
    timeout "$seconds" python3 -m corrmm bench --models "$m" --modes ${MODES:-eager} --steps "${STEPS:-10}" \
        --warmup-steps 3 --no-progress --json "$OUT/model-$m.json" > "$OUT/model-$m.log" 2>&1
    echo "== model $m rc=$? in $(( $(date +%s) - t0 )) s"
    grep -vE "Warning|warn" "$OUT/model-$m.log" | tail -12
done
