"""How long Triton takes to compile adaptkern's kernels for an H100 (sm_90), without a GPU.

The GPU check's test stage (benchmarks/gpu_test_shards.sh) has to compile every kernel
specialization its tests launch, once each, on a fresh machine; this sizes that cost. It
compiles the representative launches of ``adaptkern bench --static``
(``adaptkern.bench.static.AUDIT_LAUNCHES``: attention forward and backward at head dims 64
and 128, patch embedding, interpolation) for sm_90 through Triton's own launch path with a
driver that never launches, into a fresh cache, and prints each compile's wall time:

    .venv/bin/python benchmarks/experiments/compile_times.py

On the 2-core dev machine, idle, 2026-12-07, with Triton 3.6.0 (torch 2.11, the lent GPU's
versions; `/tmp/v211/bin/python`, see the README's "Supported versions"): 16 compiles in
9.6 s and 9.3 s (two runs), 0.10-1.62 s each (attention forward 1.15-1.62 s, its backward
kernels 0.56-0.98 s, the rest 0.35-0.58 s); with Triton 3.9.0 (.venv) 16.2 s. At 0.6 s the
415 specializations the kernel tests launch take about 4 minutes in one process, past the
test stage's 170 s: hence the shards.
"""

import tempfile
import time

import triton
from triton.backends.compiler import GPUTarget
from triton.runtime.jit import JITFunction

from adaptkern.bench.static import AUDIT_LAUNCHES


class CompileOnlyDriver:
    """What JITFunction.run asks of a driver, for an sm_90 GPU that is never launched on."""

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0


def main():
    timed = []
    launch = JITFunction.run

    def compile_and_time(self, *args, grid, warmup, **kwargs):
        start = time.perf_counter()
        compiled = launch(self, *args, grid=grid, warmup=True, **kwargs)
        timed.append((self.fn.__name__, time.perf_counter() - start))
        return compiled

    with tempfile.TemporaryDirectory() as cache:
        triton.knobs.cache.dir = cache
        triton.runtime.driver.set_active(CompileOnlyDriver())
        JITFunction.run = compile_and_time
        for code in AUDIT_LAUNCHES.values():
            exec(compile(code, "<launches>", "exec"), {})
    for name, seconds in timed:
        print(f"{name:22} {seconds:5.2f} s")
    print(f"Triton {triton.__version__}: {len(timed)} compiles for sm_90 in {sum(s for _, s in timed):.1f} s")


if __name__ == "__main__":
    main()
