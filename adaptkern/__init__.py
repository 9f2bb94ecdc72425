"""adaptkern: GPU kernels, exact FLOP accounting and scaling laws for adaptive-shape training.

Public names follow ../shared/DESIGN.md. Ops take ``backend=None|"reference"|"cpu"|"triton"|"cuda"``;
``ADAPTKERN_BACKEND`` overrides the default (CUDA tensors -> GPU kernels, CPU -> cpu).
"""

__version__ = "0.1.0"

from ._backend import BACKENDS, available_backends
from ._checks import DTypeError, set_validation, validation
from ._ext import cuda_extension_built
from .ops.pack import Packed, cu_seqlens_from_lengths, pack, unpack
from .ops.patch_embed import PackedPatches, flexi_patch_embed, flexi_patch_embed_packed
from .ops.pi_resize import pi_resize, pi_resize_matrix
from .ops.interp_pos_embed import add_interp_pos_embed, interp_pos_embed
from .ops.varlen_attention import flash_attn_varlen_func, varlen_attention
from .ops.varlen_attn import AuxRequest, varlen_attn
from .integrations.prefix import prepend_prefix_tokens
from . import flops, integrations, models, nn, scaling, schedule, train

__all__ = [
    "AuxRequest",
    "BACKENDS",
    "DTypeError",
    "Packed",
    "PackedPatches",
    "add_interp_pos_embed",
    "available_backends",
    "cu_seqlens_from_lengths",
    "cuda_extension_built",
    "flash_attn_varlen_func",
    "flexi_patch_embed",
    "flexi_patch_embed_packed",
    "flops",
    "integrations",
    "interp_pos_embed",
    "models",
    "nn",
    "pack",
    "pi_resize",
    "pi_resize_matrix",
    "prepend_prefix_tokens",
    "scaling",
    "schedule",
    "set_validation",
    "train",
    "unpack",
    "validation",
    "varlen_attention",
    "varlen_attn",
]
