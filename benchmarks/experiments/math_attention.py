"""Would plain batched matmuls beat PyTorch's CPU flash kernel on issue 15's equal-length
case (causal, 8 heads, D 64, fp32, forward + backward)? The "math" path materialises the
(L, L) probabilities, keeps them for the backward (no recompute) and runs five bmm calls and
two softmax passes; the flash kernel recomputes the scores in its backward.

Implementations, taking turns, median wall ms per forward + backward:

* ``padded SDPA``: ``F.scaled_dot_product_attention(is_causal=True)`` on contiguous
  (B, H, L, D) tensors (issue 15's peer);
* ``adaptkern``: ``ak.varlen_attention`` on the packed (T, H, D) tensors (cpu backend);
* ``bmm, contiguous``: the math path on contiguous (B*H, L, D) tensors: its best case, an
  input layout the packed op does not have;
* ``bmm, packed``: the math path on the packed tensors, one bmm per sequence on its
  (H, L, D) strided view (no copies), outputs written in place.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/experiments/math_attention.py

Measured on the idle 2-core machine (2026-12-07, torch 2.13.0 CPU), ratio = padded SDPA ms /
the implementation's ms (> 1: faster than the peer):

    case      padded SDPA ms  adaptkern  bmm, contiguous  bmm, packed
    8 x 128            8.22      0.99x            1.07x        0.94x
    16 x 64             5.51      0.99x            1.25x        0.76x
    4 x 256           13.24      0.98x            0.83x        1.00x
    (second run: 8.28 / 0.99 / 1.07 / 0.94, 5.28 / 0.99 / 1.27 / 0.74, 13.55 / 0.98 / 0.92 / 0.99)

Not adopted: the math path wins only on the contiguous layout and short sequences (and loses
at 256 and beyond: 0.5x at 1 x 1024 in a scratch run); on the packed layout, what the op
receives, one bmm per sequence loses to the flash kernel at the goal's 8 x 128, and copying
to a (B*H, L, D) layout and back (a scratch variant) cost more than the math path saves
(0.54-0.77x). It would also need lse (one more pass) to keep the op's contract.
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

HEADS, DIM = 8, 64


def _causal_bias(length):
    return torch.zeros(length, length).masked_fill_(torch.ones(length, length, dtype=torch.bool).triu_(1),
                                                    float("-inf"))


class _Contiguous(torch.autograd.Function):
    """Math attention on (B, H, L, D) contiguous tensors, probabilities kept."""

    @staticmethod
    def forward(ctx, q, k, v):
        batch, heads, length, dim = q.shape
        qf, kf, vf = (x.reshape(batch * heads, length, dim) for x in (q, k, v))
        probs = torch.softmax(torch.baddbmm(_causal_bias(length), qf, kf.transpose(1, 2), alpha=dim ** -0.5), -1)
        ctx.save_for_backward(qf, kf, vf, probs)
        ctx.shape = q.shape
        return torch.bmm(probs, vf).view(q.shape)

    @staticmethod
    def backward(ctx, grad):
        qf, kf, vf, probs = ctx.saved_tensors
        grad = grad.reshape(qf.shape)
        dv = torch.bmm(probs.transpose(1, 2), grad)
        ds = torch._softmax_backward_data(torch.bmm(grad, vf.transpose(1, 2)), probs, -1, qf.dtype)
        ds.mul_(qf.shape[-1] ** -0.5)
        return tuple(g.view(ctx.shape) for g in (torch.bmm(ds, kf), torch.bmm(ds.transpose(1, 2), qf), dv))


class _Packed(torch.autograd.Function):
    """Math attention on packed (T, H, D) tensors of equal lengths, one bmm per sequence on
    its (H, L, D) view, results written in place."""

    @staticmethod
    def forward(ctx, q, k, v, length):
        count, scale = q.shape[0] // length, q.shape[-1] ** -0.5
        bias, out = _causal_bias(length), torch.empty_like(q)
        probs = torch.empty(count, q.shape[1], length, length)
        for i in range(count):
            rows = slice(i * length, (i + 1) * length)
            qs, ks, vs = (x[rows].transpose(0, 1) for x in (q, k, v))
            torch.softmax(torch.baddbmm(bias, qs, ks.transpose(1, 2), alpha=scale), -1, out=probs[i])
            torch.bmm(probs[i], vs, out=out[rows].transpose(0, 1))
        ctx.save_for_backward(q, k, v, probs)
        ctx.length = length
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, probs = ctx.saved_tensors
        length, scale = ctx.length, q.shape[-1] ** -0.5
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        for i in range(q.shape[0] // length):
            rows = slice(i * length, (i + 1) * length)
            qs, ks, vs, gs = (x[rows].transpose(0, 1) for x in (q, k, v, grad))
            torch.bmm(probs[i].transpose(1, 2), gs, out=dv[rows].transpose(0, 1))
            ds = torch._softmax_backward_data(torch.bmm(gs, vs.transpose(1, 2)), probs[i], -1, q.dtype).mul_(scale)
            torch.bmm(ds, ks, out=dq[rows].transpose(0, 1))
            torch.bmm(ds.transpose(1, 2), qs, out=dk[rows].transpose(0, 1))
        return dq, dk, dv, None


def main(cases=((8, 128), (16, 64), (4, 256)), rounds=40):
    torch.manual_seed(0)
    print(f"{'case':9} {'padded SDPA ms':>14} {'adaptkern':>10} {'bmm, contiguous':>16} {'bmm, packed':>12}")
    for batch, length in cases:
        total = batch * length
        packed = [torch.randn(total, HEADS, DIM) for _ in range(4)]
        padded = [x.view(batch, length, HEADS, DIM).transpose(1, 2).contiguous() for x in packed]
        cu = torch.arange(0, total + 1, length, dtype=torch.int32)
        impls = {
            "padded SDPA": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), padded),
            "adaptkern": (lambda q, k, v: ak.varlen_attention(q, k, v, cu, cu, length, length, causal=True), packed),
            "bmm, contiguous": (_Contiguous.apply, padded),
            "bmm, packed": (lambda q, k, v: _Packed.apply(q, k, v, length), packed),
        }
        reference = None
        times = {name: [] for name in impls}
        with ak.validation(False):
            for name, (fn, (q, k, v, grad)) in impls.items():  # every implementation checked first
                leaves = [x.clone().requires_grad_() for x in (q, k, v)]
                fn(*leaves).backward(grad)
                got = [leaf.grad if leaf.dim() == 3 else leaf.grad.transpose(1, 2).reshape(total, HEADS, DIM)
                       for leaf in leaves]
                reference = reference or got
                error = max(float((a - b).abs().max()) for a, b in zip(got, reference))
                assert error < 1e-4, (name, error)
            for _ in range(rounds):
                for name, (fn, (q, k, v, grad)) in impls.items():
                    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
                    started = time.perf_counter()
                    fn(*leaves).backward(grad)
                    times[name].append(time.perf_counter() - started)
        median = {name: statistics.median(t[3:]) for name, t in times.items()}
        peer = median["padded SDPA"]
        print(f"{batch} x {length:<4} {1e3 * peer:14.2f} " + " ".join(
            f"{peer / median[name]:{w}.2f}x" for name, w in (("adaptkern", 9), ("bmm, contiguous", 15),
                                                             ("bmm, packed", 11))))


if __name__ == "__main__":
    main()
