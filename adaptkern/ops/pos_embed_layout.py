"""Argument normalisation shared by the pos-embed ops: the ``interpolation=`` keyword (with
``mode=`` as its deprecated alias) and the pos_embed layouts they accept.

Layouts (``read_pos_embed``):

* ``(Gh, Gw, D)``: the base grid itself (a one-row grid ``(1, Gw, D)`` only where the count
  below implies no square grid, or with ``base_grid=(1, Gw)``).
* ``(1, Gh, Gw, D)``: timm's NHWC grid (``dynamic_img_size`` models keep this shape too).
* ``(1, P + Gh*Gw, D)``: timm's flat layout, P prefix entries (class / register tokens'
  own position embeddings) followed by the grid, row-major. P is either 0 (timm's
  ``no_embed_class=True``) or ``num_prefix_tokens``; the grid is ``base_grid=(Gh, Gw)`` or,
  without it, the square grid the count implies. A count that implies two readings
  (both N and N - num_prefix_tokens square) or none is a ValueError, never a guess.
"""

import math
import warnings
from typing import Optional, Tuple

import torch

from .._checks import check_int


def resolve_interpolation(op: str, interpolation: str, mode: Optional[str], default: str = "bicubic") -> str:
    """``interpolation=``, or the deprecated ``mode=`` when interpolation is left at its default."""
    if mode is None:
        return interpolation
    warnings.warn(f"{op}: mode= is deprecated, use interpolation=", DeprecationWarning, stacklevel=3)
    if interpolation != mode and interpolation != default:
        raise TypeError(f"{op}: got interpolation={interpolation!r} and its deprecated alias mode={mode!r}; "
                        "pass only interpolation=")
    return mode


def _square_side(count: int) -> Optional[int]:
    side = math.isqrt(count) if count > 0 else 0
    return side if side >= 1 and side * side == count else None


def read_pos_embed(op: str, pos_embed, num_prefix_tokens: int = 0,
                   base_grid=None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Split ``pos_embed`` into its grid (Gh, Gw, D) and its prefix entries (P, D) or None.

    Returns views of pos_embed (gradients flow back to it). Non-tensors are returned as
    they are for the op's own checks to report.
    """
    if not isinstance(pos_embed, torch.Tensor):
        return pos_embed, None
    num_prefix_tokens = check_int(op, "num_prefix_tokens", num_prefix_tokens, minimum=0)
    if base_grid is not None:
        if isinstance(base_grid, int) or not hasattr(base_grid, "__len__") or len(base_grid) != 2:
            raise ValueError(f"{op}: base_grid must be a pair (Gh, Gw), got {base_grid!r}")
        base_grid = (check_int(op, "base_grid[0]", base_grid[0]), check_int(op, "base_grid[1]", base_grid[1]))
    shape = tuple(pos_embed.shape)
    if pos_embed.ndim == 4 and shape[0] == 1:
        _check_grid_matches(op, shape[1:3], base_grid)
        return pos_embed[0], None
    if pos_embed.ndim != 3 or (shape[0] != 1 and base_grid is None):
        return pos_embed, None  # (Gh, Gw, D), or a wrong rank the op reports
    if shape[0] != 1:
        _check_grid_matches(op, shape[:2], base_grid)
        return pos_embed, None
    count, dim = shape[1], shape[2]
    if base_grid is not None:
        if base_grid == (1, count):
            return pos_embed, None
        extra = count - base_grid[0] * base_grid[1]
        if extra not in (0, num_prefix_tokens):
            raise ValueError(
                f"{op}: pos_embed of shape {shape} with base_grid={base_grid} leaves {extra} prefix entries; timm's "
                f"layout (1, P + Gh*Gw, D) takes P = 0 or P = num_prefix_tokens = {num_prefix_tokens}")
        return _split(pos_embed, extra, base_grid)
    readings = []
    if num_prefix_tokens and _square_side(count - num_prefix_tokens):
        readings.append(num_prefix_tokens)
    if count > 1 and _square_side(count):
        readings.append(0)
    if len(readings) > 1:
        raise ValueError(
            f"{op}: pos_embed of shape {shape} reads as timm's flat layout either with {num_prefix_tokens} prefix "
            f"entries and a {_square_side(count - num_prefix_tokens)}^2 grid or with none and a "
            f"{_square_side(count)}^2 grid; pass base_grid=(Gh, Gw)")
    if not readings:
        return pos_embed, None  # a one-row grid (1, Gw, D): no square grid fits the count
    side = _square_side(count - readings[0])
    return _split(pos_embed, readings[0], (side, side))


def _check_grid_matches(op, grid, base_grid):
    if base_grid is not None and tuple(grid) != base_grid:
        raise ValueError(f"{op}: base_grid={base_grid} does not match pos_embed's grid {tuple(grid)}")


def _split(pos_embed, prefix, grid):
    dim = pos_embed.shape[2]
    patch = pos_embed[0, prefix:].reshape(grid[0], grid[1], dim)
    return patch, (pos_embed[0, :prefix] if prefix else None)


def add_prefix_pos(tokens: torch.Tensor, prefix_pos: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """tokens (T, D) + prefix_pos (P, D) on the first P tokens of every sequence (no host sync)."""
    num_prefix, dim = prefix_pos.shape
    starts = cu_seqlens[:-1].to(torch.int64)
    rows = (starts[:, None] + torch.arange(num_prefix, device=tokens.device)).reshape(-1)
    values = prefix_pos.to(tokens.dtype).expand(starts.shape[0], num_prefix, dim).reshape(-1, dim)
    return tokens.index_add(0, rows, values)
