"""Fixed cost of one varlen attention forward + backward on a tiny CPU input (1 sequence of
8 tokens, 1 head, D 8), where the kernel itself takes a few microseconds: what is left is
Python and dispatch. Rows, in microseconds of CPU time per forward + backward (min and
median over 15 rounds of 200 calls, the implementations taking turns):

* ``adaptkern (direct)``: ``ak.varlen_attention`` in plain eager mode, which runs the op's
  implementation and autograd directly (adaptkern.ops._eager);
* ``adaptkern (through the op)``: the same call with every op routed through
  torch.library's Python autograd and dispatch layers (what it was before
  adaptkern.ops._eager);
* ``bare autograd.Function``: the same two CPU flash kernels in a minimal Python
  ``torch.autograd.Function`` (views in, views out; no checks, no op, no lse output): the
  least any Python-level op around those kernels can cost;
* ``padded SDPA``: ``F.scaled_dot_product_attention`` with is_causal (all C++).

Two columns: "hot", calls back to back (the interpreter's code and data stay in the caches),
and "cold", each call after an untimed pass over 32 MB and a 512 x 512 matmul, as in a
model where every attention call follows kernels that stream megabytes through the caches.
The cold fixed cost is what a real step pays (compare the 8 x 128 case's CPU-time gap).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/eager_overhead.py``
"""

import os

# Written for, and measured on, the cpu backend's composition of PyTorch's CPU flash kernel,
# which float32 used before the compiled kernel (commit 4ad28ee): that path unless told
# otherwise (ADAPTKERN_CPU_NATIVE=1 times the compiled kernel instead).
os.environ.setdefault("ADAPTKERN_CPU_NATIVE", "0")

import statistics
import time

import torch
import torch.nn.functional as F

import adaptkern as ak
from adaptkern.ops import _eager

_FLASH = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default
_FLASH_BACKWARD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward.default


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


def _cold_call_us(fns, rounds=5, calls=60):
    """As :func:`_per_call_us`, each call timed alone after an untimed pass that evicts the
    caches (a 32 MB in-place add and a 512 x 512 matmul)."""
    buffer, matrix = torch.zeros(8 * 2 ** 20), torch.randn(512, 512)
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            spent = 0.0
            for _ in range(calls):
                buffer.add_(1.0)
                matrix @ matrix
                start = time.process_time()
                fn()
                spent += time.process_time() - start
            times[name].append(spent / calls * 1e6)
    return {name: (min(t), statistics.median(t)) for name, t in times.items()}


class _Bare(torch.autograd.Function):
    """Causal attention of one (L, H, D) sequence by the CPU flash kernels, nothing else."""

    @staticmethod
    def forward(ctx, q, k, v):
        length, heads, dim = q.shape
        views = [x.view(1, length, heads, dim).transpose(1, 2) for x in (q, k, v)]
        out, lse = _FLASH(*views, 0.0, True)
        ctx.save_for_backward(*views, out, lse)
        return out.transpose(1, 2).view(length, heads, dim)

    @staticmethod
    def backward(ctx, grad):
        q, k, v, out, lse = ctx.saved_tensors
        grads = _FLASH_BACKWARD(grad.view(1, *grad.shape).transpose(1, 2), q, k, v, out, lse, 0.0, True)
        return tuple(g.transpose(1, 2).view(grad.shape) for g in grads)


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

    def bare():
        _Bare.apply(*bare_leaves).backward(grad)

    def sdpa():
        F.scaled_dot_product_attention(*padded, is_causal=True).backward(grad_padded)

    bare_leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    fns = {"adaptkern (direct)": direct, "adaptkern (through the op)": through_op, "bare autograd.Function": bare,
           "padded SDPA": sdpa}
    with ak.validation(False):
        hot, cold = _per_call_us(fns), _cold_call_us(fns)
    print("us of CPU time per forward + backward, min and median over rounds")
    for name in fns:
        print(f"{name:28} hot min {hot[name][0]:7.1f}, median {hot[name][1]:7.1f};   "
              f"cold min {cold[name][0]:7.1f}, median {cold[name][1]:7.1f}")


if __name__ == "__main__":
    main()
