"""Where the time of one causal attention forward + backward over 8 x 128 equal lengths
(8 heads, D 64, fp32, CPU) goes, per implementation: PyTorch's CPU flash kernels (forward,
backward, the backward's gradient zeroing) under torch.profiler, ms per iteration, for

* ``adaptkern``: ``ak.varlen_attention`` on the packed (T, H, D) tensors (cpu backend);
* ``minimal``: the two kernels called on views of the packed tensors from a bare
  autograd.Function (no checks, no bucketing: the floor for a Python op);
* ``padded SDPA``: ``F.scaled_dot_product_attention(is_causal=True)`` on (B, H, L, D) views.

The implementations take turns (4 rounds of 10 profiled iterations each), so the kernels'
swing with the allocation history hits them alike.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/experiments/equal_kernels.py
"""

import os

# Written for, and measured on, the cpu backend's composition of PyTorch's CPU flash kernel,
# which float32 used before the compiled kernel (commit 4ad28ee): that path unless told
# otherwise (ADAPTKERN_CPU_NATIVE=1 times the compiled kernel instead).
os.environ.setdefault("ADAPTKERN_CPU_NATIVE", "0")

import collections

import torch
import torch.nn.functional as F
from torch.profiler import profile

import adaptkern as ak

KERNELS = {"aten::_scaled_dot_product_flash_attention_for_cpu": "forward",
           "aten::_scaled_dot_product_flash_attention_for_cpu_backward": "backward",
           "aten::fill_": "zeroing"}


def main(batch=8, length=128, heads=8, dim=64, rounds=4, iterations=10):
    torch.manual_seed(0)
    total = batch * length
    q, k, v, grad = (torch.randn(total, heads, dim) for _ in range(4))
    cu = torch.arange(0, total + 1, length, dtype=torch.int32)
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default
    flash_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward.default

    def heads_first(x):
        return x.view(batch, length, heads, dim).transpose(1, 2)

    class Minimal(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v):
            views = [heads_first(x) for x in (q, k, v)]
            out, lse = flash(*views, 0.0, True, scale=dim ** -0.5)
            ctx.save_for_backward(*views, out, lse)
            return out.transpose(1, 2).reshape(total, heads, dim)

        @staticmethod
        def backward(ctx, grad_out):
            grads = flash_backward(heads_first(grad_out), *ctx.saved_tensors, 0.0, True, scale=dim ** -0.5)
            return tuple(g.transpose(1, 2).reshape(total, heads, dim) for g in grads)

    def step(fn, leaves, grad_out):
        def run():
            for leaf in leaves:
                leaf.grad = None
            fn(*leaves).backward(grad_out)
        return run

    packed = [x.clone().requires_grad_() for x in (q, k, v)]
    minimal = [x.clone().requires_grad_() for x in (q, k, v)]
    padded = [heads_first(x.clone()).requires_grad_() for x in (q, k, v)]
    runs = {
        "adaptkern": step(lambda q, k, v: ak.varlen_attention(q, k, v, cu, cu, length, length, causal=True,
                                                              backend="cpu"), packed, grad),
        "minimal": step(Minimal.apply, minimal, grad),
        "padded SDPA": step(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), padded,
                            heads_first(grad)),
    }
    totals = collections.defaultdict(lambda: collections.defaultdict(float))
    with ak.validation(False):
        for _ in range(rounds):
            for name, run in runs.items():
                for _ in range(3):
                    run()
                with profile() as prof:
                    for _ in range(iterations):
                        run()
                for event in prof.key_averages():
                    if event.key in KERNELS:
                        totals[name][KERNELS[event.key]] += event.self_cpu_time_total / 1e3 / (rounds * iterations)
    for name, times in totals.items():
        print(f"{name:12} " + ", ".join(f"{part} {times[part]:.3f} ms" for part in KERNELS.values()))


if __name__ == "__main__":
    main()
