"""``FlexiPatchEmbed``: a patch embedding that runs at any patch size from one base-size
weight (FlexiViT), on a batch or on a list of images of different resolutions."""

import math
from typing import Iterable, Optional

import torch
from torch import nn

from .._checks import check_int
from ..ops.patch_embed import flexi_patch_embed, flexi_patch_embed_packed
from ..ops.pi_resize import as_pair, cached_resize_factors, check_interpolation

_OP = "adaptkern.nn.FlexiPatchEmbed"


class FlexiPatchEmbed(nn.Module):
    """Holds a (embed_dim, in_chans, *base_patch_size) weight and an optional bias, and
    embeds images at the patch size of each call.

    Args:
        base_patch_size: int or (h, w), the size of the stored weight.
        in_chans, embed_dim: C and D.
        bias: whether to learn a (D,) bias.
        interpolation, antialias: the resize whose pseudo-inverse resizes the weight.
        backend: forwarded to the op (None: dispatch by device).

    Initialised like timm's PatchEmbed (an nn.Conv2d): kaiming-uniform weight with
    a=sqrt(5), bias uniform in +-1/sqrt(fan_in).
    """

    def __init__(self, base_patch_size, in_chans: int = 3, embed_dim: int = 768, bias: bool = True, *,
                 interpolation: str = "bilinear", antialias: bool = False, backend: Optional[str] = None,
                 device=None, dtype=None):
        super().__init__()
        self.base_patch_size = as_pair(_OP, "base_patch_size", base_patch_size)
        check_interpolation(_OP, interpolation, antialias)
        self.in_chans = check_int(_OP, "in_chans", in_chans)
        self.embed_dim = check_int(_OP, "embed_dim", embed_dim)
        self.interpolation, self.antialias, self.backend = interpolation, antialias, backend
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty((embed_dim, in_chans, *self.base_patch_size), **factory))
        self.bias = nn.Parameter(torch.empty(embed_dim, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.weight[0].numel()) if self.weight[0].numel() else 0.0
            nn.init.uniform_(self.bias, -bound, bound)

    def prewarm(self, patch_sizes: Iterable) -> None:
        """Fill the PI-resize caches (matrix and separable factors) for ``patch_sizes`` on the
        weight's device, so a torch.compile'd forward computes none of them."""
        dtype = torch.float64 if self.weight.dtype == torch.float64 else torch.float32
        for size in patch_sizes:
            size = as_pair(f"{_OP}.prewarm", "patch_sizes", size)
            if size != self.base_patch_size:
                cached_resize_factors(self.base_patch_size, size, self.interpolation, self.antialias,
                                      self.weight.device, dtype)

    def forward(self, images, patch_size=None):
        """images: (B, C, H, W) -> tokens (B, N, D); or a list of (C, H_i, W_i) ->
        PackedPatches(tokens (T, D), cu_seqlens, grid_sizes, max_seqlen). patch_size
        defaults to the base size."""
        patch_size = self.base_patch_size if patch_size is None else patch_size
        kwargs = dict(interpolation=self.interpolation, antialias=self.antialias, backend=self.backend)
        if isinstance(images, torch.Tensor):
            return flexi_patch_embed(images, self.weight, self.bias, patch_size, **kwargs)
        return flexi_patch_embed_packed(images, self.weight, self.bias, patch_size, **kwargs)

    def extra_repr(self) -> str:
        return (f"base_patch_size={self.base_patch_size}, in_chans={self.in_chans}, embed_dim={self.embed_dim}, "
                f"bias={self.bias is not None}, interpolation={self.interpolation!r}, antialias={self.antialias}")
