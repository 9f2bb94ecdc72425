"""Small packed models built from adaptkern's ops, for the adaptive-training loop, the FLOP
report and the demo: a ViT whose patch size (and image resolution) can change between
steps, and a causal LM whose context length can change."""

from .lm import PackedLM
from .transformer import Block, VarlenSelfAttention, segment_ids
from .vit import PackedViT

__all__ = ["Block", "PackedLM", "PackedViT", "VarlenSelfAttention", "segment_ids"]
