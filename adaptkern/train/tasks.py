"""What the loop trains: a *task* binds a model family, its data and its shapes.

* ``VisionTask``: a ``PackedViT`` classifier; a shape is a patch size and optionally an
  image resolution, named "p8" or "p8@24" (patch 8 on images resized to 24x24).
* ``LMTask``: a ``PackedLM`` next-byte model; a shape is a context length, named "ctx128".

Every task gives, as pure functions of (step, shape, rank, world_size): the batch, its FLOP
*signature* (what determines the step's exact FLOP count, computable without the data, so
every rank knows every rank's signature), and the loss. The held-out set is fixed.
"""

import re
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from ..models import PackedLM, PackedViT
from .data import rank_slice


class Batch(NamedTuple):
    inputs: torch.Tensor   # images (B, C, H, W) float32, or windows (B, L) int64
    targets: torch.Tensor  # labels (B,) int64, or next bytes (B, L) int64
    samples: int           # images or windows
    tokens: int            # tokens the model processes (patches, or bytes)


def _per_shape(setting, name, what):
    if not isinstance(setting, dict):
        return setting
    if name not in setting:
        raise ValueError(f"{what} has no entry for shape {name!r} (given for {sorted(setting)})")
    return int(setting[name])


def _seeded(seed, build):
    """Build a model under a fixed torch seed without disturbing the caller's RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


class VisionShape(NamedTuple):
    patch: int
    resolution: int

    @property
    def name(self) -> str:
        return f"p{self.patch}@{self.resolution}"

    @property
    def grid(self) -> int:
        return self.resolution // self.patch


class VisionTask:
    """Image classification with a PackedViT whose patch size (and resolution) can change.

    Args:
        data: ``SyntheticGlyphs`` or ``ImageFolderData`` (``num_classes``, ``in_chans``,
            ``image_size``, ``train_batch``, ``eval_set``).
        batch_size: global images per step (split evenly over ranks): an int, or a dict
            {shape name: images per step} (tuned per shape; every shape trained needs one).
        eval_batch_size: images per forward pass of the evaluation.
        model: overrides of the PackedViT sizes (dim, depth, num_heads, mlp_ratio,
            base_patch_size, pos_grid).
    """

    kind = "vit"

    def __init__(self, data, *, batch_size: int = 64, eval_batch_size: int = 64, model: Optional[dict] = None,
                 backend: Optional[str] = None):
        self.data, self.eval_batch_size = data, int(eval_batch_size)
        self.batch_size = dict(batch_size) if isinstance(batch_size, dict) else int(batch_size)
        self.model_config = dict(dim=64, depth=2, num_heads=4, mlp_ratio=2.0, base_patch_size=8, pos_grid=(8, 8))
        self.model_config.update(model or {})
        self.backend = backend

    def describe(self) -> dict:
        return {"task": self.kind, "batch_size": self.batch_size, "model": dict(self.model_config),
                **self.data.describe()}

    def shape(self, spec) -> VisionShape:
        """Parse "p8", "8", "p8@24" (patch 8 at resolution 24) or a VisionShape."""
        if isinstance(spec, VisionShape):
            return spec
        match = re.fullmatch(r"p?(\d+)(?:@(\d+))?", str(spec).strip())
        if not match:
            raise ValueError(f"shape {spec!r}: expected a patch size like 'p8' or 'p8@24' (patch@resolution)")
        patch = int(match.group(1))
        resolution = int(match.group(2) or self.data.image_size)
        if patch < 1 or resolution % patch:
            raise ValueError(f"shape {spec!r}: patch size {patch} must divide the image resolution {resolution}")
        return VisionShape(patch, resolution)

    def short_name(self, shape) -> str:
        """"p8" at the data's native resolution, "p8@24" otherwise."""
        shape = self.shape(shape)
        return f"p{shape.patch}" if shape.resolution == self.data.image_size else shape.name

    def build_model(self, seed: int) -> PackedViT:
        return _seeded(seed, lambda: PackedViT(num_classes=self.data.num_classes, in_chans=self.data.in_chans,
                                               backend=self.backend, **self.model_config))

    def batch_for(self, shape) -> int:
        """Global images per step at ``shape``."""
        return _per_shape(self.batch_size, self.short_name(shape), "batch_size")

    def signature(self, step: int, shape, rank: int, world_size: int):
        """(images on this rank, patch, grid): all a step's FLOPs depend on (uniform batches)."""
        rows = rank_slice(self.batch_for(shape), rank, world_size)
        shape = self.shape(shape)
        return (rows.stop - rows.start, shape.patch, shape.grid)

    def _prepare(self, images, shape, device):
        images = images.to(device, non_blocking=True)
        if images.shape[-1] != shape.resolution or images.shape[-2] != shape.resolution:
            images = F.interpolate(images, size=(shape.resolution, shape.resolution), mode="bilinear",
                                   antialias=True, align_corners=False)
        return images

    def train_batch(self, step: int, shape, rank: int, world_size: int, device) -> Batch:
        images, labels = self.data.train_batch(step, self.batch_for(shape), rank, world_size)
        shape = self.shape(shape)
        n = len(labels)
        return Batch(self._prepare(images, shape, device), labels.to(device, non_blocking=True), n,
                     n * shape.grid ** 2)

    def loss(self, model, batch: Batch, shape, reduction: str = "mean") -> torch.Tensor:
        return F.cross_entropy(model(batch.inputs, self.shape(shape).patch), batch.targets, reduction=reduction)

    def eval_batches(self, shape, rank: int, world_size: int, device):
        """This rank's share of the held-out set (contiguous chunks; shares may differ by one
        batch), in batches of ``eval_batch_size``."""
        shape = self.shape(shape)
        images, labels = self.data.eval_set()
        chunks = torch.arange(len(labels)).tensor_split(world_size)[rank]
        for start in range(0, len(chunks), self.eval_batch_size):
            idx = chunks[start:start + self.eval_batch_size]
            yield Batch(self._prepare(images[idx], shape, device), labels[idx].to(device), len(idx),
                        len(idx) * shape.grid ** 2)

    def eval_count(self, batch: Batch) -> int:
        """What the held-out loss is averaged over: images."""
        return batch.samples


class ContextShape(NamedTuple):
    context: int

    @property
    def name(self) -> str:
        return f"ctx{self.context}"


class LMTask:
    """Next-byte prediction with a PackedLM whose context length can change.

    Args:
        data: ``SyntheticCopyText`` or ``TextFileData``.
        tokens_per_batch: global predicted tokens per step, whatever the context (so a
            shorter context means more, shorter windows: the usual LM convention); an int or
            a dict {shape name: tokens per step}.
        eval_tokens: held-out tokens scored at every evaluation.
        model: overrides of the PackedLM sizes (dim, depth, num_heads, mlp_ratio).
    """

    kind = "lm"

    def __init__(self, data, *, tokens_per_batch: int = 4096, eval_tokens: int = 8192,
                 eval_batch_tokens: int = 8192, model: Optional[dict] = None, backend: Optional[str] = None):
        self.data = data
        self.tokens_per_batch = dict(tokens_per_batch) if isinstance(tokens_per_batch, dict) else int(tokens_per_batch)
        self.eval_tokens, self.eval_batch_tokens = int(eval_tokens), int(eval_batch_tokens)
        self.model_config = dict(dim=64, depth=2, num_heads=4, mlp_ratio=4.0)
        self.model_config.update(model or {})
        self.backend = backend

    def describe(self) -> dict:
        return {"task": self.kind, "tokens_per_batch": self.tokens_per_batch, "eval_tokens": self.eval_tokens,
                "model": dict(self.model_config), **self.data.describe()}

    def shape(self, spec) -> ContextShape:
        """Parse "ctx128", "128" or a ContextShape."""
        if isinstance(spec, ContextShape):
            return spec
        match = re.fullmatch(r"(?:ctx)?(\d+)", str(spec).strip())
        if not match or int(match.group(1)) < 1:
            raise ValueError(f"shape {spec!r}: expected a context length like 'ctx128'")
        return ContextShape(int(match.group(1)))

    def tokens_for(self, shape) -> int:
        """Global predicted tokens per step at ``shape`` (at least one window of its context;
        evaluating at a longer context than any training step holds is fine)."""
        shape = self.shape(shape)
        tokens = _per_shape(self.tokens_per_batch, shape.name, "tokens_per_batch")
        if tokens < shape.context:
            raise ValueError(f"shape {shape.name!r}: context {shape.context} exceeds tokens_per_batch={tokens}")
        return tokens

    def short_name(self, shape) -> str:
        return self.shape(shape).name

    def build_model(self, seed: int) -> PackedLM:
        return _seeded(seed, lambda: PackedLM(vocab_size=self.data.vocab_size, backend=self.backend,
                                              **self.model_config))

    def signature(self, step: int, shape, rank: int, world_size: int):
        """(windows on this rank, context): fixed-length windows, so that is the whole story."""
        rows = rank_slice(self.tokens_for(shape) // self.shape(shape).context, rank, world_size)
        return (rows.stop - rows.start, self.shape(shape).context)

    def train_batch(self, step: int, shape, rank: int, world_size: int, device) -> Batch:
        context = self.shape(shape).context
        w = self.data.train_batch(step, self.tokens_for(shape), context, rank, world_size).to(device, non_blocking=True)
        return Batch(w[:, :-1], w[:, 1:], w.shape[0], w.shape[0] * context)

    def loss(self, model, batch: Batch, shape, reduction: str = "mean") -> torch.Tensor:
        logits = model(batch.inputs)
        return F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), reduction=reduction)

    def eval_batches(self, shape, rank: int, world_size: int, device):
        context = self.shape(shape).context
        w = self.data.eval_windows(context, self.eval_tokens)
        chunks = torch.arange(w.shape[0]).tensor_split(world_size)[rank]
        per_batch = max(1, self.eval_batch_tokens // context)
        for start in range(0, len(chunks), per_batch):
            part = w[chunks[start:start + per_batch]].to(device)
            yield Batch(part[:, :-1], part[:, 1:], part.shape[0], part.shape[0] * context)

    def eval_count(self, batch: Batch) -> int:
        """What the held-out loss is averaged over: predicted tokens."""
        return batch.tokens
