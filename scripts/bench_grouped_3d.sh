#!/usr/bin/env bash
# One GPU call for the grouped / 3-D / few-channel kernels: CUDA tests of the implicit kernels (in the
# background), compile-ahead of every benchmark variant (this tree and, optionally, a baseline tree),
# then timings against cuDNN and one table.   BASE=/path/to/old/src OUT=dir scripts/bench_grouped_3d.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/out}"; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
NEW="$PWD/src"
python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.backends.cudnn.version(), torch.cuda.get_device_name())"
( CORRMM_TEST_DEVICE=cuda CORRMM_AUTOTUNE=0 PYTHONPATH="$NEW:$PWD" timeout "${TEST_TIMEOUT:-240}" python3 -m pytest -q -x \
    tests/kernels/test_implicit.py tests/algorithms/test_reference_grid.py -k "${TEST_FILTER:-implicit}" \
    > "$OUT/tests.log" 2>&1; echo "tests rc=$?" >> "$OUT/tests.log" ) &
tests=$!
if [[ -n "${BASE:-}" ]]; then
    PYTHONPATH="$BASE" python3 scripts/bench_grouped_3d.py --label old --warm-only --workers 4 2> "$OUT/warm_old.err" &
fi
PYTHONPATH="$NEW" python3 scripts/bench_grouped_3d.py --label new --warm-only --workers "${WORKERS:-10}" 2> "$OUT/warm_new.err"
wait $(jobs -p | grep -v "^$tests\$") 2>/dev/null
wait "$tests"; tail -3 "$OUT/tests.log"
if [[ -n "${BASE:-}" ]]; then
    PYTHONPATH="$BASE" python3 scripts/bench_grouped_3d.py --label old --no-cudnn --out "$OUT/old.json" > "$OUT/old.log" 2>&1
fi
PYTHONPATH="$NEW" python3 scripts/bench_grouped_3d.py --label new --out "$OUT/new.json" > "$OUT/new.log" 2>&1
python3 scripts/bench_grouped_3d.py --table "$OUT"/new.json ${BASE:+"$OUT/old.json"} | tee "$OUT/table.txt"
