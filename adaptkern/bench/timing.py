"""Timing shared by every benchmark: CUDA events through ``triton.testing.do_bench`` on a
GPU (median and 20/80 percentiles, cache flushed between runs), a wall-clock loop on CPU
(or, inside ``cpu_clock()``, the process's CPU time: on a machine whose cores other jobs
share, that leaves out the time spent waiting for a core; meant for one thread, since idle
OpenMP workers spin and their CPU time counts too).
Value checks of index tensors are off while timing: each would add a host sync that the
peers do not pay (every result is checked, validated as usual, before it is timed)."""

import contextlib
import statistics
import time

import torch

from .._checks import validation

_CPU_CLOCK = [time.perf_counter]


@contextlib.contextmanager
def cpu_clock():
    """Time CPU runs by the process's CPU time (``time.process_time``) instead of wall time."""
    _CPU_CLOCK.append(time.process_time)
    try:
        yield
    finally:
        _CPU_CLOCK.pop()


def time_ms(fn, *, device, warmup_ms: float = 25.0, rep_ms: float = 100.0) -> dict:
    """Milliseconds per call of ``fn()``: {"median", "p20", "p80"}."""
    device = torch.device(device)
    with validation(False):
        if device.type == "cuda":
            from triton.testing import do_bench

            median, p20, p80 = do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
            return {"median": median, "p20": p20, "p80": p80}
        fn()  # warm-up: first-call allocations and caches
        clock, samples = _CPU_CLOCK[-1], []
        deadline = time.perf_counter() + rep_ms / 1e3
        while len(samples) < 3 or (time.perf_counter() < deadline and len(samples) < 1000):
            start = clock()
            fn()
            samples.append((clock() - start) * 1e3)
    quantiles = statistics.quantiles(samples, n=10)  # the loop takes at least 3 samples
    return {"median": statistics.median(samples), "p20": quantiles[1], "p80": quantiles[7]}


def tflops(flops: float, ms: float) -> float:
    return flops / (ms * 1e-3) / 1e12


def gbps(nbytes: float, ms: float) -> float:
    return nbytes / (ms * 1e-3) / 1e9
