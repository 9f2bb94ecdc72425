"""PI-resize (FlexiViT): the resize matrix and its pseudo-inverse against an independent
float64 oracle, FlexiViT's own construction, and the properties that define it.

The oracle here builds B another way: PyTorch's resizes are separable, so B is the
Kronecker product of two 1-D interpolation matrices, which are written out below from the
interpolation formulas (no F.interpolate). The pseudo-inverse comes from a least-squares
solve (torch.linalg.lstsq, SVD driver) instead of torch.linalg.pinv.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import adaptkern as ak
from adaptkern.ops import pi_resize as ops

from helpers import assert_rel_close

CUBIC_A = -0.75  # PyTorch's bicubic; its antialiased bicubic uses -0.5 (as PIL)


def _cubic_kernel(x, a):
    """Keys' cubic convolution kernel at distance x."""
    x = abs(x)
    if x <= 1:
        return ((a + 2) * x - (a + 3)) * x * x + 1
    if x < 2:
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return 0.0


def _aa_filter(x, interpolation):
    return max(0.0, 1.0 - abs(x)) if interpolation == "bilinear" else _cubic_kernel(x, -0.5)


def interp_matrix_1d(in_size, out_size, interpolation, antialias):
    """(out_size, in_size) float64 matrix of a 1-D resize, align_corners=False."""
    scale = in_size / out_size
    m = torch.zeros(out_size, in_size, dtype=torch.float64)
    for i in range(out_size):
        if antialias:
            support = (1.0 if interpolation == "bilinear" else 2.0) * max(scale, 1.0)
            invscale = 1.0 / scale if scale >= 1.0 else 1.0
            center = scale * (i + 0.5)
            lo = max(int(center - support + 0.5), 0)
            hi = min(int(center + support + 0.5), in_size)
            taps = [_aa_filter((j - center + 0.5) * invscale, interpolation) for j in range(lo, hi)]
            for j, w in zip(range(lo, hi), taps):
                m[i, j] += w / sum(taps)
        elif interpolation == "bilinear":
            src = max((i + 0.5) * scale - 0.5, 0.0)
            j0 = int(math.floor(src))
            j1 = min(j0 + 1, in_size - 1)
            m[i, j0] += 1 - (src - j0)
            m[i, j1] += src - j0
        else:
            src = (i + 0.5) * scale - 0.5
            j0 = math.floor(src)
            for offset in (-1, 0, 1, 2):
                m[i, min(max(j0 + offset, 0), in_size - 1)] += _cubic_kernel(src - (j0 + offset), CUBIC_A)
    return m


def oracle_resize_matrix(old, new, interpolation, antialias):
    """B (new_h*new_w, old_h*old_w) as the Kronecker product of the row and column resizes."""
    return torch.kron(interp_matrix_1d(old[0], new[0], interpolation, antialias),
                      interp_matrix_1d(old[1], new[1], interpolation, antialias))


def oracle_pi_resize_matrix(old, new, interpolation="bilinear", antialias=False):
    """pinv(B^T) as the minimum-norm least-squares solution X of B^T X = I (float64)."""
    b = oracle_resize_matrix(old, new, interpolation, antialias)
    eye = torch.eye(b.shape[1], dtype=torch.float64)
    return torch.linalg.lstsq(b.T, eye, driver="gelsd").solution


def oracle_pi_resize(weight, new, interpolation="bilinear", antialias=False):
    """Differentiable float64 PI-resize of a (D, C, h, w) weight through the oracle matrix."""
    old = tuple(weight.shape[2:])
    if old == tuple(new):
        return weight.double()
    matrix = oracle_pi_resize_matrix(old, new, interpolation, antialias)
    flat = weight.double().reshape(-1, old[0] * old[1])
    return (flat @ matrix.T).reshape(*weight.shape[:2], *new)


MODES = [("bilinear", False), ("bilinear", True), ("bicubic", False), ("bicubic", True)]
SIZES = [((8, 8), (12, 12)), ((4, 4), (7, 7)), ((8, 8), (4, 4)), ((6, 9), (3, 5)), ((5, 3), (9, 11)), ((7, 7), (16, 16))]


@pytest.mark.parametrize("interpolation,antialias", MODES)
@pytest.mark.parametrize("old,new", SIZES)
def test_resize_matrix_matches_the_separable_oracle(interpolation, antialias, old, new):
    from adaptkern.reference.patch_embed import resize_matrix

    expected = oracle_resize_matrix(old, new, interpolation, antialias)
    got = resize_matrix(old, new, interpolation, antialias)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    # And B really is the resize: B x == F.interpolate(x) for a random patch x.
    x = torch.randn(*old, dtype=torch.float64)
    resized = F.interpolate(x[None, None], size=new, mode=interpolation, align_corners=False, antialias=antialias)
    torch.testing.assert_close(got @ x.reshape(-1), resized.reshape(-1), rtol=0, atol=1e-12)


def _flexivit_pi_matrix(old, new, interpolation, antialias):
    """FlexiViT's construction, step by step: one resize per one-hot basis patch, stacked,
    transposed, then numpy's pinv of B^T."""
    columns = []
    for i in range(old[0] * old[1]):
        basis = np.zeros(old)
        basis[np.unravel_index(i, old)] = 1.0
        resized = F.interpolate(torch.from_numpy(basis)[None, None], size=new, mode=interpolation,
                                align_corners=False, antialias=antialias)
        columns.append(resized[0, 0].numpy().reshape(-1))
    b = np.stack(columns).T
    return torch.from_numpy(np.linalg.pinv(b.T))


@pytest.mark.parametrize("interpolation,antialias", MODES)
@pytest.mark.parametrize("old,new", SIZES[:4])
def test_pi_resize_matrix_matches_oracle_and_flexivit(interpolation, antialias, old, new):
    got = ak.pi_resize_matrix(old, new, interpolation=interpolation, antialias=antialias)
    assert got.dtype == torch.float32 and got.shape == (new[0] * new[1], old[0] * old[1])
    oracle = oracle_pi_resize_matrix(old, new, interpolation, antialias)
    flexivit = _flexivit_pi_matrix(old, new, interpolation, antialias)
    torch.testing.assert_close(flexivit, oracle, rtol=0, atol=1e-9)
    torch.testing.assert_close(got.double(), oracle, rtol=0, atol=1e-5 * oracle.abs().max().item())


@pytest.mark.parametrize("interpolation,antialias", MODES)
def test_upsampling_preserves_every_token(interpolation, antialias):
    # <resize(x), pi_resize(w)> == <x, w>: the resized image through the resized weight
    # gives the same token as the original image through the original weight.
    old = tuple(torch.randint(2, 8, (2,)).tolist())
    new = (old[0] + torch.randint(0, 6, ()).item(), old[1] + torch.randint(1, 6, ()).item())
    weight = torch.randn(5, 3, *old, dtype=torch.float64)
    x = torch.randn(7, 3, *old, dtype=torch.float64)
    resized_x = F.interpolate(x, size=new, mode=interpolation, align_corners=False, antialias=antialias)
    resized_w = ak.pi_resize(weight, new, interpolation=interpolation, antialias=antialias)
    before = torch.einsum("nchw,dchw->nd", x, weight)
    after = torch.einsum("nchw,dchw->nd", resized_x, resized_w)
    torch.testing.assert_close(after, before, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("interpolation,antialias", MODES)
def test_downsampling_is_the_least_squares_fit(interpolation, antialias):
    # For downsampling pinv(B^T) w minimises ||B^T w' - w||: the residual is orthogonal to
    # the column space of B^T (normal equations B (B^T w' - w) = 0).
    old, new = (9, 8), (5, 3)
    b = oracle_resize_matrix(old, new, interpolation, antialias)
    weight = torch.randn(4, 2, *old, dtype=torch.float64)
    resized = ak.pi_resize(weight, new, interpolation=interpolation, antialias=antialias).reshape(8, -1)
    residual = resized @ b - weight.reshape(8, -1)
    assert (residual @ b.T).abs().max() < 1e-9 * weight.abs().max()
    assert residual.norm() > 1e-3  # a real fit, not an exact inverse


def test_pi_resize_identity_cache_and_dtypes():
    weight = torch.randn(6, 3, 4, 4, requires_grad=True)
    assert ak.pi_resize(weight, 4) is weight
    first = ak.pi_resize_matrix(4, (6, 5))
    assert ak.pi_resize_matrix((4, 4), (6, 5)) is first  # cached
    assert ak.pi_resize_matrix(4, (6, 5), interpolation="bicubic") is not first
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        w = weight.detach().to(dtype)
        out = ak.pi_resize(w, (6, 5))
        assert out.dtype == dtype and out.shape == (6, 3, 6, 5)
        expected = oracle_pi_resize(w, (6, 5))
        tol = {torch.float64: 1e-12, torch.float32: 1e-5}.get(dtype, 2e-2)
        assert (out.double() - expected).norm() <= tol * expected.norm()
    # Gradients reach the base weight through the cached matrix.
    ak.pi_resize(weight, (6, 5)).sum().backward()
    torch.testing.assert_close(weight.grad.double(), oracle_pi_resize_matrix((4, 4), (6, 5)).sum(0).expand(6, 3, 16)
                               .reshape(6, 3, 4, 4), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("interpolation,antialias", MODES[::3])
def test_pi_resize_stays_float32_under_autocast(interpolation, antialias):
    """bf16 autocast must not lower the resize's mm (nor its gradient) to 16 bits."""
    weight = torch.randn(6, 3, 8, 8, requires_grad=True)
    grad_out = torch.randn(6, 3, 12, 12, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ak.pi_resize(weight, 12, interpolation=interpolation, antialias=antialias)
    (out.double() * grad_out).sum().backward()
    w = weight.detach().double().requires_grad_()
    expected = oracle_pi_resize(w, (12, 12), interpolation, antialias)
    (expected * grad_out).sum().backward()
    assert out.dtype == torch.float32
    assert_rel_close(out, expected, name="out")
    assert_rel_close(weight.grad, w.grad, name="weight.grad")


def test_resize_errors_name_the_argument():
    with pytest.raises(ValueError, match="interpolation must be one of"):
        ak.pi_resize_matrix(4, 6, interpolation="nearest")
    with pytest.raises(TypeError, match="antialias must be a bool"):
        ak.pi_resize_matrix(4, 6, antialias=1)
    with pytest.raises(ValueError, match=r"new_size must be >= 1"):
        ak.pi_resize_matrix(4, 0)
    with pytest.raises(ValueError, match=r"old_size must be an int or a pair"):
        ak.pi_resize_matrix((4, 4, 4), 6)
    with pytest.raises(TypeError, match=r"new_size\[1\] must be an int"):
        ak.pi_resize(torch.randn(2, 3, 4, 4), (4, 2.5))
    with pytest.raises(ValueError, match="weight must have 4 dimensions"):
        ak.pi_resize(torch.randn(3, 4, 4), 6)
    with pytest.raises(TypeError, match="weight must have dtype"):
        ak.pi_resize(torch.ones(2, 3, 4, 4, dtype=torch.int32), 6)


def test_uncached_matrix_under_compile_asks_for_prewarm(monkeypatch):
    monkeypatch.setattr(ops, "_MATRICES", {})
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    with pytest.raises(RuntimeError, match="prewarm"):
        ops.cached_pi_resize_matrix((4, 4), (5, 5), "bilinear", False, "cpu", torch.float32)


@pytest.mark.parametrize("interpolation,antialias", MODES)
@pytest.mark.parametrize("old,new", SIZES)
def test_separable_resize_matches_the_oracle_forward_and_backward(interpolation, antialias, old, new):
    # pi_resize applies pinv(B^T) as rows @ w @ cols^T; the factors must exist (the fast
    # path is the one taken) and give the full matrix's result and gradient.
    rows, cols = ops.cached_resize_factors(old, new, interpolation, antialias, "cpu", torch.float64)
    oracle = oracle_pi_resize_matrix(old, new, interpolation, antialias)
    torch.testing.assert_close(torch.kron(rows, cols), oracle, rtol=0, atol=1e-10 * oracle.abs().max().item())
    weight = torch.randn(5, 3, *old, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(5, 3, *new, dtype=torch.float64)
    out = ak.pi_resize(weight, new, interpolation=interpolation, antialias=antialias)
    (out * grad_out).sum().backward()
    w = weight.detach().clone().requires_grad_()
    expected = oracle_pi_resize(w, new, interpolation, antialias)
    (expected * grad_out).sum().backward()
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(weight.grad, w.grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_resize_without_separable_factors_uses_the_full_matrix(monkeypatch, dtype):
    # Factors that do not reproduce pinv(B^T) are refused at caching time; the resize then
    # runs through the full matrix and is still exact.
    monkeypatch.setattr(ops, "_FACTORS", {})
    monkeypatch.setattr(ops, "_axis_factor", lambda old, new, *args: torch.ones(new, old, dtype=torch.float64))
    assert ops.cached_resize_factors((6, 9), (3, 5), "bicubic", False, "cpu", dtype) is None
    weight = torch.randn(4, 2, 6, 9, dtype=dtype, requires_grad=True)
    out = ak.pi_resize(weight, (3, 5), interpolation="bicubic")
    out.pow(2).sum().backward()
    w = weight.detach().clone().requires_grad_()
    expected = oracle_pi_resize(w, (3, 5), "bicubic")
    expected.pow(2).sum().backward()
    assert_rel_close(out, expected, name="out")
    assert_rel_close(weight.grad, w.grad, name="weight.grad")


def test_resize_op_passes_opcheck_and_books_the_matmul_flops():
    from torch.utils.flop_counter import FlopCounterMode

    weight = torch.randn(4, 3, 8, 6, requires_grad=True)
    torch.library.opcheck(torch.ops.adaptkern.pi_resize_apply.default, (weight, 8, 6, 5, 7, "bilinear", False, False))
    with FlopCounterMode(display=False) as counter:
        ak.pi_resize(weight, (5, 7)).sum().backward()
    # one (D*C, 8*6) x (8*6, 5*7) product forward and its transpose backward
    assert counter.get_total_flops() == 2 * (2 * 4 * 3 * 8 * 6 * 5 * 7)
