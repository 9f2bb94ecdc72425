"""FlexiViT's PI-resize (Beyer et al. 2023): ``pi_resize_matrix`` and ``pi_resize``, with the
per-(sizes, interpolation, antialias, device, dtype) caches the patch embedding uses.

PyTorch's resizes are separable, so pinv(B^T) = kron(rows, cols) with rows = pinv(B_h^T)
(new_h, old_h) and cols = pinv(B_w^T) (new_w, old_w): a weight resizes as rows @ w @ cols^T,
two small products instead of one (new_h*new_w, old_h*old_w) product. The factors are
checked against the full matrix once, when cached (the full product is used if they ever
disagree). The resize is the custom op ``adaptkern::pi_resize_apply`` (its adjoint is the
same op), so FlopCounterMode books the PI-resize matmul of ``ak.flops.resize_flops``,
whatever the factored form computes.
"""

import contextlib

import torch
from torch.utils.flop_counter import register_flop_formula

from .. import _backend
from .._checks import check_bool, check_int, check_tensor
from ..flops.patch_embed import resize_flops
from ..reference import patch_embed as reference
from . import _eager

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def as_pair(op, name, size):
    """An int or an (h, w) pair of ints >= 1 -> (h, w); errors name ``op`` and ``name``."""
    if isinstance(size, (tuple, list, torch.Size)):
        if len(size) != 2:
            raise ValueError(f"{op}: {name} must be an int or a pair (h, w), got {tuple(size)!r}")
        return check_int(op, f"{name}[0]", size[0]), check_int(op, f"{name}[1]", size[1])
    size = check_int(op, name, size)
    return size, size


def check_interpolation(op, interpolation, antialias):
    """The resize options every PI-resize entry point accepts."""
    if interpolation not in reference.INTERPOLATIONS:
        raise ValueError(f"{op}: interpolation must be one of {reference.INTERPOLATIONS}, got {interpolation!r}")
    check_bool(op, "antialias", antialias)


# (old, new, interpolation, antialias, device, dtype) -> matrix; the float64 CPU entry of each
# (old, new, interpolation, antialias) is the master the others are converted from.
_MATRICES = {}


def _device_key(device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def cached_pi_resize_matrix(old_size, new_size, interpolation, antialias, device, dtype):
    """The cached pinv(B^T) (new_h*new_w, old_h*old_w) on ``device`` in ``dtype`` (sizes are
    (h, w) tuples, arguments already checked). Under torch.compile a missing entry is an
    error: computing it there would trace an SVD into the graph."""
    key = (old_size, new_size, interpolation, antialias, _device_key(device), dtype)
    matrix = _MATRICES.get(key)
    if matrix is None:
        if torch.compiler.is_compiling():
            raise RuntimeError(
                f"adaptkern.pi_resize_matrix: no cached matrix for {old_size} -> {new_size} ({interpolation}, "
                f"antialias={antialias}) on {device}; fill the cache before torch.compile "
                "(FlexiPatchEmbed.prewarm(patch_sizes) or pi_resize_matrix(...))")
        master_key = key[:4] + (torch.device("cpu"), torch.float64)
        if master_key not in _MATRICES:
            _MATRICES[master_key] = reference.pi_resize_matrix(old_size, new_size, interpolation, antialias)
        matrix = _MATRICES[key] = _MATRICES[master_key].to(device=key[4], dtype=dtype)
    return matrix


def pi_resize_matrix(old_size, new_size, *, interpolation: str = "bilinear", antialias: bool = False,
                     device=None) -> torch.Tensor:
    """FlexiViT's PI-resize matrix pinv(B^T), (new_h*new_w, old_h*old_w) float32.

    B is the resize matrix (resize(x) = B x for a flattened old-size patch), built by
    resizing each one-hot old-size patch with ``F.interpolate(mode=interpolation,
    align_corners=False, antialias=antialias)``. Computed once in float64 and cached per
    (sizes, interpolation, antialias, device): the same tensor is returned on every call, so
    do not modify it in place. Sizes are ints or (h, w) pairs; device defaults to the CPU.
    """
    op = "adaptkern.pi_resize_matrix"
    old_size, new_size = as_pair(op, "old_size", old_size), as_pair(op, "new_size", new_size)
    check_interpolation(op, interpolation, antialias)
    return cached_pi_resize_matrix(old_size, new_size, interpolation, antialias, device or "cpu", torch.float32)


# (old, new, interpolation, antialias, device, dtype) -> (rows, cols), or None where the
# factors do not reproduce the full matrix; the float64 CPU entry is the master.
_FACTORS = {}
_SEPARABLE_RTOL = 1e-9


def _axis_factor(old, new, interpolation, antialias):
    """pinv(B_1d^T) (new, old) float64 of a 1-D resize: the resize of one-hot columns of an
    (old, 2) image to (new, 2) (the second axis resized to its own size), every other column."""
    basis = reference.resize_matrix((old, 2), (new, 2), interpolation, antialias)[0::2, 0::2]
    return torch.linalg.pinv(basis.T)


def cached_resize_factors(old_size, new_size, interpolation, antialias, device, dtype):
    """(rows (new_h, old_h), cols (new_w, old_w)) on ``device`` in ``dtype`` with
    kron(rows, cols) = pinv(B^T), or None where that does not hold to round-off."""
    key = (old_size, new_size, interpolation, antialias, _device_key(device), dtype)
    if key not in _FACTORS:
        master_key = key[:4] + (torch.device("cpu"), torch.float64)
        if master_key not in _FACTORS:
            full = cached_pi_resize_matrix(old_size, new_size, interpolation, antialias, "cpu", torch.float64)
            rows, cols = (_axis_factor(old, new, interpolation, antialias) for old, new in zip(old_size, new_size))
            error = (torch.kron(rows, cols) - full).abs().max()
            _FACTORS[master_key] = (rows, cols) if error <= _SEPARABLE_RTOL * full.abs().max() else None
        master = _FACTORS[master_key]
        _FACTORS[key] = None if master is None else tuple(f.to(device=key[4], dtype=dtype) for f in master)
    return _FACTORS[key]


def _resize(x, old_size, new_size, interpolation, antialias, adjoint):
    """x (D, C, *new_size) -> (D, C, *old_size) by pinv(B^T)^T if ``adjoint``, else
    (D, C, *old_size) -> (D, C, *new_size) by pinv(B^T); float32 (float64) products."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    factors = cached_resize_factors(old_size, new_size, interpolation, antialias, x.device, dtype)
    out_size = old_size if adjoint else new_size
    flat = x.to(dtype)
    # Autocast would run the products in 16 bits; devices without autocast (meta) need no guard.
    with (torch.autocast(x.device.type, enabled=False) if _backend.autocast_available(x.device.type)
          else contextlib.nullcontext()):
        if factors is None:
            matrix = cached_pi_resize_matrix(old_size, new_size, interpolation, antialias, x.device, dtype)
            out = flat.flatten(2) @ (matrix if adjoint else matrix.T)
        else:
            rows, cols = factors
            out = rows.T @ flat @ cols if adjoint else rows @ flat @ cols.T
    return out.reshape(*x.shape[:2], *out_size).to(x.dtype)


@_eager.custom_op("adaptkern::pi_resize_apply")
def pi_resize_apply(x: torch.Tensor, old_h: int, old_w: int, new_h: int, new_w: int, interpolation: str,
                    antialias: bool, adjoint: bool) -> torch.Tensor:
    """x (D, C, old_h, old_w) -> PI-resized (D, C, new_h, new_w); with ``adjoint`` the
    transposed map, (D, C, new_h, new_w) -> (D, C, old_h, old_w) (the resize's backward)."""
    return _resize(x, (old_h, old_w), (new_h, new_w), interpolation, antialias, adjoint)


@pi_resize_apply.register_fake
def _(x, old_h, old_w, new_h, new_w, interpolation, antialias, adjoint):
    return x.new_empty((*x.shape[:2], *((old_h, old_w) if adjoint else (new_h, new_w))))


def _setup(ctx, inputs, output):
    ctx.args = inputs[1:]


def _backward(ctx, grad):
    # A linear map: its gradient is the adjoint map (and the adjoint's is the map itself).
    *sizes, interpolation, antialias, adjoint = ctx.args
    return (pi_resize_apply(grad, *sizes, interpolation, antialias, not adjoint),) + (None,) * 7


pi_resize_apply.register_autograd(_backward, setup_context=_setup)


@register_flop_formula(torch.ops.adaptkern.pi_resize_apply, get_raw=True)
def _resize_flops(x, old_h, old_w, new_h, new_w, interpolation, antialias, adjoint, *args, out_val=None, **kwargs):
    return resize_flops(x.shape[1], x.shape[0], (old_h, old_w), (new_h, new_w))


def pi_resize(weight: torch.Tensor, new_size, *, interpolation: str = "bilinear",
              antialias: bool = False) -> torch.Tensor:
    """PI-resize a patch-embedding weight (D, C, old_h, old_w) to (D, C, new_h, new_w).

    Each (d, c) slice w becomes pinv(B^T) w (as rows @ w @ cols^T, pinv(B^T)'s separable
    form), computed in float32 (float64 for float64 weights) and returned in the weight's
    dtype. Differentiable; the same size returns the weight itself.
    """
    op = "adaptkern.pi_resize"
    check_tensor(op, "weight", weight, ndim=4, dtypes=_DTYPES)
    new_size = as_pair(op, "new_size", new_size)
    check_interpolation(op, interpolation, antialias)
    old_size = tuple(weight.shape[2:])
    if old_size == new_size:
        return weight
    if 0 in old_size:
        raise ValueError(f"{op}: weight must have a non-empty patch, got shape {tuple(weight.shape)}")
    return pi_resize_apply(weight, *old_size, *new_size, interpolation, antialias, False)
