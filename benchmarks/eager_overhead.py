"""Fixed cost of one varlen attention forward + backward on a tiny CPU input (1 sequence of
8 tokens, 1 head, D 8), where the kernel itself takes a few microseconds: what is left is
Python and dispatch. Rows, in microseconds of CPU time per forward + backward (min and
median over 15 rounds of 200 calls, the implementations taking turns):

* ``adaptkern (direct)``: ``ak.varlen_attention`` in plain eager mode, which runs the op's
  implementation and autograd directly (adaptkern.ops._eager);
* ``adaptkern (through the op)``: the same call with every op routed through
  torch.library's Python autograd and dispatch layers (what it was before
  adaptkern.ops._eager);
* ``padded SDPA``: ``F.scaled_dot_product_attention`` with is_causal (all C++).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/eager_overhead.py``
"""

import statistics
import time

import torch
import torch.nn.functional as F

import adaptkern as ak
from adaptkern.ops import _eager


def _per_call_us(fns, rounds=15, calls=200):
    """{name: (min, median) over rounds of the mean CPU time per call}; the implementations
    take turns within each round, so a slow spell of the machine hits them alike."""
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(10):
                fn()
            start = time.process_time()
            for _ in range(calls):
                fn()
            times[name].append((time.process_time() - start) / calls * 1e6)
    return {name: (min(t), statistics.median(t)) for name, t in times.items()}


def main():
    torch.manual_seed(0)
    length, heads, dim = 8, 1, 8
    q, k, v, grad = (torch.randn(length, heads, dim) for _ in range(4))
    cu = torch.tensor([0, length], dtype=torch.int32)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    padded = [t.clone()[None].transpose(1, 2).requires_grad_() for t in (q, k, v)]
    grad_padded = grad[None].transpose(1, 2)

    def direct():
        ak.varlen_attention(*leaves, cu, cu, length, length, causal=True, backend="cpu").backward(grad)

    def through_op():
        route = _eager._route
        _eager._route = lambda args, differentiable: "op"
        try:
            direct()
        finally:
            _eager._route = route

    def sdpa():
        F.scaled_dot_product_attention(*padded, is_causal=True).backward(grad_padded)

    fns = {"adaptkern (direct)": direct, "adaptkern (through the op)": through_op, "padded SDPA": sdpa}
    with ak.validation(False):
        results = _per_call_us(fns)
    for name, (fastest, median) in results.items():
        print(f"{name:28} min {fastest:7.1f} us, median {median:7.1f} us per forward + backward")


if __name__ == "__main__":
    main()
