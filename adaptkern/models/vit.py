"""A packed ViT whose patch size and input resolution may change at every step (FlexiViT,
Beyer et al. 2023; NaViT-style packing, Dehghani et al. 2023). Images of one batch may have
different sizes; their tokens are packed, never padded."""

from typing import Optional, Sequence, Union

import torch
from torch import nn

from .._checks import check_int
from ..nn import FlexiPatchEmbed, InterpPosEmbed
from .transformer import Block, segment_ids


def _pair(patch_size):
    return (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)


class PackedViT(nn.Module):
    """Classifier: flexible patch embedding -> resampled position embedding -> blocks ->
    per-image mean pool -> linear head.

    Args:
        num_classes, in_chans, dim, depth, num_heads, mlp_ratio: the usual ViT sizes.
        base_patch_size: patch size of the stored patch-embedding weight (PI-resized to
            whatever patch size a call asks for).
        pos_grid: (rows, cols) of the stored position-embedding grid, resampled per image.
        backend: passed to every op (None: CUDA -> kernels, CPU -> the cpu backend).
    """

    def __init__(self, *, num_classes: int, in_chans: int = 3, dim: int = 64, depth: int = 2, num_heads: int = 4,
                 mlp_ratio: float = 2.0, base_patch_size: int = 8, pos_grid=(8, 8), backend: Optional[str] = None):
        super().__init__()
        check_int("PackedViT", "num_classes", num_classes)
        check_int("PackedViT", "depth", depth, minimum=0)
        self.config = dict(num_classes=num_classes, in_chans=in_chans, dim=dim, depth=depth, num_heads=num_heads,
                           mlp_ratio=mlp_ratio, base_patch_size=base_patch_size, pos_grid=tuple(pos_grid))
        self.backend = backend
        self.patch_embed = FlexiPatchEmbed(base_patch_size, in_chans, dim, backend=backend)
        self.pos_embed = InterpPosEmbed(tuple(pos_grid), dim, backend=backend)
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio, causal=False, backend=backend) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def embed(self, images: Union[torch.Tensor, Sequence[torch.Tensor]], patch_size):
        """Packed tokens (T, D), cu_seqlens int32 (S+1,), grid_sizes int32 (S, 2), max_seqlen,
        and ``uniform_seqlen`` (the common length when every image has the same grid, else
        None; known from Python shapes, no host sync) for a batch tensor (B, C, H, W) or a
        list of (C, H_i, W_i) images."""
        ph, pw = _pair(patch_size)
        if isinstance(images, torch.Tensor):
            if images.dim() != 4:
                raise ValueError(f"PackedViT: images must be (B, C, H, W) or a list of (C, H, W), got shape "
                                 f"{tuple(images.shape)}")
            tokens = self.patch_embed(images, patch_size)  # (B, N, D)
            batch, n = tokens.shape[:2]
            device = tokens.device
            # Built on the device from Python ints: no host-to-device copy on the hot path.
            cu_seqlens = torch.arange(batch + 1, device=device, dtype=torch.int32) * n
            grid_sizes = torch.empty(batch, 2, device=device, dtype=torch.int32)
            grid_sizes[:, 0], grid_sizes[:, 1] = images.shape[2] // ph, images.shape[3] // pw
            return tokens.reshape(batch * n, -1), cu_seqlens, grid_sizes, n, n
        images = list(images)
        packed = self.patch_embed(images, patch_size)
        lengths = {(img.shape[-2] // ph) * (img.shape[-1] // pw) for img in images}
        uniform = lengths.pop() if len(lengths) == 1 else None
        return packed.tokens, packed.cu_seqlens, packed.grid_sizes, packed.max_seqlen, uniform

    def forward(self, images, patch_size) -> torch.Tensor:
        """Logits (S, num_classes) for S images: a (B, C, H, W) tensor, or a list of
        (C, H_i, W_i) tensors of any sizes divisible by ``patch_size`` (int or (ph, pw))."""
        tokens, cu_seqlens, grid_sizes, max_seqlen, uniform = self.embed(images, patch_size)
        x = self.pos_embed(tokens, grid_sizes, cu_seqlens)
        for block in self.blocks:
            x = block(x, cu_seqlens, max_seqlen, uniform_seqlen=uniform)
        x = self.norm(x)
        num_images = cu_seqlens.numel() - 1
        if uniform:
            pooled = x.view(num_images, uniform, -1).mean(1)
        else:
            seg = segment_ids(cu_seqlens, x.shape[0])
            pooled = x.new_zeros((num_images, x.shape[1])).index_add_(0, seg, x)
            counts = (cu_seqlens[1:] - cu_seqlens[:-1]).clamp_min(1).to(x.dtype)
            pooled = pooled / counts[:, None]
        return self.head(pooled)
