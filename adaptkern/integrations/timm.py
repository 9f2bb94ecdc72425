"""timm Vision Transformers run NaViT-style: a list of images of any sizes, packed, at any
patch size, through adaptkern's ops (``pip install adaptkern[timm]``).

``PackedViT(vit)`` holds a timm ``VisionTransformer`` (its own parameters: nothing is
copied) and runs it as

    flexi_patch_embed_packed (the patch weight PI-resized bicubic + antialias, as timm's
    resample_patch_embed) -> patch_embed.norm -> prepend_prefix_tokens (class, registers)
    -> add_interp_pos_embed (timm's pos_embed layout read as is, bicubic + antialias as
    timm's resample_abs_pos_embed) -> norm_pre -> blocks with varlen_attention -> norm
    -> per-image pooling -> fc_norm -> head

Image i's logits equal ``vit.forward(image_i[None])`` of the same timm model built with
``dynamic_img_size=True`` at that patch size (weights resampled by timm), to float
round-off (tests/test_integrations_timm.py).
"""

import contextlib
import functools
from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from ..ops.interp_pos_embed import add_interp_pos_embed
from ..ops.patch_embed import flexi_patch_embed_packed
from ..ops.pi_resize import as_pair
from ..ops.varlen_attention import varlen_attention
from .prefix import prepend_prefix_tokens

_OP = "adaptkern.integrations.timm.PackedViT"
# timm's resampling of patch weights (resample_patch_embed) and position embeddings
# (resample_abs_pos_embed); FlexiViT / big_vision use bilinear without antialias.
TIMM_RESAMPLING = dict(interpolation="bicubic", antialias=True)


@contextlib.contextmanager
def _forward_as(modules, forward):
    """Each module's forward is ``forward(module, ...)`` for the duration. The modules are
    still called (``module(...)``), so hooks, FlopCounterMode's tracker and count_step see
    them, and timm's own forward is back afterwards."""
    try:
        for module in modules:
            module.forward = functools.partial(forward, module)
        yield
    finally:
        for module in modules:
            module.__dict__.pop("forward", None)


def _timm_classes():
    try:
        from timm.layers import Attention
        from timm.models.vision_transformer import VisionTransformer
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"{_OP} needs timm: pip install 'adaptkern[timm]' ({err})") from err
    return VisionTransformer, Attention


class PackedViT(nn.Module):
    """A timm VisionTransformer on packed images of any sizes and any patch size.

    Args:
        timm_vit: a ``timm.models.vision_transformer.VisionTransformer`` (class token,
            register tokens, no_embed_class either way, global_pool "token", "avg", "max" or
            "avgmax"; any block type whose ``.attn`` is timm's ``Attention``, which runs
            packed while this module runs).
            Its parameters are used in place, so training this module trains it.
        patch_size: the default patch size (int or (h, w)); None: timm_vit's own.
        backend: forwarded to every op (None: dispatch by device).

    forward(images, patch_size=None): images a list of (C, H_i, W_i) tensors (H_i, W_i
    divisible by the patch size) -> (S, num_classes) logits (pooled features when the
    head is an Identity). forward_features(...) -> (tokens (T, D), cu_seqlens int32 (S+1,)),
    the tokens after the final norm, each image's prefix tokens first.
    """

    def __init__(self, timm_vit: nn.Module, *, patch_size=None, backend: Optional[str] = None):
        super().__init__()
        self._check_model(timm_vit)
        self.vit = timm_vit
        self.backend = backend
        self.patch_size = as_pair(_OP, "patch_size", patch_size if patch_size is not None
                                  else tuple(timm_vit.patch_embed.patch_size))
        self.num_prefix_tokens = int(timm_vit.num_prefix_tokens)
        self.base_grid = tuple(int(g) for g in timm_vit.patch_embed.grid_size)

    @staticmethod
    def _check_model(vit):
        vit_cls, attention = _timm_classes()
        if not isinstance(vit, vit_cls):
            raise TypeError(f"{_OP}: timm_vit must be a timm VisionTransformer, got {type(vit).__name__}")
        for i, blk in enumerate(vit.blocks):
            if type(getattr(blk, "attn", None)) is not attention:
                raise NotImplementedError(f"{_OP}: block {i} ({type(blk).__name__}) has no timm Attention as .attn "
                                          f"(got {type(getattr(blk, 'attn', None)).__name__})")
        if getattr(vit, "attn_pool", None) is not None:
            raise NotImplementedError(f"{_OP}: attention pooling (global_pool='map') is not supported")
        if vit.global_pool not in ("token", "avg", "max", "avgmax", ""):
            raise NotImplementedError(f"{_OP}: global_pool={vit.global_pool!r} is not supported")
        if getattr(vit.patch_embed, "dynamic_img_pad", False):
            raise NotImplementedError(f"{_OP}: dynamic_img_pad is not supported (image sizes must divide by the "
                                      "patch size)")
        return attention

    # ------------------------------------------------------------------ embedding
    def embed(self, images: Sequence[torch.Tensor], patch_size=None):
        """Patch tokens + prefix tokens + position embeddings, before the blocks.
        Returns (tokens (T, D), cu_seqlens int32 (S+1,), max_seqlen)."""
        vit = self.vit
        patch = self.patch_size if patch_size is None else as_pair(_OP, "patch_size", patch_size)
        with _forward_as([vit.patch_embed], functools.partial(self._patch_embed, patch_size=patch)):
            tokens, cu_seqlens, grid_sizes, max_seqlen = vit.patch_embed(list(images))
        prefix = [t[0] for t in (vit.cls_token, getattr(vit, "reg_token", None)) if t is not None]
        pos = vit.pos_embed
        pos_opts = dict(base_grid=self.base_grid, backend=self.backend, **TIMM_RESAMPLING)
        if pos is not None and vit.no_embed_class:
            tokens = add_interp_pos_embed(tokens, pos, grid_sizes, cu_seqlens, num_prefix_tokens=0, **pos_opts)
        if prefix:
            tokens, cu_seqlens, max_seqlen = prepend_prefix_tokens(tokens, cu_seqlens, torch.cat(prefix),
                                                                   max_seqlen)
        if pos is not None and not vit.no_embed_class:
            tokens = add_interp_pos_embed(tokens, pos, grid_sizes, cu_seqlens,
                                          num_prefix_tokens=self.num_prefix_tokens, **pos_opts)
        return vit.pos_drop(tokens), cu_seqlens, max_seqlen

    def _patch_embed(self, module, images, patch_size):
        """timm PatchEmbed.forward on a list of images: packed tokens at ``patch_size``."""
        proj = module.proj
        tokens, cu_seqlens, grid_sizes, max_seqlen = flexi_patch_embed_packed(
            images, proj.weight, proj.bias, patch_size, backend=self.backend, **TIMM_RESAMPLING)
        return module.norm(tokens), cu_seqlens, grid_sizes, max_seqlen

    # ------------------------------------------------------------------ blocks
    def _attention(self, attn, x, cu_seqlens, max_seqlen, attn_mask=None, is_causal=False):
        """timm Attention.forward on packed tokens x (1, T, D): varlen attention per image."""
        if attn_mask is not None or is_causal:
            raise NotImplementedError(f"{_OP}: attn_mask / is_causal are not supported on packed images")
        if self.training and attn.attn_drop.p > 0:
            raise NotImplementedError(f"{_OP}: attention dropout (attn_drop > 0) is not supported in training")
        x = x[0]
        total = x.shape[0]
        gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None
        q, k, v = attn.qkv(x).view(total, 3, attn.num_heads, attn.head_dim).unbind(1)
        q, k = attn.q_norm(q), attn.k_norm(k)
        out = varlen_attention(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen,
                               softmax_scale=attn.scale, backend=self.backend)
        out = attn.norm(out.reshape(total, -1))
        if gate is not None:
            out = out * gate
        return attn.proj_drop(attn.proj(out))[None]

    def forward_features(self, images: Sequence[torch.Tensor], patch_size=None) -> Tuple[torch.Tensor, torch.Tensor]:
        """images: list of (C, H_i, W_i) -> (tokens (T, D) after the final norm, cu_seqlens)."""
        tokens, cu_seqlens, max_seqlen = self.embed(images, patch_size)
        vit = self.vit
        if self.training and getattr(vit.patch_drop, "prob", 0.0) > 0:
            raise NotImplementedError(f"{_OP}: patch dropout (patch_drop_rate > 0) is not supported on packed tokens "
                                      "in training")
        if self.training and any(getattr(m, "drop_prob", 0.0) > 0 for m in vit.blocks.modules()):
            raise NotImplementedError(f"{_OP}: stochastic depth (drop_path > 0) drops whole images and is not "
                                      "supported on packed tokens in training")
        x = vit.norm_pre(vit.patch_drop(tokens))[None]
        attention = functools.partial(self._attention, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen)
        with _forward_as([blk.attn for blk in vit.blocks], attention):
            for blk in vit.blocks:
                x = blk(x)
        return vit.norm(x[0]), cu_seqlens

    # ------------------------------------------------------------------ head
    def pool(self, tokens: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        """timm's global pooling per packed image -> (S, D)."""
        vit = self.vit
        starts = cu_seqlens[:-1].to(torch.int64)
        if vit.global_pool == "token":
            return tokens[starts]
        if not vit.global_pool:
            raise NotImplementedError(f"{_OP}: global_pool='' returns tokens; use forward_features")
        skip = 0 if getattr(vit, "pool_include_prefix", False) else self.num_prefix_tokens
        index = torch.arange(tokens.shape[0], device=tokens.device)
        sequence = torch.searchsorted(cu_seqlens[1:].to(torch.int64), index, right=True)
        keep = (index - starts[sequence]) >= skip
        rows, sequence = tokens[keep], sequence[keep]
        num_seqs = starts.shape[0]
        out = {}
        if vit.global_pool in ("avg", "avgmax"):
            sums = tokens.new_zeros((num_seqs, tokens.shape[1])).index_add(0, sequence, rows)
            counts = (cu_seqlens.diff().to(tokens.dtype) - skip).clamp_min(1)
            out["avg"] = sums / counts[:, None]
        if vit.global_pool in ("max", "avgmax"):
            init = tokens.new_full((num_seqs, tokens.shape[1]), float("-inf"))
            out["max"] = init.scatter_reduce(0, sequence[:, None].expand_as(rows), rows, "amax")
        if vit.global_pool == "avgmax":
            return 0.5 * (out["max"] + out["avg"])
        return out[vit.global_pool]

    def forward(self, images: Sequence[torch.Tensor], patch_size=None) -> torch.Tensor:
        """images: list of (C, H_i, W_i) -> (S, num_classes) logits."""
        tokens, cu_seqlens = self.forward_features(images, patch_size)
        vit = self.vit
        return vit.head(vit.head_drop(vit.fc_norm(self.pool(tokens, cu_seqlens))))

    def extra_repr(self) -> str:
        return f"patch_size={self.patch_size}, base_grid={self.base_grid}, num_prefix_tokens={self.num_prefix_tokens}"
