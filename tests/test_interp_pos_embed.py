"""interp_pos_embed / add_interp_pos_embed / InterpPosEmbed on the reference and cpu backends
and the public surface: per-grid F.interpolate in float64 as the oracle (every mode x antialias x
align_corners, up and down, non-square, 1xN, Nx1, 1x1), gradients, FLOP counts, custom-op
checks, torch.compile and errors. The Triton and CUDA kernels: test_interp_pos_embed_kernels.py."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import adaptkern as ak
from adaptkern.reference import interp_pos_embed as reference

from helpers import assert_as_accurate_as_torch, assert_rel_close, torch_opts

MODES = ("bilinear", "bicubic")
OPTIONS = [dict(interpolation=m, antialias=aa, align_corners=ac) for m in MODES for aa in (False, True)
           for ac in (False, True)]
OPTION_IDS = [f"{o['interpolation']}-aa{int(o['antialias'])}-ac{int(o['align_corners'])}" for o in OPTIONS]
CPU_BACKENDS = ["reference", "cpu"]


# ----------------------------------------------------------------------------- oracle

def interpolate_grid(pos64, h, w, *, interpolation, antialias, align_corners):
    """(h*w, D) float64: F.interpolate of the (Gh, Gw, D) grid, flattened row-major.

    PyTorch 2.13's CPU antialias kernel returns every output row equal to the first when the
    output width is 1 and the height is not (e.g. (4, 4) -> (2, 1)). Resizing the transposed
    grid avoids that path; interpolation is separable, so it is the same map.
    """
    grid = pos64.permute(2, 0, 1)[None]
    if antialias and w == 1 and h > 1:
        out = F.interpolate(grid.transpose(2, 3), size=(w, h), mode=interpolation, antialias=True,
                            align_corners=align_corners).transpose(2, 3)
    else:
        out = F.interpolate(grid, size=(h, w), mode=interpolation, antialias=antialias,
                            align_corners=align_corners)
    return out[0].permute(1, 2, 0).reshape(h * w, -1)


def oracle(pos_embed, grids, **opts):
    """float64 (sum h*w, D) blocks, differentiable w.r.t. pos_embed."""
    pos64 = pos_embed.double()
    blocks = [interpolate_grid(pos64, h, w, **opts) for h, w in grids]
    return torch.cat(blocks) if blocks else pos64[:0, 0, :]


def oracle_add(tokens, pos_embed, grids, num_prefix_tokens, **opts):
    """float64 tokens with the oracle blocks added to each sequence's patch tokens."""
    rows, start = [], 0
    for h, w in grids:
        rows.append(torch.arange(h * w) + start + num_prefix_tokens)
        start += num_prefix_tokens + h * w
    rows = torch.cat(rows).to(tokens.device) if rows else torch.zeros(0, dtype=torch.long, device=tokens.device)
    return tokens.double().index_add(0, rows, oracle(pos_embed, grids, **opts))


def random_grids(count, max_h, max_w):
    """count random grids, 1 <= h <= max_h, 1 <= w <= max_w, always with a 1xN and an Nx1."""
    grids = [(int(torch.randint(1, max_h + 1, ())), int(torch.randint(1, max_w + 1, ()))) for _ in range(count)]
    if count >= 2:
        grids[0] = (1, int(torch.randint(2, max_w + 1, ())))
        grids[1] = (int(torch.randint(2, max_h + 1, ())), 1)
    return grids


def packed_batch(grids, num_prefix_tokens, dim, dtype, device):
    """tokens (T, D), grid_sizes int32 (S, 2), cu_seqlens int32 (S+1,) for these grids."""
    lengths = [num_prefix_tokens + h * w for h, w in grids]
    cu_seqlens = ak.cu_seqlens_from_lengths(lengths, device)
    tokens = torch.randn(sum(lengths), dim, device=device).to(dtype)
    grid_sizes = torch.tensor(grids, dtype=torch.int32, device=device).reshape(-1, 2)
    return tokens, grid_sizes, cu_seqlens


# ----------------------------------------------------------------------------- forward

@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("opts", OPTIONS, ids=OPTION_IDS)
@pytest.mark.parametrize("base", [(1, 1), (1, 6), (5, 1), (4, 4), (6, 9), (13, 7)])
def test_reference_matches_interpolate(opts, base, backend):
    """Up- and downsampling to random grids (1xN, Nx1 and 1x1 included), float64 exact."""
    pos = torch.randn(*base, 5, dtype=torch.float64)
    grids = random_grids(6, 2 * base[0] + 3, 2 * base[1] + 3) + [(1, 1), base]
    out = ak.interp_pos_embed(pos, torch.tensor(grids, dtype=torch.int32), backend=backend, **opts)
    assert_rel_close(out, oracle(pos, grids, **opts))


@pytest.mark.parametrize("opts", OPTIONS, ids=OPTION_IDS)
def test_cpu_nan_reaches_only_the_outputs_whose_taps_read_it(opts):
    """A NaN in one base cell (r, c): on the cpu backend output (i, j) of a grid is NaN if it
    weighs the cell (nonzero weight along both axes) and finite unless one of its taps reads
    it, so grids that never sample it stay finite (unlike a dense matmul)."""
    base_h, base_w = 9, 7
    pos = torch.randn(base_h, base_w, 3, dtype=torch.float64)
    r, c = int(torch.randint(0, base_h, ())), int(torch.randint(0, base_w, ()))
    pos[r, c] = float("nan")
    grids = random_grids(6, 20, 15) + [(1, 1), (2, 2), (3, 2)]
    out = ak.interp_pos_embed(pos, torch.tensor(grids, dtype=torch.int32), backend="cpu", **opts)
    start = 0
    for h, w in grids:
        block = torch.isnan(out[start:start + h * w]).view(h, w, 3)
        start += h * w
        assert (block == block[..., :1]).all()
        reach = []
        for size, out_size, cell in ((base_h, h, r), (base_w, w, c)):
            index, weight, count = reference.axis_taps(size, out_size, dtype=torch.float64, **torch_opts(opts))
            used = torch.arange(index.shape[1]) < count[:, None]
            reach.append((((index == cell) & used).any(1), ((index == cell) & (weight != 0)).any(1)))
        may, must = (reach[0][k][:, None] & reach[1][k][None, :] for k in (0, 1))
        assert (block[..., 0] <= may).all() and (block[..., 0] >= must).all(), (h, w)
    assert torch.isfinite(out).any()


@pytest.mark.parametrize("opts", OPTIONS, ids=OPTION_IDS)
def test_axis_weights_are_interpolate_of_identity(opts):
    """The 1-D resize matrix row-for-row, for random sizes (each output's exact taps)."""
    for _ in range(6):
        n_in, n_out = (int(torch.randint(1, 20, ())) for _ in range(2))
        eye = torch.eye(n_in, dtype=torch.float64).reshape(n_in, 1, 1, n_in)
        expected = F.interpolate(eye, size=(1, n_out), **torch_opts(opts))[:, 0, 0, :].T
        matrix = reference.resize_matrix(n_in, n_out, dtype=torch.float64, **torch_opts(opts))
        torch.testing.assert_close(matrix, expected, rtol=0, atol=1e-12, msg=f"{n_in} -> {n_out}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_reference_dtypes_compute_in_float32(dtype):
    opts = dict(interpolation="bicubic", antialias=True, align_corners=False)
    pos = torch.randn(7, 5, 12).to(dtype)
    grids = random_grids(4, 12, 12)
    out = ak.interp_pos_embed(pos, torch.tensor(grids, dtype=torch.int32), **opts)
    assert out.dtype == dtype
    expected = oracle(pos, grids, **opts)
    assert_rel_close(out, expected)
    # Rounded once from float32: as accurate as F.interpolate in float32 rounded to dtype.
    torch_value = torch.cat([interpolate_grid(pos.float(), h, w, **opts) for h, w in grids]).to(dtype)
    assert_as_accurate_as_torch(out, expected, torch_value)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("num_prefix_tokens", [0, 1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_add_matches_oracle(num_prefix_tokens, dtype, backend):
    opts = dict(interpolation="bilinear", antialias=True, align_corners=False)
    grids = random_grids(5, 9, 9)
    grids += grids[1:3]  # repeated grids: computed once, added to each of their sequences
    tokens, grid_sizes, cu = packed_batch(grids, num_prefix_tokens, 10, dtype, "cpu")
    pos = torch.randn(6, 4, 10).to(dtype)
    out = ak.add_interp_pos_embed(tokens, pos, grid_sizes, cu, num_prefix_tokens=num_prefix_tokens, backend=backend,
                                  **opts)
    assert out.dtype == dtype
    expected = oracle_add(tokens, pos, grids, num_prefix_tokens, **opts)
    assert_rel_close(out, expected)
    prefix = torch.cat([torch.arange(num_prefix_tokens) + int(cu[i]) for i in range(len(grids))]).long()
    assert torch.equal(out[prefix], tokens[prefix]), "prefix tokens must pass through unchanged"


def test_mixed_dtypes_follow_tokens():
    grids = [(3, 5), (2, 2)]
    tokens, grid_sizes, cu = packed_batch(grids, 1, 8, torch.bfloat16, "cpu")
    pos = torch.randn(4, 4, 8)  # float32 parameter, bfloat16 activations
    out = ak.add_interp_pos_embed(tokens, pos, grid_sizes, cu, num_prefix_tokens=1)
    assert out.dtype == torch.bfloat16
    assert_rel_close(out, oracle_add(tokens, pos, grids, 1, interpolation="bicubic", antialias=True,
                                     align_corners=False))


def test_empty_batch_and_empty_channels():
    pos = torch.randn(3, 3, 4)
    empty = torch.zeros(0, 2, dtype=torch.int32)
    assert ak.interp_pos_embed(pos, empty).shape == (0, 4)
    out = ak.add_interp_pos_embed(torch.randn(0, 4), pos, empty, torch.zeros(1, dtype=torch.int32))
    assert out.shape == (0, 4)
    grids = torch.tensor([[2, 3]], dtype=torch.int32)
    assert ak.interp_pos_embed(torch.randn(3, 3, 0), grids).shape == (6, 0)


# ----------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("opts", OPTIONS, ids=OPTION_IDS)
def test_gradients_match_autograd_of_interpolate(opts, backend):
    grids = random_grids(4, 8, 8) + [(1, 1)]
    grids += grids[:2]
    tokens, grid_sizes, cu = packed_batch(grids, 2, 6, torch.float64, "cpu")
    pos = torch.randn(5, 3, 6, dtype=torch.float64)
    weight = torch.randn_like(tokens)
    results = []
    for fn in (lambda t, p: ak.add_interp_pos_embed(t, p, grid_sizes, cu, num_prefix_tokens=2, backend=backend,
                                                    **opts),
               lambda t, p: oracle_add(t, p, grids, 2, **opts)):
        t, p = tokens.clone().requires_grad_(), pos.clone().requires_grad_()
        (fn(t, p) * weight).sum().backward()
        results.append((t.grad, p.grad))
    assert_rel_close(results[0][1], results[1][1], name="pos_embed.grad")
    assert torch.equal(results[0][0], weight), "the gradient for tokens is the identity"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradcheck_float64(backend):
    grid_sizes = torch.tensor([[3, 2], [1, 4], [5, 1]], dtype=torch.int32)
    pos = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda p: ak.interp_pos_embed(p, grid_sizes, interpolation="bicubic", backend=backend),
                             (pos,))
    cu = ak.cu_seqlens_from_lengths([7, 5, 6])
    tokens = torch.randn(18, 3, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(
        lambda t, p: ak.add_interp_pos_embed(t, p, grid_sizes, cu, num_prefix_tokens=1, interpolation="bilinear",
                                             antialias=False, backend=backend), (tokens, pos))


# ----------------------------------------------------------------------------- FLOPs

def _counted(fn):
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("opts", OPTIONS[::3], ids=OPTION_IDS[::3])
def test_flop_counter_matches_formula(opts):
    grids = random_grids(4, 10, 10)
    tokens, grid_sizes, cu = packed_batch(grids, 1, 8, torch.float32, "cpu")
    pos = torch.randn(5, 6, 8, requires_grad=True)
    expected = ak.flops.interp_pos_embed_flops(grid_sizes, (5, 6), 8, **opts)
    assert expected == ak.flops.interp_pos_embed_flops(grids, (5, 6), 8, **opts) > 0
    assert _counted(lambda: ak.interp_pos_embed(pos, grid_sizes, **opts)) == expected
    counted = _counted(lambda: ak.add_interp_pos_embed(tokens, pos, grid_sizes, cu, num_prefix_tokens=1,
                                                       **opts).sum().backward())
    assert counted == 2 * expected, "backward applies the transposed map: the same count again"


def test_flop_formula_counts_taps():
    """Without antialias every output reads 2 (bilinear) or 4 (bicubic) taps per axis; with
    it, the taps are the filter window: at least the nonzero weights of F.interpolate's map,
    plus at most the two zero-weight ends."""
    grids = [(3, 7), (8, 2), (1, 1)]
    for mode, taps in (("bilinear", 2), ("bicubic", 4)):
        flops = ak.flops.interp_pos_embed_flops(grids, (4, 5), 6, interpolation=mode, antialias=False)
        assert flops == 2 * 6 * sum(taps * h * taps * w for h, w in grids)
    for mode in MODES:
        for n_in, n_out in ((13, 4), (5, 11), (16, 3), (1, 4)):
            opts = dict(interpolation=mode, antialias=True, align_corners=False)
            eye = torch.eye(n_in, dtype=torch.float64).reshape(n_in, 1, 1, n_in)
            nonzero = int((F.interpolate(eye, size=(1, n_out), **torch_opts(opts)) != 0).sum())
            taps = ak.flops.interp_pos_embed_flops([(1, n_out)], (1, n_in), 1, **opts) // 2
            assert nonzero <= taps <= nonzero + 2 * n_out


# ----------------------------------------------------------------------------- custom ops

@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_custom_ops_pass_opcheck(backend):
    grid_sizes = torch.tensor([[2, 3], [4, 1]], dtype=torch.int32)
    cu = ak.cu_seqlens_from_lengths([7, 5])
    pos = torch.randn(3, 3, 4, requires_grad=True)
    tokens = torch.randn(12, 4, requires_grad=True)
    plain = torch.tensor([0, 6, 10], dtype=torch.int32)
    args = ("bicubic", True, False, backend)
    torch.library.opcheck(torch.ops.adaptkern.interp_pos_embed.default, (pos, grid_sizes, plain, 10, *args))
    torch.library.opcheck(torch.ops.adaptkern.add_interp_pos_embed.default, (tokens, pos, grid_sizes, cu, 1, *args))
    grad = torch.randn(12, 4)
    torch.library.opcheck(torch.ops.adaptkern.interp_pos_embed_backward.default,
                          (grad, grid_sizes, cu, 1, 3, 3, *args))


def test_compiles_fullgraph():
    grids = [(2, 5), (3, 3)]
    tokens, grid_sizes, cu = packed_batch(grids, 1, 6, torch.float32, "cpu")
    embed = ak.nn.InterpPosEmbed((4, 4), 6, num_prefix_tokens=1)

    def step(x):
        out = embed(x, grid_sizes, cu)
        pos = ak.interp_pos_embed(embed.pos_embed, grid_sizes, total_tokens=19)
        return out.square().sum() + pos.sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    x = tokens.clone().requires_grad_()
    compiled(x).backward()
    grad_compiled = embed.pos_embed.grad.clone()
    embed.pos_embed.grad = None
    x_eager = tokens.clone().requires_grad_()
    step(x_eager).backward()
    torch.testing.assert_close(grad_compiled, embed.pos_embed.grad)
    torch.testing.assert_close(x.grad, x_eager.grad)


# ----------------------------------------------------------------------------- module

def test_module_adds_its_grid():
    embed = ak.nn.InterpPosEmbed(6, 8, interpolation="bilinear", antialias=False, num_prefix_tokens=2)
    assert embed.pos_embed.shape == (6, 6, 8) and "base_grid=(6, 6)" in repr(embed)
    grids = [(3, 9), (6, 6)]
    tokens, grid_sizes, cu = packed_batch(grids, 2, 8, torch.float32, "cpu")
    out = embed(tokens, grid_sizes, cu)
    opts = dict(interpolation="bilinear", antialias=False, align_corners=False)
    assert_rel_close(out, oracle_add(tokens, embed.pos_embed.detach(), grids, 2, **opts))
    out.sum().backward()
    assert embed.pos_embed.grad is not None and embed.pos_embed.grad.abs().sum() > 0
    assert_rel_close(embed.resampled(grid_sizes), oracle(embed.pos_embed.detach(), grids, **opts))


def test_module_init_is_truncated_normal():
    embed = ak.nn.InterpPosEmbed((32, 24), 64)
    values = embed.pos_embed.detach()
    assert abs(values.std().item() - 0.02) < 0.002 and abs(values.mean().item()) < 0.002
    assert values.abs().max() <= 2.0


# ----------------------------------------------------------------------------- errors

def test_bad_input_names_the_argument():
    pos = torch.randn(4, 4, 6)
    grids = torch.tensor([[2, 3], [1, 4]], dtype=torch.int32)
    tokens, _, cu = packed_batch([(2, 3), (1, 4)], 1, 6, torch.float32, "cpu")
    add = lambda **kw: ak.add_interp_pos_embed(**{**dict(tokens=tokens, pos_embed=pos, grid_sizes=grids,  # noqa: E731
                                                         cu_seqlens=cu, num_prefix_tokens=1), **kw})
    with pytest.raises(ValueError, match=r"grid_sizes\[1\] = \(-1, 4\).*>= 0"):
        ak.interp_pos_embed(pos, torch.tensor([[2, 3], [-1, 4]], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"grid_sizes\[0\] = \(2, -1\)"):
        add(grid_sizes=torch.tensor([[2, -1], [1, 4]], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"sequence 1 has 5 tokens in cu_seqlens but num_prefix_tokens \+ h\*w = 1 \+ 3\*2 = 7"):
        add(grid_sizes=torch.tensor([[2, 3], [3, 2]], dtype=torch.int32))
    with pytest.raises(ValueError, match="sequence 0 has 7 tokens"):
        add(num_prefix_tokens=0)
    with pytest.raises(ValueError, match="pos_embed must have 3 dimensions"):
        ak.interp_pos_embed(pos[0], grids)
    with pytest.raises(ValueError, match="grid_sizes must have 2 dimensions"):
        ak.interp_pos_embed(pos, grids[0])
    with pytest.raises(ValueError, match=r"grid_sizes must have shape \(S, 2\)"):
        ak.interp_pos_embed(pos, torch.ones(2, 3, dtype=torch.int32))
    with pytest.raises(TypeError, match=r"grid_sizes must have dtype in \(int32\)"):
        ak.interp_pos_embed(pos, grids.long())
    with pytest.raises(ValueError, match="tokens must have 2 dimensions"):
        add(tokens=tokens[None])
    with pytest.raises(ValueError, match="tokens has 5 channels but pos_embed has D=6"):
        add(tokens=tokens[:, :5])
    with pytest.raises(ValueError, match="interpolation must be one of"):
        ak.interp_pos_embed(pos, grids, interpolation="nearest")
    with pytest.raises(TypeError, match="antialias must be a bool"):
        ak.interp_pos_embed(pos, grids, antialias=1)
    with pytest.raises(ValueError, match="cu_seqlens describes 1 sequences but grid_sizes has 2"):
        add(cu_seqlens=torch.tensor([0, 12], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"cu_seqlens\[-1\]=12 must equal tokens.shape\[0\]=10"):
        add(tokens=tokens[:10])
    with pytest.raises(ValueError, match="num_prefix_tokens must be >= 0"):
        add(num_prefix_tokens=-1)
    with pytest.raises(ValueError, match="total_tokens=9 but grid_sizes hold 10 tokens"):
        ak.interp_pos_embed(pos, grids, total_tokens=9)
    with pytest.raises(ValueError, match="pos_embed must be a .Gh, Gw, D. grid"):
        ak.interp_pos_embed(torch.randn(0, 4, 6), grids)
    with pytest.raises(TypeError, match="pos_embed must have dtype"):
        ak.interp_pos_embed(pos.int(), grids)
    with pytest.raises(ValueError, match="backend must be one of"):
        ak.interp_pos_embed(pos, grids, backend="cudnn")
    with pytest.raises(RuntimeError, match="needs CUDA tensors|not built"):
        ak.interp_pos_embed(pos, grids, backend="cuda")
    with pytest.raises(ValueError, match="base_grid must be an int or a pair"):
        ak.nn.InterpPosEmbed((2, 3, 4), 8)


def test_validation_off_skips_value_checks():
    """With validation off nothing reads cu_seqlens; the shape checks still run."""
    pos = torch.randn(4, 4, 6)
    grids = torch.tensor([[2, 3]], dtype=torch.int32)
    tokens = torch.randn(6, 6)
    ak.set_validation(False)
    try:
        out = ak.add_interp_pos_embed(tokens, pos, grids, torch.tensor([0, 6], dtype=torch.int32))
        with pytest.raises(ValueError, match="tokens has 5 channels"):
            ak.add_interp_pos_embed(tokens[:, :5], pos, grids, torch.tensor([0, 6], dtype=torch.int32))
    finally:
        ak.set_validation(None)
    assert_rel_close(out, oracle_add(tokens, pos, [(2, 3)], 0, interpolation="bicubic", antialias=True,
                                     align_corners=False))
