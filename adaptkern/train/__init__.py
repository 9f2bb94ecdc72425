"""Adaptive-shape training (``adaptkern.train``): a loop that trains a packed ViT switching
patch size (and resolution) or a packed LM switching context length on a compute schedule,
with exact FLOP ledgers, checkpoints/resume, DDP, crash-safe sweeps, scaling-law fits and
the compute-optimal adaptive run of ``adaptkern demo``."""

from .data import ImageFolderData, SyntheticCopyText, SyntheticGlyphs, TextFileData
from .loop import RunConfig, RunResult, train_run
from .schedule import ShapeSchedule
from .tasks import LMTask, VisionTask

__all__ = ["ImageFolderData", "LMTask", "RunConfig", "RunResult", "ShapeSchedule", "SyntheticCopyText",
           "SyntheticGlyphs", "TextFileData", "VisionTask", "train_run"]
