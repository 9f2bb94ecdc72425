#!/usr/bin/env bash
# The GPU check's test stage, in parallel shards (called by benchmarks/gpu_check.sh):
#
#     bash benchmarks/gpu_test_shards.sh LOG_DIR LIMIT_SECONDS SHARDS MARKERS [PYTEST_ARG...]
#
# On a GPU every Triton kernel specialization the tests launch is compiled once, on first
# launch: the kernel tests launch 415 distinct ones (counted under the interpreter on
# 2026-12-07 by kernel, constexprs, dtypes, pointer alignment and Triton's int
# specialisation; 315 by constexprs and dtypes alone), 0.6-0.8 s each with Triton 3.6
# (benchmarks/experiments/compile_times.py), 4-5 minutes for one pytest process. So
# the selected tests are cut into SHARDS contiguous slices, run by as many pytest processes
# at once (they share the GPU and Triton's on-disk cache).
# Each shard runs under LIMIT_SECONDS and logs to LOG_DIR/tests-<i>.log; this prints every
# shard's summary and exits 0 only if every shard passed (pytest's exit 5, nothing
# collected, counts as a failure).
set -u -o pipefail

DIR=$1 LIMIT=$2 SHARDS=$3 MARKERS=$4
shift 4
PY=${PYTHON:-python3}
# Each shard mostly waits on Triton compiles and the GPU: two CPU threads each, not all cores.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

"$PY" -m pytest tests -m "$MARKERS" --collect-only -q -p no:cacheprovider "$@" >"$DIR/collect.log" 2>&1
rc=$?
if [ "$rc" -ne 0 ]; then  # 5: nothing selected; else an error (it may still have listed tests)
    echo "collecting the tests failed (exit $rc):" >&2
    tail -n 5 "$DIR/collect.log" >&2
    exit "$rc"
fi
mapfile -t IDS < <(grep '::' "$DIR/collect.log")
[ "$SHARDS" -ge 1 ] || SHARDS=1
[ "$SHARDS" -le "${#IDS[@]}" ] || SHARDS=${#IDS[@]}
echo "collected ${#IDS[@]} tests (-m '$MARKERS'), $SHARDS shards, ${LIMIT}s each"

PIDS=()
for ((s = 0; s < SHARDS; s++)); do
    # Contiguous slices, not round-robin: neighbouring tests launch the same kernels, and a
    # specialization is compiled once per process that launches it.
    FIRST=$(( s * ${#IDS[@]} / SHARDS ))
    LAST=$(( (s + 1) * ${#IDS[@]} / SHARDS ))
    SHARD=("${IDS[@]:$FIRST:$((LAST - FIRST))}")
    timeout -k 5 "$LIMIT" "$PY" -m pytest -q -rfEs -p no:cacheprovider "$@" "${SHARD[@]}" \
        >"$DIR/tests-$s.log" 2>&1 &
    PIDS+=($!)
done

STATUS=0
for ((s = 0; s < SHARDS; s++)); do
    wait "${PIDS[$s]}"
    rc=$?
    case $rc in
        0) verdict=passed ;;
        124 | 137) verdict="TIMED OUT after ${LIMIT}s" ;;
        *) verdict="FAILED (exit $rc)" ;;
    esac
    [ "$rc" -eq 0 ] || STATUS=1
    echo "shard $s: $verdict: $(grep -E '(passed|failed|error|skipped|no tests ran)' "$DIR/tests-$s.log" | tail -n 1)"
done
for ((s = 0; s < SHARDS; s++)); do
    grep -E '^(FAILED|ERROR) ' "$DIR/tests-$s.log"
done
exit "$STATUS"
