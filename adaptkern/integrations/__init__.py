"""Drop-in use of adaptkern's ops in other libraries' models.

* ``ak.integrations.timm.PackedViT``: a timm VisionTransformer on packed images of any
  sizes and patch sizes (``pip install adaptkern[timm]``).
* ``ak.integrations.transformers.register()``: "adaptkern" as a transformers attention
  implementation, packed sequences included (``pip install adaptkern[transformers]``).
* ``prepend_prefix_tokens``: class / register tokens in front of every packed sequence.

The timm and transformers submodules import their library on first access only.
"""

import importlib

from .prefix import prepend_prefix_tokens

__all__ = ["prepend_prefix_tokens", "timm", "transformers"]


def __getattr__(name):
    if name in ("timm", "transformers"):
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
