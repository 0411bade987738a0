#!/usr/bin/env bash
# One device call for the weight gradient: GPU tests, parallel warm-up, timings (new, old), kernel report.
#   scripts/wgrad_device_run.sh BASE_SRC [LAYERS...]     (logs in $OUT)
set -uo pipefail
cd "$(dirname "$0")/.."
BASE=$1; shift
LAYERS=${*:-L1 L2 L3 L4 L5 S1 S2 R1 R2 R3 R4 R5}
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=/tmp/tc
OUT=${OUT:-$PWD/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.backends.cudnn.version())"
t0=$(date +%s)
([ -n "${SKIP_TESTS:-}" ] || CORRMM_AUTOTUNE=0 CORRMM_TEST_DEVICE=cuda timeout 200 python3 -m pytest -q -x -p no:cacheprovider \
    tests/kernels/test_implicit.py -k "grad_weight or split" > "$OUT/tests.log" 2>&1; echo "tests rc=$?" >> "$OUT/tests.log") &
for L in $LAYERS; do
    timeout 240 python3 scripts/wgrad_probe.py --warm-only --layers $L --dtypes bf16 > /dev/null 2>"$OUT/warm_new_$L.err" &
    timeout 240 python3 scripts/wgrad_probe.py --warm-only --layers $L --dtypes tf32 --algos ${TF32_ALGOS:-implicit} > /dev/null 2>>"$OUT/warm_new_$L.err" &
    [ -n "${SKIP_OLD:-}" ] || PYTHONPATH=$BASE timeout 240 python3 scripts/wgrad_probe.py --warm-only --layers $L > /dev/null 2>&1 &
done
wait
echo "warm-up and tests: $(( $(date +%s) - t0 )) s"; tail -3 "$OUT/tests.log"
cat "$OUT"/warm_new_*.err | grep -iv "^$" | sort | uniq -c | sort -rn | head -20 > "$OUT/warnings.log"; rm -f "$OUT"/warm_new_*.err
python3 scripts/wgrad_probe.py --layers $LAYERS --dtypes bf16 --determinism --json "$OUT/new_bf16.json" > "$OUT/new.log" 2>&1
python3 scripts/wgrad_probe.py --layers $LAYERS --dtypes tf32 --algos ${TF32_ALGOS:-implicit im2col} --determinism --json "$OUT/new_tf32.json" >> "$OUT/new.log" 2>&1
[ -n "${SKIP_OLD:-}" ] || PYTHONPATH=$BASE python3 scripts/wgrad_probe.py --tag old --layers $LAYERS --json "$OUT/old.json" > "$OUT/old.log" 2>&1
python3 scripts/triton_cache_report.py /tmp/tc > "$OUT/kernels.log" 2>&1
echo "total: $(( $(date +%s) - t0 )) s"
grep -A20 "best corrmm" "$OUT/new.log" "$OUT"/old.log | grep -v '^--'
cat "$OUT/warnings.log" "$OUT/kernels.log" | cut -c1-300 | head -40
