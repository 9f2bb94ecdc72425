"""Positional-embedding resampling on CPU tensors, separable and once per distinct grid.

Forward: each distinct (h, w) grid is resampled once, rows then columns, each axis a
weighted sum over its few taps (:func:`adaptkern.reference.interp_pos_embed.axis_taps`,
F.interpolate's weights) as one batched matmul over gathered rows: a NaN in the base grid
reaches only the outputs whose taps read it, as with F.interpolate. The block is then added
(or copied) into every sequence with that grid. Backward: the gradients of sequences
sharing a grid are summed first, then A_h^T G A_w with the dense 1-D resize matrices (two
GEMMs per distinct grid). Computed in float32 (float64 for float64 inputs).
"""

import torch

from ..reference import interp_pos_embed as reference

_TAPS = {}


def _taps(in_size, out_size, mode, antialias, align_corners, dtype):
    """index int64 (out * K,) and weight (out, K) of a 1-D resize; taps beyond an output's
    window point at its first tap with weight 0, so they read nothing new."""
    key = (in_size, out_size, mode, antialias, align_corners, dtype)
    if key not in _TAPS:
        index, weight, count = reference.axis_taps(in_size, out_size, mode=mode, antialias=antialias,
                                                   align_corners=align_corners, dtype=dtype)
        unused = torch.arange(index.shape[1]) >= count[:, None]
        _TAPS[key] = (torch.where(unused, index[:, :1], index).flatten(), torch.where(unused, 0, weight))
    return _TAPS[key]


def _resample(table, grid, opts):
    """table (Gh, Gw, D) -> (h*w, D) block for ``grid`` = (h, w)."""
    (base_h, base_w, dim), (h, w) = table.shape, grid
    index_h, weight_h = _taps(base_h, h, dtype=table.dtype, **opts)
    index_w, weight_w = _taps(base_w, w, dtype=table.dtype, **opts)
    rows = table.index_select(0, index_h).view(h, weight_h.shape[1], base_w * dim)  # (h, K_h, Gw*D)
    rows = torch.bmm(weight_h[:, None, :], rows).view(h, base_w, dim)
    cols = rows.index_select(1, index_w).view(h, w, weight_w.shape[1], dim)  # (h, w, K_w, D)
    return torch.matmul(weight_w[None, :, None, :], cols).reshape(h * w, dim)


def _grids_and_starts(grid_sizes, cu_seqlens, num_prefix_tokens):
    grids = [tuple(g) for g in grid_sizes.tolist()]
    starts = [s + num_prefix_tokens for s in cu_seqlens.tolist()[:-1]]
    return grids, starts


def add_interp_pos_embed(tokens, pos_embed, grid_sizes, cu_seqlens, num_prefix_tokens, *, mode, antialias,
                         align_corners, total):
    """tokens (T, D) + every sequence's resampled grid on its patch tokens, in tokens'
    dtype; with tokens None, the (total, D) blocks alone in pos_embed's dtype. pos_embed
    (Gh, Gw, D); grid_sizes int32 (S, 2); cu_seqlens int32 (S+1,) of the packed tokens."""
    compute = reference.compute_dtype(pos_embed.dtype, *(() if tokens is None else (tokens.dtype,)))
    opts = dict(mode=mode, antialias=antialias, align_corners=align_corners)
    table = pos_embed.to(compute)
    grids, starts = _grids_and_starts(grid_sizes, cu_seqlens, num_prefix_tokens)
    # Without tokens the blocks tile the output (the op made cu_seqlens from the grids).
    out = torch.empty(total, pos_embed.shape[2], dtype=compute) if tokens is None else tokens.to(compute, copy=True)
    blocks = {grid: _resample(table, grid, opts) for grid in dict.fromkeys(grids)}
    for grid, start in zip(grids, starts):
        rows = out[start:start + grid[0] * grid[1]]
        if tokens is None:
            rows.copy_(blocks[grid])
        else:
            rows.add_(blocks[grid])
    return out.to(pos_embed.dtype if tokens is None else tokens.dtype)


def interp_pos_embed_backward(grad, grid_sizes, cu_seqlens, num_prefix_tokens, base_h, base_w, *, mode, antialias,
                              align_corners):
    """Gradient (Gh, Gw, D) for pos_embed from grad (T, D), in float32 (float64 for float64)."""
    compute = reference.compute_dtype(grad.dtype)
    grids, starts = _grids_and_starts(grid_sizes, cu_seqlens, num_prefix_tokens)
    dim = grad.shape[1]
    summed = {}
    for (h, w), start in zip(grids, starts):
        block = grad[start:start + h * w].view(h, w, dim)
        if (h, w) in summed:
            summed[h, w] += block
        else:
            summed[h, w] = block.to(compute, copy=True)
    result = torch.zeros(base_h, base_w * dim, dtype=compute)
    opts = dict(mode=mode, antialias=antialias, align_corners=align_corners, dtype=compute)
    for (h, w), block in summed.items():
        cols = torch.matmul(reference.resize_matrix(base_w, w, **opts).T, block)  # (h, Gw, D)
        result.addmm_(reference.resize_matrix(base_h, h, **opts).T, cols.view(h, base_w * dim))
    return result.view(base_h, base_w, dim)
