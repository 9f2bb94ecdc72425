#!/usr/bin/env bash
# One command for a machine with an NVIDIA GPU and no network (torch and triton already
# installed), run from the repository root:
#
#     bash benchmarks/gpu_check.sh [RESULTS_DIR]
#
# 1. installs adaptkern without dependencies, building the CUDA extension
#    (pip install --no-deps --no-build-isolation -e .; falls back to no extension on failure),
# 2. runs the tests marked `gpu` and the Triton kernel tests (`interpret`) on CUDA, in
#    TEST_SHARDS parallel pytest processes (default: half the cores, at most 8; see that script),
# 3. runs `adaptkern bench --quick`,
# and leaves the logs, the results JSON, its PNG and summary.md in RESULTS_DIR (default: $OUT
# when set, else benchmarks/results/gpu-check-<time>). Every stage has its own time limit, so
# with the default limits the whole run stays under 10 minutes even when the fallback install
# runs (140 + 80 + 170 + 160 s, plus at most 5 s each to stop a stage); a stage that fails or
# times out is reported and the next one still runs. Exit status: 0 when every stage passed.
#
# Environment: PYTHON (default python3), INSTALL_TIMEOUT / FALLBACK_TIMEOUT / TEST_TIMEOUT /
# BENCH_TIMEOUT (seconds; default 140 / 80 / 170 / 160), TEST_MARKERS (default "gpu or interpret"),
# TEST_SHARDS (default half the cores, at most 8),
# PYTEST_ARGS (extra pytest arguments), SKIP_INSTALL=1 (use the installed adaptkern),
# ALLOW_CPU=1 (run without a GPU: exercises this script; the bench then runs its CPU suite).
set -u -o pipefail

PY=${PYTHON:-python3}
DIR=${1:-${OUT:-benchmarks/results/gpu-check-$(date -u +%Y%m%d-%H%M%S)}}
INSTALL_TIMEOUT=${INSTALL_TIMEOUT:-140}
FALLBACK_TIMEOUT=${FALLBACK_TIMEOUT:-80}
TEST_TIMEOUT=${TEST_TIMEOUT:-170}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-160}
TEST_MARKERS=${TEST_MARKERS:-gpu or interpret}
CORES=$(nproc 2>/dev/null || echo 2)
TEST_SHARDS=${TEST_SHARDS:-$(( CORES / 2 > 8 ? 8 : (CORES / 2 < 1 ? 1 : CORES / 2) ))}
export PYTHONUNBUFFERED=1

if [ ! -f pyproject.toml ] || [ ! -d adaptkern ]; then
    echo "gpu_check.sh: run it from the adaptkern repository root" >&2
    exit 2
fi
mkdir -p "$DIR" || exit 2
SUMMARY="$DIR/summary.md"
STATUS=0
START=$(date +%s)
ROWS=""  # the summary's stage table, written at the end

# stage NAME TIMEOUT LOG COMMAND...: run with a time limit, log everything, record the outcome.
stage() {
    local name=$1 limit=$2 log=$3
    shift 3
    local t0 rc
    t0=$(date +%s)
    echo "== $name (limit ${limit}s, log $log)"
    timeout -k 5 "$limit" "$@" >"$log" 2>&1
    rc=$?
    tail -n 25 "$log"
    local verdict=passed
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        verdict="TIMED OUT after ${limit}s"
    elif [ "$rc" -ne 0 ]; then
        verdict="FAILED (exit $rc)"
    fi
    [ "$verdict" = passed ] || STATUS=1
    ROWS+="| $name | $verdict | $(( $(date +%s) - t0 )) s | \`$(basename "$log")\` |"$'\n'

    echo "== $name: $verdict"
    return "$rc"
}

{
    echo "# adaptkern GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo
    echo '```'
    git rev-parse HEAD 2>/dev/null || echo "(not a git checkout)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "nvidia-smi: unavailable"
    "$PY" -c 'import sys, torch, triton; print("python", sys.version.split()[0], "| torch", torch.__version__,
"| cuda", torch.version.cuda, "| triton", triton.__version__, "| gpu", torch.cuda.is_available() and torch.cuda.get_device_name())'
    echo '```'
} >"$SUMMARY" 2>&1
cat "$SUMMARY"

if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    if [ "${ALLOW_CPU:-0}" != 1 ]; then
        echo "gpu_check.sh: $PY sees no CUDA GPU (set ALLOW_CPU=1 to exercise the script anyway)" | tee -a "$SUMMARY" >&2
        exit 2
    fi
    echo "gpu_check.sh: no CUDA GPU; ALLOW_CPU=1, running anyway (GPU stages skip themselves)" | tee -a "$SUMMARY"
fi

# 1. Install, building the CUDA extension for this GPU's architecture only (faster).
if [ "${SKIP_INSTALL:-0}" = 1 ]; then
    ROWS+="| install | skipped (SKIP_INSTALL=1) | 0 s | |"$'\n'

else
    ARCH=$("$PY" -c 'import torch; m, n = torch.cuda.get_device_capability(); print(f"{m}{n}")' 2>/dev/null || echo 90)
    if ! stage "install (CUDA extension, sm_$ARCH)" "$INSTALL_TIMEOUT" "$DIR/install.log" \
            env ADAPTKERN_BUILD_CUDA=1 ADAPTKERN_CUDA_ARCHS="$ARCH" \
            "$PY" -m pip install --no-deps --no-build-isolation --no-index -e .; then
        echo "   the CUDA extension did not build: installing without it so the Triton checks still run"
        stage "install (no CUDA extension)" "$FALLBACK_TIMEOUT" "$DIR/install-fallback.log" \
            env ADAPTKERN_BUILD_CUDA=0 "$PY" -m pip install --no-deps --no-build-isolation --no-index -e . || {
            echo "gpu_check.sh: adaptkern could not be installed; see $DIR/install*.log" >&2
            exit 1
        }
    fi
fi
{
    echo
    echo '```'
    "$PY" -m adaptkern info 2>&1 || echo "adaptkern info failed"
    echo '```'
    echo
} >>"$SUMMARY"

# 2. GPU-marked tests and the Triton kernel tests, on CUDA (tests/conftest.py picks the GPU).
#    pyproject's addopts pass --benchmark-disable, which pytest rejects unless pytest-benchmark
#    is installed (--no-deps above installs nothing): then override addopts without it.
ADDOPTS=()
if ! "$PY" -c 'import pytest_benchmark' 2>/dev/null; then
    ADDOPTS=(-o 'addopts=-ra --strict-markers')
fi
#    In TEST_SHARDS pytest processes at once (benchmarks/gpu_test_shards.sh says why: the
#    Triton compiles of first launches), each under TEST_TIMEOUT less 10 s.
stage "tests -m '$TEST_MARKERS' ($TEST_SHARDS shards)" "$TEST_TIMEOUT" "$DIR/tests.log" \
    env PYTHON="$PY" bash benchmarks/gpu_test_shards.sh "$DIR" $((TEST_TIMEOUT - 10)) "$TEST_SHARDS" \
    "$TEST_MARKERS" ${ADDOPTS[@]+"${ADDOPTS[@]}"} ${PYTEST_ARGS:-}

# 3. The quick benchmark: results JSON (saved after every case, so a time-out keeps what ran)
#    and PNG land in $DIR.
stage "adaptkern bench --quick" "$BENCH_TIMEOUT" "$DIR/bench.log" \
    "$PY" -m adaptkern bench --quick --out "$DIR" --no-progress

{
    echo "| stage | result | time | log |"
    echo "|---|---|---|---|"
    printf '%s' "$ROWS"
    echo
    echo "Total: $(( $(date +%s) - START )) s. Files: $(cd "$DIR" && ls | tr '\n' ' ')"
    if ls "$DIR"/*.json >/dev/null 2>&1; then
        echo
        echo "Markdown for the README: \`adaptkern bench --table FILE.json\` (FILE from this folder, once committed under benchmarks/results/)."
    fi
} >>"$SUMMARY"
echo
cat "$SUMMARY"
exit "$STATUS"
