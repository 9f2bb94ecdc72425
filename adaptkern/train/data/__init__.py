"""Deterministic training data: embedded synthetic sets (no download) and user folders/files."""

from .images import ImageFolderData, SyntheticGlyphs, rank_slice
from .scales import SyntheticScales
from .text import SyntheticCopyText, TextFileData

__all__ = ["ImageFolderData", "SyntheticCopyText", "SyntheticGlyphs", "SyntheticScales", "TextFileData", "rank_slice"]
