"""adaptkern: GPU kernels, exact FLOP accounting and scaling laws for adaptive-shape training.

Public names follow ../shared/DESIGN.md. Ops take ``backend=None|"reference"|"triton"|"cuda"``;
``ADAPTKERN_BACKEND`` overrides the default (CUDA tensors -> GPU kernels, CPU -> reference).
"""

__version__ = "0.1.0"

from ._backend import BACKENDS, available_backends
from ._checks import DTypeError, set_validation
from ._ext import cuda_extension_built
from .ops.pack import Packed, cu_seqlens_from_lengths, pack, unpack

__all__ = [
    "BACKENDS",
    "DTypeError",
    "Packed",
    "available_backends",
    "cu_seqlens_from_lengths",
    "cuda_extension_built",
    "pack",
    "set_validation",
    "unpack",
]
