"""The Triton kernels of interp_pos_embed (under TRITON_INTERPRET=1 on CPU) and the CUDA ones
(on a GPU only) against per-grid F.interpolate in float64, forward and backward; plus a
codegen check compiling each Triton kernel for sm_80 / sm_90."""

import pytest
import torch

import adaptkern as ak
from adaptkern import _backend
from adaptkern.ops import interp_pos_embed as interp_ops

from helpers import assert_rel_close, compile_launches, torch_opts
from test_interp_pos_embed import OPTION_IDS, OPTIONS, interpolate_grid, oracle, oracle_add, packed_batch, random_grids
from test_pack import record_launch_devices

KERNEL_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _grads(fn, tokens, pos, weight):
    t, p = tokens.clone().requires_grad_(), pos.clone().requires_grad_()
    (fn(t, p).double() * weight).sum().backward()
    return t.grad, p.grad


def _check_add(backend, opts, grids, num_prefix_tokens, dim, dtype, device, base=(3, 5)):
    """add_interp_pos_embed on ``backend``: output and both gradients against the oracle."""
    tokens, grid_sizes, cu = packed_batch(grids, num_prefix_tokens, dim, dtype, device)
    pos = torch.randn(*base, dim, device=device).to(dtype)
    # base_grid: a (1, 5) grid with one prefix token could also read as timm's (1, 1 + 2*2, D)
    out = ak.add_interp_pos_embed(tokens, pos, grid_sizes, cu, num_prefix_tokens=num_prefix_tokens,
                                  backend=backend, base_grid=base, **opts)
    assert out.dtype == dtype
    assert_rel_close(out, oracle_add(tokens, pos, grids, num_prefix_tokens, **opts), name="out")
    weight = torch.randn(tokens.shape, dtype=torch.float64, device=device)
    run = lambda t, p: ak.add_interp_pos_embed(t, p, grid_sizes, cu, num_prefix_tokens=num_prefix_tokens,  # noqa
                                               backend=backend, base_grid=base, **opts)
    grad_tokens, grad_pos = _grads(run, tokens, pos, weight)
    _, expected = _grads(lambda t, p: oracle_add(t, p, grids, num_prefix_tokens, **opts), tokens, pos, weight)
    assert grad_tokens.dtype == dtype and torch.equal(grad_tokens, weight.to(dtype))
    assert_rel_close(grad_pos, expected, dtype, name="pos_embed.grad")


@pytest.mark.interpret
@pytest.mark.parametrize("opts", OPTIONS, ids=OPTION_IDS)
def test_triton_add_matches_interpolate(opts, device):
    grids = random_grids(3, 7, 9) + [(1, 1)]
    _check_add("triton", opts, grids, 2, 20, torch.float32, device)


@pytest.mark.interpret
def test_triton_finds_the_sequence_of_every_unit_past_one_search_block(device):
    """More sequences than one search block reads (SEARCH_BLOCK): every unit of work finds its
    own sequence (the count of sequences ending at or before it). The search is the
    forward's; prefix units and patch tiles both land in the right rows."""
    count = _backend.kernels("interp_pos_embed").SEARCH_BLOCK.value + 9
    grids = random_grids(count, 2, 2)
    opts = dict(interpolation="bilinear", antialias=False, align_corners=False)
    tokens, grid_sizes, cu = packed_batch(grids, 1, 4, torch.float32, device)
    pos = torch.randn(2, 3, 4, device=device)
    out = ak.add_interp_pos_embed(tokens, pos, grid_sizes, cu, num_prefix_tokens=1, backend="triton",
                                  base_grid=(2, 3), **opts)
    assert_rel_close(out, oracle_add(tokens, pos, grids, 1, **opts), name="out")


@pytest.mark.interpret
@pytest.mark.parametrize("base, opts", [
    ((1, 1), dict(interpolation="bicubic", antialias=True, align_corners=False)),
    ((1, 5), dict(interpolation="bilinear", antialias=False, align_corners=True)),
    ((6, 1), dict(interpolation="bicubic", antialias=False, align_corners=False)),
], ids=["1x1", "1x5", "6x1"])
def test_triton_degenerate_base_grids(base, opts, device):
    _check_add("triton", opts, [(1, 1), (3, 1), (1, 4), (2, 3)], 1, 8, torch.float32, device, base=base)


@pytest.mark.interpret
@pytest.mark.parametrize("opts", OPTIONS, ids=OPTION_IDS)
def test_triton_nan_in_the_base_grid_reaches_only_the_outputs_that_sample_it(opts, device):
    """A NaN in one cell of the base grid turns NaN exactly the outputs whose interpolation taps
    read that cell, as per-grid F.interpolate does (13.6): tiles spread each base row over their rows,
    and a row that does not sample it must not pick up 0 * NaN."""
    grids = [(7, 9), (2, 3), (12, 5), (1, 1), (5, 16)]
    grid_sizes = torch.tensor(grids, dtype=torch.int32, device=device)
    for cell in [(2, 3), (0, 0), (5, 6)]:
        pos = torch.randn(6, 7, 4, device=device)
        pos[cell] = float("nan")
        out = ak.interp_pos_embed(pos, grid_sizes, backend="triton", **opts)
        # In pos_embed's own dtype: F.interpolate computes tap windows in it (float32 here, as
        # the kernel does), and at window edges rounding decides whether a zero-weight tap is read.
        expected = torch.cat([interpolate_grid(pos, h, w, **opts) for h, w in grids])
        assert torch.equal(torch.isnan(out), torch.isnan(expected)), f"cell {cell}"


def _check_interp(opts, grids, base, dim, dtype, device):
    """interp_pos_embed on the Triton backend: output and gradient against the oracle."""
    pos = torch.randn(*base, dim, device=device).to(dtype)
    grid_sizes = torch.tensor(grids, dtype=torch.int32, device=device)
    out = ak.interp_pos_embed(pos, grid_sizes, backend="triton", **opts)
    assert out.dtype == dtype
    assert_rel_close(out, oracle(pos, grids, **opts))
    weight = torch.randn(out.shape, dtype=torch.float64, device=device)
    p = pos.clone().requires_grad_()
    (ak.interp_pos_embed(p, grid_sizes, backend="triton", **opts).double() * weight).sum().backward()
    q = pos.clone().requires_grad_()
    (oracle(q, grids, **opts) * weight).sum().backward()
    assert p.grad.dtype == dtype
    assert_rel_close(p.grad, q.grad, dtype)


@pytest.mark.interpret
def test_triton_tiles_and_channel_blocks(device):
    """A grid spanning two row and two column tiles (4 x 16), two channel blocks (D=80 > 64)."""
    _check_interp(dict(interpolation="bicubic", antialias=True, align_corners=False), [(5, 17), (6, 1)], (4, 3), 80,
                  torch.float32, device)


@pytest.mark.interpret
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_half_dtypes(dtype, device):
    _check_interp(dict(interpolation="bicubic", antialias=False, align_corners=False), [(3, 5), (2, 3), (1, 4)],
                  (4, 3), 24, dtype, device)


@pytest.mark.interpret
def test_triton_mixed_dtypes_and_prefix_blocks(device):
    """bfloat16 tokens with a float32 grid, and more prefix tokens than one copy block."""
    opts = dict(interpolation="bilinear", antialias=False, align_corners=True)
    grids = [(2, 3), (3, 2)]
    tokens, grid_sizes, cu = packed_batch(grids, 70, 16, torch.bfloat16, device)
    pos = torch.randn(5, 4, 16, device=device)
    out = ak.add_interp_pos_embed(tokens, pos, grid_sizes, cu, num_prefix_tokens=70, backend="triton", **opts)
    assert out.dtype == torch.bfloat16
    assert_rel_close(out, oracle_add(tokens, pos, grids, 70, **opts))
    prefix = torch.cat([torch.arange(70) + int(c) for c in cu[:-1]]).to(device)
    assert torch.equal(out[prefix], tokens[prefix])


@pytest.mark.interpret
def test_triton_backward_split_reduction_is_deterministic(device):
    """Partial sums over sequence splits, reduced in a fixed order: bitwise repeatable."""
    kernels = _backend.kernels("interp_pos_embed")
    opts = dict(interpolation="bicubic", antialias=False, align_corners=False)
    grids = random_grids(4, 5, 5)
    grad, grid_sizes, cu = packed_batch(grids, 1, 24, torch.float32, device)
    expected = ak.reference.interp_pos_embed.interp_pos_embed_backward(grad.double(), grids, cu, 1, 4, 4,
                                                                       **torch_opts(opts))
    first = kernels.interp_backward(grad, grid_sizes, cu, 4, 4, num_prefix_tokens=1, num_splits=3, **torch_opts(opts))
    assert_rel_close(first, expected, torch.float32)
    again = kernels.interp_backward(grad, grid_sizes, cu, 4, 4, num_prefix_tokens=1, num_splits=3, **torch_opts(opts))
    assert torch.equal(first, again)


@pytest.mark.interpret
def test_triton_empty_batch(device):
    pos = torch.randn(3, 3, 8, device=device, requires_grad=True)
    empty = torch.zeros(0, 2, dtype=torch.int32, device=device)
    out = ak.interp_pos_embed(pos, empty, backend="triton")
    assert out.shape == (0, 8)
    out.sum().backward()
    assert torch.equal(pos.grad, torch.zeros_like(pos))


@pytest.mark.interpret
def test_triton_launches_run_under_the_device_guard(monkeypatch, device):
    """Both forwards and the backward enter the guard for their device."""
    devices = record_launch_devices(monkeypatch, interp_ops)
    tokens, grid_sizes, cu = packed_batch([(2, 3)], 1, 8, torch.float32, device)
    pos = torch.randn(3, 2, 8, device=device, requires_grad=True)
    ak.add_interp_pos_embed(tokens, pos, grid_sizes, cu, num_prefix_tokens=1, backend="triton").sum().backward()
    ak.interp_pos_embed(pos, grid_sizes, backend="triton").sum().backward()
    assert devices == [pos.device] * 4


# Both kernels launched on CPU tensors, compiled by compile_launches as on a GPU: bicubic with
# antialias on bf16 tokens (the float32 table, as a model holds it) and bilinear with
# align_corners in float32, each on a 16 x 12 base grid with three sequences and on a 1 x 1
# grid with one sequence and one channel (every int argument 1: Triton makes them constexprs).
_LAUNCHES = """
import torch
from adaptkern import _backend
kernels = _backend.kernels("interp_pos_embed")
for opts, dtype in ((dict(mode="bicubic", antialias=True, align_corners=False), torch.bfloat16),
                    (dict(mode="bilinear", antialias=False, align_corners=True), torch.float32)):
    for base, dim, grids in (((16, 12), 192, [(14, 14), (7, 20), (1, 3)]), ((1, 1), 1, [(5, 9)])):
        grid_sizes = torch.tensor(grids, dtype=torch.int32)
        cu = torch.tensor([0] + [1 + h * w for h, w in grids], dtype=torch.int32).cumsum(0).to(torch.int32)
        tokens = torch.randn(int(cu[-1]), dim).to(dtype)
        kernels.interp_forward(torch.randn(*base, dim), grid_sizes, cu, torch.empty_like(tokens), tokens=tokens,
                               num_prefix_tokens=1, **opts)
        kernels.interp_backward(tokens, grid_sizes, cu, *base, num_prefix_tokens=1, **opts)
"""


@pytest.mark.slow
def test_triton_kernels_compile_for_gpu():
    """Each kernel compiled exactly as its launch builds it (compile_launches: num_warps,
    Triton's specialisation of the actual arguments): it compiles, and its shared memory fits."""
    results = compile_launches(_LAUNCHES)
    assert [r["kernel"] for r in results] == ["_interp_fwd_kernel", "_interp_bwd_kernel"] * 8
    for result in results:
        limit = 163 * 1024 if result["arch"] == 80 else 227 * 1024
        assert result["shared"] <= limit, result
        assert result["num_warps"] == result["constexprs"].get("num_warps", 4), result


# ----------------------------------------------------------------------------- GPU only

@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("opts", OPTIONS, ids=OPTION_IDS)
def test_gpu_backends_match_interpolate(backend, opts):
    if backend not in _backend.available_backends("cuda"):
        pytest.skip(f"{backend} unavailable (the CUDA extension is built only where nvcc was found)")
    for dtype in KERNEL_DTYPES:
        grids = random_grids(12, 40, 40) + [(1, 1), (64, 3)]
        _check_add(backend, opts, grids, 1, 96, dtype, "cuda", base=(16, 12))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_backward_is_deterministic(backend):
    if backend not in _backend.available_backends("cuda"):
        pytest.skip(f"{backend} unavailable")
    grids = random_grids(64, 32, 32)
    pos = torch.randn(16, 16, 192, device="cuda", requires_grad=True)
    grid_sizes = torch.tensor(grids, dtype=torch.int32, device="cuda")
    grads = []
    for _ in range(2):
        pos.grad = None
        out = ak.interp_pos_embed(pos, grid_sizes, backend=backend)
        out.backward(torch.ones_like(out))
        grads.append(pos.grad.clone())
    assert torch.equal(grads[0], grads[1])
    p = pos.detach().double().requires_grad_()
    out = ak.interp_pos_embed(p, grid_sizes, backend="reference")
    out.backward(torch.ones_like(out))
    assert_rel_close(grads[0], p.grad, torch.float32)
