"""``InterpPosEmbed``: a learned absolute positional embedding on a base grid, resampled to
every sequence's own patch grid and added to packed tokens (NaViT / NaFlexViT style)."""

from typing import Optional

import torch
from torch import nn

from .._checks import check_int
from ..ops.interp_pos_embed import _check_options, add_interp_pos_embed, interp_pos_embed
from ..ops.pos_embed_layout import resolve_interpolation

_OP = "adaptkern.nn.InterpPosEmbed"


class InterpPosEmbed(nn.Module):
    """Holds a (Gh, Gw, dim) positional-embedding grid; ``forward`` adds it, resampled per
    sequence, to packed tokens.

    Args:
        base_grid: int or (Gh, Gw), the stored grid.
        dim: D, channels.
        interpolation, antialias, align_corners: the resampling (see ``adaptkern.interp_pos_embed``;
            ``mode=`` is interpolation's deprecated alias).
        num_prefix_tokens: class / register tokens at the start of each sequence (no pos added).
        backend: forwarded to the op (None: dispatch by device).

    Initialised like timm's learned position embeddings: truncated normal, std 0.02.
    """

    def __init__(self, base_grid, dim: int, interpolation: str = "bicubic", antialias: bool = True,
                 num_prefix_tokens: int = 0, *, align_corners: bool = False, backend: Optional[str] = None,
                 device=None, dtype=None, mode: Optional[str] = None):
        super().__init__()
        if isinstance(base_grid, (tuple, list, torch.Size)):
            if len(base_grid) != 2:
                raise ValueError(f"{_OP}: base_grid must be an int or a pair (Gh, Gw), got {tuple(base_grid)!r}")
            grid = (check_int(_OP, "base_grid[0]", base_grid[0]), check_int(_OP, "base_grid[1]", base_grid[1]))
        else:
            grid = (check_int(_OP, "base_grid", base_grid),) * 2
        interpolation = resolve_interpolation(_OP, interpolation, mode)
        _check_options(_OP, interpolation, antialias, align_corners)
        self.base_grid = grid
        self.dim = check_int(_OP, "dim", dim)
        self.num_prefix_tokens = check_int(_OP, "num_prefix_tokens", num_prefix_tokens, minimum=0)
        self.interpolation, self.antialias, self.align_corners, self.backend = (interpolation, antialias,
                                                                                align_corners, backend)
        self.pos_embed = nn.Parameter(torch.empty((*grid, self.dim), device=device, dtype=dtype))
        self.reset_parameters()

    @property
    def mode(self) -> str:
        """Deprecated alias of ``interpolation``."""
        return self.interpolation

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def _options(self):
        # base_grid: a one-row grid (1, Gw) must never be read as timm's flat layout
        return dict(interpolation=self.interpolation, antialias=self.antialias, align_corners=self.align_corners,
                    backend=self.backend, base_grid=self.base_grid)

    def forward(self, tokens: torch.Tensor, grid_sizes: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        """tokens (T, dim) packed; grid_sizes int32 (S, 2); cu_seqlens int32 (S+1,) with
        sequence lengths num_prefix_tokens + h_i*w_i. Returns tokens + positional embedding."""
        return add_interp_pos_embed(tokens, self.pos_embed, grid_sizes, cu_seqlens,
                                    num_prefix_tokens=self.num_prefix_tokens, **self._options())

    def resampled(self, grid_sizes: torch.Tensor, total_tokens: Optional[int] = None) -> torch.Tensor:
        """The embedding alone, (sum h_i*w_i, dim), for every grid in grid_sizes (S, 2)."""
        return interp_pos_embed(self.pos_embed, grid_sizes, total_tokens=total_tokens, **self._options())

    def extra_repr(self) -> str:
        return (f"base_grid={self.base_grid}, dim={self.dim}, interpolation={self.interpolation!r}, "
                f"antialias={self.antialias}, align_corners={self.align_corners}, "
                f"num_prefix_tokens={self.num_prefix_tokens}")
