"""How long Triton takes to compile adaptkern's kernels for an H100 (sm_90), without a GPU.

The GPU check's test stage (benchmarks/gpu_test_shards.sh) has to compile every kernel
specialization its tests launch, once each, on a fresh machine; this sizes that cost. It
compiles the representative launches of ``adaptkern bench --static``
(``adaptkern.bench.static.AUDIT_LAUNCHES``: attention forward and backward at head dims 64
and 128, patch embedding, interpolation) for sm_90 the way that audit does
(``compile_launches``: Triton's own launch path, a driver that never launches), into a fresh
Triton cache, and prints each compile's wall time:

    .venv/bin/python benchmarks/experiments/compile_times.py

On the 2-core dev machine, idle, 2026-12-07, with Triton 3.6.0 (torch 2.11, the lent GPU's
versions; `/tmp/v211/bin/python`, see the README's "Supported versions"): 16 compiles in
12.4 s and 10.5 s (two runs), 0.10-1.48 s each in the second (attention forward 1.24-1.48 s,
its backward kernels 0.58-1.03 s, the rest 0.33-0.89 s); with Triton 3.9.0 (.venv) 17.6 s.
(An in-process version of the same compiles, before this script used ``compile_launches``,
gave 9.6 and 9.3 s with 3.6 and 16.2 s with 3.9.) At 0.6-0.8 s the 415 specializations the
kernel tests launch take 4-5 minutes in one process, past the test stage's 170 s: hence the
shards.
"""

import os
import tempfile

import triton

from adaptkern.bench.static import AUDIT_LAUNCHES, compile_launches


def main():
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TRITON_CACHE_DIR"] = cache  # the compiling subprocess inherits it
        launches = [launch for code in AUDIT_LAUNCHES.values() for launch in compile_launches(code, archs=(90,))]
    for launch in launches:
        print(f"{launch['kernel']:22} {launch['compile_s']:5.2f} s")
    total = sum(launch["compile_s"] for launch in launches)
    print(f"Triton {triton.__version__}: {len(launches)} compiles for sm_90 in {total:.1f} s")


if __name__ == "__main__":
    main()
