"""Would the equal-length case (issue 15's 8 x 128 goal) reach padded SDPA if PyTorch's own
autograd differentiated the cpu backend, instead of the op's autograd.Function?

For uniform lengths and no window, the cpu backend's forward is one call of
``aten._scaled_dot_product_flash_attention_for_cpu`` on views of the packed tensors, an aten
op whose registered derivative is the same backward kernel the op's backward calls. Run
with gradients on, it records a C++ graph and the backward runs no Python. Three
implementations, taking turns, each call after an untimed pass over 32 MB and a 512 x 512
matmul (as in a model step), median wall ms per forward + backward (causal, 8 heads, D 64,
fp32):

* ``adaptkern``: ``ak.varlen_attention`` (checks, custom-op autograd, Python backward);
* ``native autograd``: ``adaptkern.cpu.varlen_attention.varlen_attention_forward`` called
  with gradients on (no checks, PyTorch's autograd);
* ``padded SDPA``: ``F.scaled_dot_product_attention(is_causal=True)`` on (B, H, L, D) views.

Cases: 8 x 128 on 2 threads (the goal's case) and 1 x 8 on 1 thread (the fixed cost).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/experiments/native_autograd.py

Measured on the idle 2-core machine (2026-12-07, torch 2.13.0 CPU), two passes each:

    case                 adaptkern  native autograd  padded SDPA   SDPA/adaptkern  SDPA/native
    8 x 128, 2 threads     11.406       10.923          10.770         0.944          0.986
                           11.762       11.408          11.394         0.969          0.999
    1 x 8, 1 thread         0.656        0.415           0.231         0.353          0.557
                            0.760        0.501           0.297         0.391          0.593

Not adopted: even with no Python in the backward the 8 x 128 case only ties padded SDPA
(the same kernels; what Python is left in the forward still costs about 0.2 ms a call), and
the route would hide the attention from FlopCounterMode when only the backward runs under
the counter: the backward would then be aten's CPU flash backward, which torch's
FlopCounterMode does not count at all (torch 2.13 has no formula for it), where the op's
own backward is counted exactly; tests/test_eager_ops.py pins that case.
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
from adaptkern._checks import validation
from adaptkern.cpu import varlen_attention as cpu_attention


def measure(batch, length, threads, rounds, heads=8, dim=64):
    """{implementation: median ms} for one forward + backward."""
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    total = batch * length
    q, k, v, grad = (torch.randn(total, heads, dim, generator=generator) for _ in range(4))
    cu = torch.arange(0, total + 1, length, dtype=torch.int32)
    packed = [x.clone().requires_grad_() for x in (q, k, v)]
    padded = [x.view(batch, length, heads, dim).transpose(1, 2).detach().requires_grad_() for x in (q, k, v)]
    padded_grad = grad.view(batch, length, heads, dim).transpose(1, 2)

    def ours():
        ak.varlen_attention(*packed, cu, cu, length, length, causal=True).backward(grad)

    def native():
        cpu_attention.varlen_attention_forward(*packed, cu, cu, dim ** -0.5, True)[0].backward(grad)

    def sdpa():
        F.scaled_dot_product_attention(*padded, is_causal=True).backward(padded_grad)

    fns = {"adaptkern": ours, "native autograd": native, "padded SDPA": sdpa}
    stream, matrix = torch.randn(8 * 2**20), torch.randn(512, 512)
    samples = {name: [] for name in fns}
    with validation(False):
        for i in range(rounds):
            for name, fn in (fns.items() if i % 2 else reversed(list(fns.items()))):
                for leaf in packed + padded:
                    leaf.grad = None
                stream.mul_(1.0001)
                matrix @ matrix
                start = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(times[10:]) for name, times in samples.items()}


def main():
    for batch, length, threads, rounds in ((8, 128, 2, 200), (1, 8, 1, 1000)):
        for _ in range(2):
            ms = measure(batch, length, threads, rounds)
            row = ", ".join(f"{name} {value:.3f}" for name, value in ms.items())
            sdpa = ms["padded SDPA"]
            print(f"{batch} x {length}, {threads} thread(s): {row} ms; SDPA / adaptkern "
                  f"{sdpa / ms['adaptkern']:.3f}, SDPA / native {sdpa / ms['native autograd']:.3f}")


if __name__ == "__main__":
    main()
