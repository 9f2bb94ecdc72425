"""The cost model behind the cpu attention backend's length classes
(``adaptkern.cpu.varlen_attention.length_classes``), fitted and checked.

Self-attention sequences of nearby lengths can share one kernel call, zero-padded to the
longest: fewer calls, more (query, key) pairs computed, and copies in and out. The backend
estimates one call's forward + backward as

    CALL_SECONDS + sequences * H * D * (PAIR_SECONDS * L**2 + ROW_SECONDS * L [if copied])

This script times ``ak.varlen_attention`` forward + backward (cpu backend, float32, 8 heads,
D 64, causal and not) on packed batches of short and medium length mixes, each under two
forced plans (every length its own call; every length in one padded call), fits the three
constants by least squares over all the runs (median of interleaved repetitions each), and
then times the plans on the bench suite's ``cpu-small-noncausal`` mix: all exact, all
padded, and what the model chooses.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/experiments/length_classes.py

Run on the 2-core dev machine (2026-12-07, torch 2.13 CPU, this commit): the fit gave
5.05e-4 s per call, 1.39e-10 s per pair element and 2.41e-8 s per copied row element (the
module's 4e-4, 1.7e-10 and 4e-9 came from a first probe of single calls and a copy
microbenchmark; the fit's median relative error is 13%, max 35%). On cpu-small-noncausal
(lengths [61, 50, 46, 8, 57, 53, 51, 36, 36, 50, 40, 28]) fwd+bwd took 6.27 ms with every
length its own call, 12.45 ms all padded into one, 11.74 ms with the model's two classes
(non-causal; causal 6.46, 12.70, 11.71 ms): padding is slower here. Zero-filled padded
buffers and the gathers cost about 0.2 ms per 2 MB tensor, and the kernel's backward
costs about 9 us per (sequence, head) whatever the length, so padding saves only the
Python and fixed work of the calls it removes. Hence reverted.
"""

import statistics
import time

import numpy as np
import torch

import adaptkern as ak
from adaptkern.bench.varlen_attention import sample_lengths
from adaptkern.cpu import varlen_attention as cpu

HEADS, DIM = 8, 64


def _batch(lengths):
    gen = torch.Generator().manual_seed(len(lengths))
    total = sum(lengths)
    q, k, v, grad = (torch.randn(total, HEADS, DIM, generator=gen) for _ in range(4))
    return [t.requires_grad_() for t in (q, k, v)], grad, ak.cu_seqlens_from_lengths(lengths)


def _features(lengths, causal):
    """(calls, pair elements, copied row elements) of the plan in force for ``lengths``."""
    cu = ak.cu_seqlens_from_lengths(lengths)
    groups = cpu.buckets(cu, cu)
    calls = pairs = rows = 0
    for rows_q, _ in cpu._plan(groups, -1, 0 if causal else -1, HEADS * DIM):
        copied = isinstance(rows_q, cpu._PaddedRows) or not rows_q.consecutive
        calls += 1
        pairs += rows_q.n * rows_q.length ** 2 * HEADS * DIM
        rows += rows_q.n * rows_q.length * HEADS * DIM if copied else 0
    return calls, pairs, rows


def _force(mode):
    """Replace length_classes by a forced plan ("exact", "padded") or the model (None)."""
    original = _force.original = getattr(_force, "original", cpu.length_classes)
    if mode == "exact":
        cpu.length_classes = lambda counts, width: [[length] for length in sorted(counts)]
    elif mode == "padded":
        cpu.length_classes = lambda counts, width: [sorted(counts)] if counts else []
    else:
        cpu.length_classes = original


def _time(lengths, causal, modes, repeats=15):
    """{mode: median seconds of one forward + backward}, the modes taking turns."""
    leaves, grad, cu = _batch(lengths)
    longest = max(lengths)
    times = {mode: [] for mode in modes}
    for _ in range(repeats):
        for mode in modes:
            _force(mode)
            for t in leaves:
                t.grad = None
            start = time.perf_counter()
            ak.varlen_attention(*leaves, cu, cu, longest, longest, causal=causal, backend="cpu").backward(grad)
            times[mode].append(time.perf_counter() - start)
    _force(None)
    return {mode: statistics.median(t) for mode, t in times.items()}


def main():
    torch.manual_seed(0)
    mixes = [sample_lengths("small", 512, seed) for seed in range(3)]
    mixes += [[int(n) for n in torch.randint(64, 257, (6,), generator=torch.Generator().manual_seed(seed))]
              for seed in range(3)]
    rows, targets = [], []
    for lengths in mixes:
        for causal in (False, True):
            measured = _time(lengths, causal, ("exact", "padded"))
            for mode, seconds in measured.items():
                _force(mode)
                rows.append(_features(lengths, causal))
                targets.append(seconds)
            _force(None)
    constants, *_ = np.linalg.lstsq(np.array(rows, dtype=float), np.array(targets), rcond=None)
    fitted = np.array(rows, dtype=float) @ constants
    print(f"fit over {len(targets)} runs: {constants[0]:.2e} s per call, {constants[1]:.2e} s per pair element, "
          f"{constants[2]:.2e} s per copied row element; in the module: {cpu.CALL_SECONDS:.1e}, "
          f"{cpu.PAIR_SECONDS:.1e}, {cpu.ROW_SECONDS:.1e}")
    errors = np.abs(fitted - np.array(targets)) / np.array(targets)
    print(f"relative error of the fit: median {np.median(errors):.0%}, max {errors.max():.0%}")
    lengths = sample_lengths("small", 512, 0)
    counts = {n: lengths.count(n) for n in set(lengths)}
    print(f"\ncpu-small-noncausal lengths {lengths}: model's classes "
          f"{cpu.length_classes(counts, HEADS * DIM)}")
    for causal in (False, True):
        measured = _time(lengths, causal, ("exact", "padded", None), repeats=25)
        print(f"causal={causal}: " + ", ".join(f"{mode or 'model'} {seconds * 1e3:.2f} ms"
                                               for mode, seconds in measured.items()))


if __name__ == "__main__":
    main()
