"""nn.Module wrappers of the ops (thin: state + a call to the functional op)."""

from .patch_embed import FlexiPatchEmbed  # noqa: E402,F401
from .pos_embed import InterpPosEmbed  # noqa: E402,F401
