#!/usr/bin/env bash
# The GPU run, in one call: the test suite on CUDA, then `corrmm bench`.
#
# Runs from a plain checkout on the GPU machine: no install, no network.
# python3 must be the interpreter that has torch (CUDA build) and triton.
#
#   scripts/gpu_check.sh                      # tests, then the full benchmark (bf16 + tf32)
#   scripts/gpu_check.sh --tests-only
#   scripts/gpu_check.sh --tier quick         # tests only: every algorithm, pass and dtype on a few
#                                             # geometries, and the cheap tests (under 4 minutes on an H100)
#   scripts/gpu_check.sh --shard grid-a       # tests only: one shard of the full tier, under 8 minutes each:
#                                             # grid-a grid-b grid-c kernels integrations core, or N/M
#   scripts/gpu_check.sh --bench-only -- --models resnet18 --steps 10   # the model benchmark
#   scripts/gpu_check.sh --bench-only --quick --layers L1,S2,R1
#   scripts/gpu_check.sh -- --dtype bf16      # everything after -- goes to bench
#   CORRMM_AUTOTUNE=0 scripts/gpu_check.sh --tests-only   # one tile config per kernel: no
#                                             # autotuning for every new test shape, which dominates the run
#
# The benchmark phase also runs scripts/host_overhead.py (host µs per call, layer by layer).
#
# --tier and --shard run the tests alone, with CORRMM_AUTOTUNE=0 unless it is set,
# in CORRMM_TEST_WORKERS processes (default 8; 0: one) when pytest-xdist is
# installed (tests/tiers.py says what each holds). Unrecognised arguments are passed to
# `corrmm bench` too. PYTEST_ARGS adds pytest options (default: -q -x; tier and
# shard runs add --durations=15). Logs and results land in $OUT (default ./out):
# env.log, tests.log, host.log, host_overhead.log, bench.log, bench.json, bench.png.
# Exit status: non-zero if the tests or the benchmark failed; both run either way.
set -uo pipefail

cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"  # the package, uninstalled
export PYTHONUNBUFFERED=1                                # logs as they happen, through tee
export CORRMM_TEST_DEVICE=cuda                           # the tests run on the GPU
OUT="${OUT:-$PWD/out}"
mkdir -p "$OUT"

run_tests=1
run_bench=1
bench_args=()
tier_args=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --tests-only) run_bench=0 ;;
        --bench-only) run_tests=0 ;;
        --tier|--shard)
            [[ $# -ge 2 ]] || { echo "gpu_check.sh: $1 needs a value" >&2; exit 2; }
            tier_args+=("$1" "$2"); run_bench=0; shift ;;
        -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
        --) shift; bench_args+=("$@"); break ;;
        *) bench_args+=("$1") ;;
    esac
    shift
done

{
    echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ) $(hostname)"
    nvidia-smi -L || echo "nvidia-smi failed"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader || true
    git rev-parse --short HEAD 2>/dev/null && git status --short 2>/dev/null | head -20
    python3 - <<'EOF'
import sys, torch
print("python", sys.version.split()[0])
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(),
      "gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else None)
try:
    import triton
    print("triton", triton.__version__)
except Exception as err:
    print("triton: not importable:", err)
import corrmm
print("corrmm", corrmm.__version__, "from", corrmm.__file__, "algorithms", corrmm.algorithms())
EOF
} 2>&1 | tee "$OUT/env.log"
env_status=$?

tests_status=0
if [[ $run_tests == 1 ]]; then
    pytest_args=${PYTEST_ARGS:--q -x}
    if [[ ${#tier_args[@]} -gt 0 ]]; then
        export CORRMM_AUTOTUNE="${CORRMM_AUTOTUNE:-0}"  # one tile config per kernel: tuning every test shape dominates
        pytest_args="--durations=15 $pytest_args"  # a --durations in PYTEST_ARGS wins
        # new geometries compile new kernels, on the CPU: spread the tests over processes when
        # pytest-xdist is there (CORRMM_TEST_WORKERS=0 runs them in one)
        workers="${CORRMM_TEST_WORKERS:-8}"
        if [[ $workers != 0 ]] && python3 -c "import xdist" 2>/dev/null; then
            pytest_args="-n $workers $pytest_args"
        fi
    fi
    echo "== tests on CUDA ${tier_args[*]:-(everything)}, CORRMM_AUTOTUNE=${CORRMM_AUTOTUNE:-1}" | tee "$OUT/tests.log"
    started=$SECONDS
    # shellcheck disable=SC2086  # pytest_args is a list of options
    python3 -m pytest $pytest_args ${tier_args[@]+"${tier_args[@]}"} tests 2>&1 | tee -a "$OUT/tests.log"
    tests_status=$?
    echo "== tests exit status $tests_status after $((SECONDS - started)) s" | tee -a "$OUT/tests.log"
fi

bench_status=0
if [[ $run_bench == 1 ]]; then
    # defaults first: a --dtype among the extra arguments overrides ours (argparse keeps the last)
    python3 scripts/host_overhead.py --out "$OUT" > "$OUT/host.log" 2>&1 || echo "host_overhead.py failed (see host.log)"
    python3 -m corrmm bench --dtype bf16 tf32 --json "$OUT/bench.json" --plot "$OUT/bench.png" \
        ${bench_args[@]+"${bench_args[@]}"} 2>&1 | tee "$OUT/bench.log"
    bench_status=$?
    echo "== bench exit status $bench_status" | tee -a "$OUT/bench.log"
fi

echo "== done: env $env_status, tests $tests_status, bench $bench_status; results in $OUT"
[[ $env_status == 0 && $tests_status == 0 && $bench_status == 0 ]]
