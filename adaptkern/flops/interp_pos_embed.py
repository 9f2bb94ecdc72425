"""Exact FLOPs of resampling a positional-embedding grid (one multiply-add = 2 FLOPs).

Every output element of sequence i (position (r, c), channel d) is a weighted sum over its
taps: taps_h(r) input rows times taps_w(c) input columns, one multiply-add each, so

    FLOPs = 2 * D * sum_i (sum_r taps_h(r)) * (sum_c taps_w(c))

over the (Gh -> h_i, Gw -> w_i) resizes. A tap count is what PyTorch's ``F.interpolate``
evaluates: 2 (bilinear) or 4 (bicubic) per output index without antialias, border taps
clamped onto the same input index included; with antialias, the in-range window of the
stretched filter (wider when downsampling). The backward (to pos_embed) applies the
transposed map: the same count. Adding the result to the tokens (``add_interp_pos_embed``)
is elementwise and not counted, as FlopCounterMode counts no ``aten.add``.
"""

from functools import lru_cache
from typing import Optional

import torch

from .._checks import check_int
from ..ops.pos_embed_layout import resolve_interpolation
from ..reference.interp_pos_embed import MODES, axis_taps

_OP = "adaptkern.flops.interp_pos_embed_flops"


@lru_cache(maxsize=4096)
def axis_tap_count(in_size: int, out_size: int, *, mode: str, antialias: bool, align_corners: bool) -> int:
    """Taps evaluated by a 1-D resize in_size -> out_size, summed over the outputs."""
    _, _, count = axis_taps(in_size, out_size, mode=mode, antialias=antialias, align_corners=align_corners,
                            dtype=torch.float32)
    return int(count.sum())


def _grid_list(grid_sizes):
    if isinstance(grid_sizes, torch.Tensor):
        if grid_sizes.dim() != 2 or grid_sizes.shape[1] != 2:
            raise ValueError(f"{_OP}: grid_sizes must have shape (S, 2), got {tuple(grid_sizes.shape)}")
        return grid_sizes.detach().cpu().tolist()  # a host read; FLOP counting is not the hot path
    return [tuple(g) for g in grid_sizes]


def interp_pos_embed_flops(grid_sizes, base_grid, dim: int, *, interpolation: str = "bicubic",
                           antialias: bool = True, align_corners: bool = False, mode: Optional[str] = None) -> int:
    """Forward FLOPs of ``interp_pos_embed`` / ``add_interp_pos_embed`` (see the module doc).

    Args:
        grid_sizes: the (h_i, w_i) of every sequence: an (S, 2) integer tensor or a list of pairs.
        base_grid: (Gh, Gw), the stored grid (``pos_embed.shape[:2]``).
        dim: D, channels. interpolation, antialias, align_corners: as the op's (``mode=``: the
            deprecated alias of interpolation).
    """
    mode = resolve_interpolation(_OP, interpolation, mode)
    if mode not in MODES:
        raise ValueError(f"{_OP}: interpolation must be one of {MODES}, got {mode!r}")
    if len(base_grid) != 2:
        raise ValueError(f"{_OP}: base_grid must be a pair (Gh, Gw), got {tuple(base_grid)!r}")
    base_h = check_int(_OP, "base_grid[0]", base_grid[0])
    base_w = check_int(_OP, "base_grid[1]", base_grid[1])
    dim = check_int(_OP, "dim", dim, minimum=0)
    opts = dict(mode=mode, antialias=bool(antialias), align_corners=bool(align_corners))
    total = 0
    for i, grid in enumerate(_grid_list(grid_sizes)):
        if len(grid) != 2:
            raise ValueError(f"{_OP}: grid_sizes[{i}] must be a pair (h, w), got {grid!r}")
        h = check_int(_OP, f"grid_sizes[{i}][0]", grid[0], minimum=0)
        w = check_int(_OP, f"grid_sizes[{i}][1]", grid[1], minimum=0)
        if h and w:  # an empty grid (an image without patches) costs nothing
            total += axis_tap_count(base_h, h, **opts) * axis_tap_count(base_w, w, **opts)
    return 2 * dim * total
