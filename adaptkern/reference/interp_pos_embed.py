"""Reference resampling of a positional-embedding grid to per-sequence grids.

Resampling is separable: along each axis an output index ``o`` is a weighted sum of a few
input indices ("taps"), so sequence i's block is ``A_h P A_w^T`` per channel, with
``A_h`` (h_i, Gh) and ``A_w`` (w_i, Gw) the 1-D resize matrices. :func:`axis_taps` defines
the taps exactly as ``F.interpolate`` does (PyTorch's CPU kernels, read in
aten/src/ATen/native/UpSample.h and cpu/UpSampleKernel.cpp):

* scale = in/out, or (in-1)/(out-1) with align_corners (0 when out == 1).
* antialias=False: source position ``real = scale*o`` (align_corners) or
  ``scale*(o+0.5)-0.5``, clamped at 0 for bilinear; ``fl = min(floor(real), in-1)``;
  taps ``fl-K/2+1 .. fl+K/2`` (K = 2 bilinear, 4 bicubic) with indices clamped into
  [0, in) and weights ``filter(tap - real)``: the triangle, or Keys' cubic with a=-0.75.
* antialias=True: ``center = scale*(o+0.5)``; the filter (triangle, or cubic with a=-0.5)
  is stretched by ``max(scale, 1)``, so it only widens when downsampling; taps are the
  in-range indices ``floor(center-support+0.5) <= j < floor(center+support+0.5)``
  (support = K/2*max(scale, 1), at most 2*ceil(support)+1 of them), weights
  ``filter((j+0.5-center)/max(scale, 1))`` normalised to sum to one.

The Triton and CUDA kernels compute these same weights on the fly.
"""

import math
from functools import lru_cache

import torch

MODES = ("bilinear", "bicubic")


def half_taps(mode: str) -> int:
    """K/2: the filter's support radius in input pixels before any antialias stretch."""
    return 1 if mode == "bilinear" else 2


def cubic_a(antialias: bool) -> float:
    # PyTorch uses Keys' a=-0.5 with antialias (as PIL) and a=-0.75 without (as OpenCV).
    return -0.5 if antialias else -0.75


def filter_weight(x: torch.Tensor, mode: str, antialias: bool) -> torch.Tensor:
    """The 1-D interpolation kernel at distance ``x`` (in input pixels / stretch)."""
    x = x.abs()
    if mode == "bilinear":
        return (1 - x).clamp_min(0)
    a = cubic_a(antialias)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def _scale(in_size: int, out_size: int, align_corners: bool, dtype) -> torch.Tensor:
    # PyTorch divides in the compute dtype; so do we.
    if not align_corners:
        return torch.tensor(in_size, dtype=dtype) / out_size
    if out_size > 1:
        return torch.tensor(in_size - 1, dtype=dtype) / (out_size - 1)
    return torch.tensor(0.0, dtype=dtype)


def axis_taps(in_size: int, out_size: int, *, mode: str, antialias: bool, align_corners: bool,
              dtype=torch.float32):
    """Taps of a 1-D resize from ``in_size`` to ``out_size`` samples.

    Returns ``(index, weight, count)``: index int64 (out, K) in [0, in_size), weight (out, K)
    in ``dtype`` (0 for unused taps), count int64 (out,) = taps evaluated per output (K
    without antialias; the window size with it).
    """
    o = torch.arange(out_size, dtype=dtype)
    scale = _scale(in_size, out_size, align_corners, dtype)
    k2 = half_taps(mode)
    if antialias:
        stretch = torch.clamp_min(scale, 1.0)
        support = k2 * stretch
        center = scale * (o + 0.5)
        lo = torch.floor(center - support + 0.5).clamp_min(0).long()
        hi = torch.floor(center + support + 0.5).long().clamp_max(in_size)
        taps = 2 * math.ceil(float(support)) + 1
        count = (hi - lo).clamp(0, taps)
        k = torch.arange(taps)
        pos = lo[:, None] + k
        weight = filter_weight((pos.to(dtype) - (center[:, None] - 0.5)) / stretch, mode, antialias)
        weight = torch.where(k < count[:, None], weight, torch.zeros_like(weight))
        total = weight.sum(1, keepdim=True)
        weight = torch.where(total != 0, weight / torch.where(total != 0, total, 1), weight)
    else:
        real = scale * o if align_corners else scale * (o + 0.5) - 0.5
        if mode == "bilinear":
            real = real.clamp_min(0)
        fl = torch.floor(real).long().clamp_max(in_size - 1)
        pos = fl[:, None] - k2 + 1 + torch.arange(2 * k2)
        weight = filter_weight(pos.to(dtype) - real[:, None], mode, antialias)
        count = torch.full((out_size,), 2 * k2, dtype=torch.long)
    return pos.clamp(0, in_size - 1), weight, count


@lru_cache(maxsize=512)
def _resize_matrix_cpu(in_size, out_size, mode, antialias, align_corners, dtype):
    index, weight, _ = axis_taps(in_size, out_size, mode=mode, antialias=antialias,
                                 align_corners=align_corners, dtype=dtype)
    matrix = torch.zeros(out_size, in_size, dtype=dtype)
    # Clamped border taps share an index: their weights add up, as in PyTorch.
    matrix.scatter_add_(1, index, weight)
    return matrix


def resize_matrix(in_size, out_size, *, mode, antialias, align_corners, dtype=torch.float32, device="cpu"):
    """Dense (out_size, in_size) 1-D resize matrix B: ``resize(x) = B @ x``."""
    return _resize_matrix_cpu(in_size, out_size, mode, antialias, align_corners, dtype).to(device)


def compute_dtype(*dtypes) -> torch.dtype:
    """float32, or float64 when any input is float64 (the reference keeps full precision)."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def _grids(grid_sizes):
    return [tuple(g) for g in grid_sizes.tolist()] if isinstance(grid_sizes, torch.Tensor) else list(grid_sizes)


@lru_cache(maxsize=512)
def _axis_taps_cpu(in_size, out_size, mode, antialias, align_corners, dtype):
    return axis_taps(in_size, out_size, mode=mode, antialias=antialias, align_corners=align_corners, dtype=dtype)


def resample_axis(x, out_size, *, mode, antialias, align_corners):
    """Resize ``x`` (in, ...) along dim 0 to (out_size, ...): output o = sum over its first
    count[o] taps of weight * x[index]. Each output reads only its own taps, as
    F.interpolate does, so a NaN in x reaches exactly the outputs whose taps include it (a
    dense matrix product would spread it through every zero weight). Like PyTorch, an
    axis that keeps its size is copied (its taps are the identity) except by bicubic
    without antialias, which runs its four taps, zero weights included."""
    if x.shape[0] == out_size and (antialias or mode == "bilinear"):
        return x
    index, weight, count = _axis_taps_cpu(x.shape[0], out_size, mode, antialias, align_corners, x.dtype)
    index, weight, count = index.to(x.device), weight.to(x.device), count.to(x.device)
    used = torch.arange(index.shape[1], device=x.device) < count[:, None]  # (out, K)
    trailing = (1,) * (x.dim() - 1)
    terms = weight.view(*weight.shape, *trailing) * x[index]  # (out, K, ...)
    return torch.where(used.view(*used.shape, *trailing), terms, torch.zeros((), dtype=x.dtype, device=x.device)).sum(1)


def interp_pos_embed(pos_embed, grid_sizes, *, mode, antialias, align_corners, dtype=None):
    """(sum h_i*w_i, D) resampled blocks of ``pos_embed`` (Gh, Gw, D), one per grid (h_i, w_i),
    computed in ``dtype`` (default: :func:`compute_dtype`). ``grid_sizes``: (S, 2) ints; a
    grid with h_i or w_i = 0 has no block."""
    base_h, base_w, dim = pos_embed.shape
    dtype = dtype or compute_dtype(pos_embed.dtype)
    grids = _grids(grid_sizes)
    table = pos_embed.to(dtype)
    opts = dict(mode=mode, antialias=antialias, align_corners=align_corners)
    blocks = {}
    for h, w in dict.fromkeys(grids):
        if h * w == 0:
            blocks[h, w] = table.new_zeros((0, dim))
            continue
        rows = resample_axis(table, h, **opts)  # (h, Gw, D)
        blocks[h, w] = resample_axis(rows.transpose(0, 1), w, **opts).transpose(0, 1).reshape(h * w, dim)
    if not grids:
        return pos_embed.new_zeros((0, dim), dtype=dtype)
    return torch.cat([blocks[g] for g in grids])


def patch_rows(grid_sizes, cu_seqlens, num_prefix_tokens: int) -> torch.Tensor:
    """int64 indices of the patch tokens (every token after each sequence's prefix)."""
    grids = _grids(grid_sizes)
    starts = cu_seqlens.tolist()
    return torch.cat([torch.arange(h * w) + starts[i] + num_prefix_tokens for i, (h, w) in enumerate(grids)]
                     or [torch.zeros(0, dtype=torch.long)])


def add_interp_pos_embed(tokens, pos_embed, grid_sizes, cu_seqlens, num_prefix_tokens, *, mode, antialias,
                         align_corners):
    """tokens (T, D) + the resampled grid of each sequence on its patch tokens, added in
    :func:`compute_dtype` and returned in tokens' dtype."""
    dtype = compute_dtype(tokens.dtype, pos_embed.dtype)
    pos = interp_pos_embed(pos_embed, grid_sizes, mode=mode, antialias=antialias,
                           align_corners=align_corners, dtype=dtype)
    out = tokens.to(dtype)
    rows = patch_rows(grid_sizes, cu_seqlens, num_prefix_tokens).to(tokens.device)
    return out.index_add(0, rows, pos).to(tokens.dtype)


def interp_pos_embed_backward(grad, grid_sizes, cu_seqlens, num_prefix_tokens, base_h, base_w, *, mode, antialias,
                              align_corners):
    """Gradient (Gh, Gw, D) for ``pos_embed``: sum_i A_h,i^T dOut_i A_w,i, where dOut_i are the
    patch rows of sequence i in ``grad`` (T, D). Computed in :func:`compute_dtype`."""
    dtype = compute_dtype(grad.dtype)
    grids = _grids(grid_sizes)
    dim = grad.shape[1]
    starts = cu_seqlens.tolist()
    opts = dict(mode=mode, antialias=antialias, align_corners=align_corners, dtype=dtype, device=grad.device)
    # Sequences sharing a grid share A_h, A_w: sum their gradients first (fixed order).
    summed = {}
    for i, (h, w) in enumerate(grids):
        start = starts[i] + num_prefix_tokens
        block = grad[start:start + h * w].to(dtype).reshape(h, w, dim)
        summed[h, w] = summed[h, w] + block if (h, w) in summed else block
    result = grad.new_zeros((base_h, base_w, dim), dtype=dtype)
    for (h, w), block in summed.items():
        if h * w == 0:
            continue
        cols = torch.einsum("cb,rcd->rbd", resize_matrix(base_w, w, **opts), block)
        result += (resize_matrix(base_h, h, **opts).T @ cols.reshape(h, base_w * dim)).reshape(base_h, base_w, dim)
    return result
