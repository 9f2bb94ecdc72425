"""torch.compile(fullgraph=True) of every public op, forward and backward, on every backend
a CPU runs (triton under the interpreter, cpu, reference) and the default: backend
resolution (including whether Triton is importable and interpreting) must trace without a
graph break, and the compiled result must equal the eager one."""

import pytest
import torch

import adaptkern as ak
from adaptkern import _backend

BACKENDS = [pytest.param("triton", marks=pytest.mark.interpret), "cpu", "reference", None]


def _check(fn, inputs):
    """Compiled fn(*inputs) and its gradients equal the eager ones."""
    results = []
    for run in (torch.compile(fn, fullgraph=True, backend="aot_eager"), fn):
        leaves = [x.detach().clone().requires_grad_() for x in inputs]
        out = run(*leaves)
        grads = torch.autograd.grad(out.square().sum(), leaves)
        results.append((out, grads))
    (out, grads), (eager_out, eager_grads) = results
    torch.testing.assert_close(out, eager_out)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e)


@pytest.mark.parametrize("backend", BACKENDS)
def test_varlen_attention_compiles(backend):
    lengths = [5, 0, 3, 8]
    cu = ak.cu_seqlens_from_lengths(lengths)
    q, k, v = (torch.randn(16, 4, 16) for _ in range(3))
    _check(lambda q, k, v: ak.varlen_attention(q, k[:, :2], v[:, :2], cu, cu, 8, 8, causal=True, backend=backend),
           (q, k, v))


@pytest.mark.parametrize("backend", BACKENDS)
def test_patch_embed_compiles(backend):
    weight, bias = torch.randn(8, 3, 6, 6), torch.randn(8)
    ak.pi_resize_matrix(6, 4)  # the cache is filled before tracing
    images = torch.randn(2, 3, 8, 12)
    _check(lambda x, w, b: ak.flexi_patch_embed(x, w, b, 4, backend=backend), (images, weight, bias))
    _check(lambda x, y, w, b: ak.flexi_patch_embed_packed([x, y], w, b, 4, backend=backend).tokens,
           (images[0], images[1, :, :4], weight, bias))


@pytest.mark.parametrize("backend", BACKENDS)
def test_interp_pos_embed_compiles(backend):
    grids = [(2, 5), (3, 3), (2, 5)]
    grid_sizes = torch.tensor(grids, dtype=torch.int32)
    cu = ak.cu_seqlens_from_lengths([1 + h * w for h, w in grids])
    pos, tokens = torch.randn(4, 4, 6), torch.randn(int(cu[-1]), 6)
    _check(lambda p: ak.interp_pos_embed(p, grid_sizes, backend=backend, total_tokens=29), (pos,))
    _check(lambda t, p: ak.add_interp_pos_embed(t, p, grid_sizes, cu, num_prefix_tokens=1, backend=backend),
           (tokens, pos))


@pytest.mark.parametrize("backend", BACKENDS)
def test_pack_compiles(backend):
    x = torch.randn(3, 4, 2)
    _check(lambda x: ak.unpack(*ak.pack(x, [3, 1, 4], backend=backend)[:2], 4, backend=backend), (x,))


def test_resolution_is_decided_outside_the_graph():
    """What resolve_backend asks of the environment is a constant to Dynamo, never traced."""
    for fn in (_backend._triton_state, _backend.interpreter_problem):
        assert getattr(fn, "_dynamo_marked_constant", False), fn.__name__
