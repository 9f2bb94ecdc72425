"""FlexiViT's PI-resize (Beyer et al. 2023): ``pi_resize_matrix`` and ``pi_resize``, with the
per-(sizes, interpolation, antialias, device, dtype) matrix cache the patch embedding uses.

The resize of a weight is a plain matmul with the cached matrix, outside any custom op:
autograd carries the gradient to the base weight and FlopCounterMode counts the ``aten.mm``.
"""

import contextlib

import torch

from .._checks import check_int, check_tensor
from ..reference import patch_embed as reference

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
    if not isinstance(antialias, bool):
        raise TypeError(f"{op}: antialias must be a bool, got {type(antialias).__name__}")


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


def pi_resize(weight: torch.Tensor, new_size, *, interpolation: str = "bilinear",
              antialias: bool = False) -> torch.Tensor:
    """PI-resize a patch-embedding weight (D, C, old_h, old_w) to (D, C, new_h, new_w).

    Each (d, c) slice w becomes pinv(B^T) w, computed in float32 (float64 for float64
    weights) and returned in the weight's dtype. Differentiable; the same size returns the
    weight itself.
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
    dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    matrix = cached_pi_resize_matrix(old_size, new_size, interpolation, antialias, weight.device, dtype)
    embed_dim, chans = weight.shape[:2]
    flat = weight.reshape(embed_dim * chans, old_size[0] * old_size[1]).to(dtype)
    device_type = weight.device.type
    # Autocast would run the mm in 16 bits; devices without autocast (meta) need no guard.
    with (torch.autocast(device_type, enabled=False) if torch.amp.is_autocast_available(device_type)
          else contextlib.nullcontext()):
        resized = flat @ matrix.T
    return resized.reshape(embed_dim, chans, *new_size).to(weight.dtype)
