"""The cpu backend's compiled attention kernel (adaptkern/cpu/varlen_attention.cpp) against
the composition it replaced for float32 (PyTorch's CPU flash kernel per length bucket,
``ADAPTKERN_CPU_NATIVE=0``) and against padded SDPA, over sequence lengths short and long,
causal and not, with GQA: is it faster everywhere, or only where issue 15 measures?

Each row: forward + backward of ``ak.varlen_attention`` on packed float32 tensors (8 heads
unless GQA, D=64), median wall ms over interleaved rounds (each implementation in turn), and
the ratios composed / compiled and padded SDPA / compiled (> 1: the compiled kernel faster).
Padded SDPA gets its inputs padded beforehand (not timed) and ``is_causal`` for causal rows,
a key mask otherwise.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/experiments/cpu_attention_kernel.py

Results are in benchmarks/README.md ("The compiled CPU attention kernel").
"""

import os
import statistics
import time

import torch

import adaptkern as ak
from adaptkern.bench.varlen_attention import _padded_sdpa
from adaptkern.cpu import native

# (name, lengths, causal, (Hq, Hkv))
CASES = [
    ("8 x 128 causal", [128] * 8, True, (8, 8)),
    ("16 x 64 causal", [64] * 16, True, (8, 8)),
    ("4 x 256 causal", [256] * 4, True, (8, 8)),
    ("2 x 512 causal", [512] * 2, True, (8, 8)),
    ("1 x 1024 causal", [1024], True, (8, 8)),
    ("1 x 2048 causal", [2048], True, (8, 8)),
    ("8 x 128 full", [128] * 8, False, (8, 8)),
    ("1 x 1024 full", [1024], False, (8, 8)),
    ("spread causal", [512, 32, 200, 8, 64, 16, 300, 24], True, (8, 8)),
    ("8 x 128 causal GQA 8/2", [128] * 8, True, (8, 2)),
]
DIM = 64


def measure(lengths, causal, heads, rounds):
    generator = torch.Generator().manual_seed(0)
    total = sum(lengths)
    q = torch.randn(total, heads[0], DIM, generator=generator)
    k, v = (torch.randn(total, heads[1], DIM, generator=generator) for _ in range(2))
    cu = ak.cu_seqlens_from_lengths(lengths)
    packed = [x.clone().requires_grad_() for x in (q, k, v)]
    pad, sdpa, _ = _padded_sdpa(lengths, causal, q.device)  # the benchmark suite's peer, inputs padded untimed
    padded = [pad(x).requires_grad_() for x in (q, k, v)]
    grad = torch.randn_like(q)
    padded_grad = torch.randn_like(padded[0])

    def ours():
        ak.varlen_attention(*packed, cu, cu, max(lengths), max(lengths), causal=causal).backward(grad)

    def composed():
        os.environ[native.ENV_VAR] = "0"
        try:
            ours()
        finally:
            del os.environ[native.ENV_VAR]

    def padded_sdpa():
        sdpa(*padded).backward(padded_grad)

    fns = {"compiled": ours, "composed": composed, "padded SDPA": padded_sdpa}
    samples = {name: [] for name in fns}
    with ak.validation(False):
        for i in range(rounds):
            for name, fn in (fns.items() if i % 2 else reversed(list(fns.items()))):
                for leaf in packed + padded:
                    leaf.grad = None
                start = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(times[2:]) for name, times in samples.items()}


def main():
    assert native.extension() is not None, native.status()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; fwd+bwd median ms; ratios > 1: compiled "
          "kernel faster")
    print(f"{'case':24} {'compiled':>9} {'composed':>9} {'padded SDPA':>12} {'composed/compiled':>18} "
          f"{'SDPA/compiled':>14}")
    for name, lengths, causal, heads in CASES:
        rounds = max(5, min(40, int(4e6 / sum(n * n for n in lengths))))
        ms = measure(lengths, causal, heads, rounds)
        print(f"{name:24} {ms['compiled']:9.2f} {ms['composed']:9.2f} {ms['padded SDPA']:12.2f} "
              f"{ms['composed'] / ms['compiled']:17.2f}x {ms['padded SDPA'] / ms['compiled']:13.2f}x")


if __name__ == "__main__":
    main()
