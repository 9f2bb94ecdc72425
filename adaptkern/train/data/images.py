"""Image classification data for the training loop.

* ``SyntheticGlyphs``: the embedded default. Procedurally generated, deterministic from a
  seed, no download, an endless training stream (every step sees fresh images, so the
  loss-vs-compute curves measure learning, not memorization) and a fixed held-out set.
* ``ImageFolderData``: a user's folder in ImageFolder layout (one subfolder per class),
  loaded with PIL, resized, with a deterministic held-out split.

Both hand out batches as a pure function of (step, rank, world_size): the data position of
a run is its step number, so a resumed or distributed run sees exactly the images an
uninterrupted single-process run would have seen, sharded by rank.
"""

import os
from typing import Tuple

import numpy as np
import torch

# 4x4 stencils with 8 "on" pixels each, so the amount of ink never reveals the class.
_CLASS_GLYPHS = [
    "1001011001101001",  # x
    "0110100110010110",  # diamond
    "1111100010001100",  # corner
    "0110011001100110",  # bar
    "1100110000110011",  # blocks
]
# Distractors drawn beside the class glyph: other 8-pixel shapes, so the model must tell
# shapes apart rather than detect ink.
_CLUTTER_GLYPHS = ["0000111111110000", "1010010110100101", "0011001111001100", "1110100010001110"]
GLYPH = 4  # glyph side in pixels; glyphs sit on a 4-pixel grid


def _stencils(codes):
    return np.array([[int(c) for c in code] for code in codes], dtype=np.float32).reshape(-1, GLYPH, GLYPH)


def _step_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """An independent generator per (seed, stream, index): batches depend on nothing else."""
    return np.random.default_rng([int(seed), int(stream), int(index)])


def rank_slice(global_batch: int, rank: int, world_size: int) -> slice:
    """The rows of a global batch that ``rank`` trains on (contiguous, equal shares)."""
    if global_batch % world_size:
        raise ValueError(f"batch_size={global_batch} must be divisible by the world size {world_size} "
                         "(every rank trains on an equal share of the global batch)")
    share = global_batch // world_size
    return slice(rank * share, (rank + 1) * share)


class _GeneratedImages:
    """Training batches and the held-out set of a synthetic task whose ``generate(rng, n)``
    draws n images and labels; each task names its two random streams (train, eval)."""

    STREAMS = (0, 1)

    def train_batch(self, step: int, batch_size: int, rank: int = 0, world_size: int = 1):
        """This rank's share of global batch ``step``: images (B/world, 3, S, S) float32 and
        labels (B/world,) int64, CPU tensors."""
        rows = rank_slice(batch_size, rank, world_size)
        images, labels = self.generate(_step_rng(self.seed, self.STREAMS[0], step), batch_size)
        return torch.from_numpy(images[rows]), torch.from_numpy(labels[rows])

    def eval_set(self):
        """The fixed held-out set: images (num_eval, 3, S, S) float32, labels (num_eval,) int64
        (its own random stream, disjoint from training by construction)."""
        if self._eval is None:
            images, labels = self.generate(_step_rng(self.seed, self.STREAMS[1], 0), self.num_eval)
            self._eval = (torch.from_numpy(images), torch.from_numpy(labels))
        return self._eval


class SyntheticGlyphs(_GeneratedImages):
    """Seeded glyph images where fine detail decides the class.

    Each 3-channel image (``image_size`` square, a multiple of 4; float32, roughly zero
    mean / unit scale) is Gaussian noise (std ``noise``) with a coarse *layout* bit (a faint
    color cast, reddish or greenish, blurred by a random cast of half its size) and, in
    distinct cells of a 4-pixel grid (like characters in a fixed-width font), one class
    glyph and ``clutter`` distractor glyphs (4x4 stencils, 8 pixels each, random positive
    colors of strength ``glyph_contrast``). The label is ``layout * 5 + glyph`` (10 classes).

    Why the per-shape curves cross: the layout bit is visible to any patch size, so coarse
    patches (few tokens, cheap steps) quickly learn half the label. The glyph is a 4-pixel
    shape: a 4-pixel patch sees it whole, always at the same place in the patch, so one
    linear embedding recognises it anywhere; an 8- or 16-pixel patch sees it at one of 4 or
    16 offsets, among noise and distractors, which a small model learns slowly and
    incompletely. So large patches are cheaper early and small patches reach lower loss
    later (as with FlexiViT's patch sizes, Beyer et al. 2023, and the shape-switching
    analysis of Anagnostidis et al. 2023).
    """

    num_classes = 10
    in_chans = 3

    def __init__(self, *, seed: int = 0, image_size: int = 32, num_eval: int = 1024, clutter: int = 1,
                 noise: float = 0.6, glyph_contrast: float = 1.5, layout_contrast: float = 0.35):
        if image_size % GLYPH or (image_size // GLYPH) ** 2 < 1 + clutter:
            raise ValueError(f"SyntheticGlyphs: image_size={image_size} must be a multiple of {GLYPH} with room for "
                             f"{1 + clutter} glyphs")
        self.seed, self.image_size, self.num_eval = int(seed), int(image_size), int(num_eval)
        self.noise, self.glyph_contrast, self.layout_contrast = noise, glyph_contrast, layout_contrast
        self.clutter = int(clutter)
        self._glyphs = _stencils(_CLASS_GLYPHS)
        self._clutter = _stencils(_CLUTTER_GLYPHS)
        self._layout_dir = np.array([1.0, -1.0, 0.0], dtype=np.float32) / np.sqrt(2.0)
        self._eval = None

    def describe(self) -> dict:
        return {"data": "synthetic-glyphs", "seed": self.seed, "image_size": self.image_size,
                "num_eval": self.num_eval, "clutter": self.clutter, "noise": self.noise,
                "glyph_contrast": self.glyph_contrast, "layout_contrast": self.layout_contrast}

    def generate(self, rng: np.random.Generator, n: int) -> Tuple[np.ndarray, np.ndarray]:
        """n images (n, 3, S, S) float32 and labels (n,) int64 drawn from ``rng``."""
        size, cells = self.image_size, self.image_size // GLYPH
        layout = rng.integers(0, 2, n)
        glyph = rng.integers(0, len(_CLASS_GLYPHS), n)
        images = rng.normal(0.0, self.noise, (n, 3, size, size)).astype(np.float32)
        # The layout bit shifts the mean color along a fixed direction (+ or -), blurred by a
        # random per-image color cast: visible to any patch size, not perfectly.
        cast = rng.normal(0.0, 1.0, (n, 3)).astype(np.float32) * (self.layout_contrast / 2)
        shift = np.where(layout[:, None] == 1, 1.0, -1.0).astype(np.float32) * self._layout_dir[None]
        images += (self.layout_contrast * shift + cast)[:, :, None, None]
        for i in range(n):
            where = rng.choice(cells * cells, 1 + self.clutter, replace=False)
            stamps = [self._glyphs[glyph[i]]] + [self._clutter[k] for k in rng.integers(0, len(self._clutter),
                                                                                          self.clutter)]
            colors = rng.uniform(0.5, 1.5, (len(stamps), 3)).astype(np.float32) * self.glyph_contrast
            for cell, stamp, color in zip(where, stamps, colors):
                y, x = (cell // cells) * GLYPH, (cell % cells) * GLYPH
                images[i, :, y:y + GLYPH, x:x + GLYPH] += color[:, None, None] * stamp[None]
        return images, (layout * len(_CLASS_GLYPHS) + glyph).astype(np.int64)

class ImageFolderData:
    """Images from ``root/<class>/<file>`` (ImageFolder layout), RGB, resized to
    ``image_size`` x ``image_size`` and normalized per channel with the training split's
    mean and std. ``eval_fraction`` of each class (at least one image) is held out, chosen
    by a seeded shuffle. Training batches walk seeded per-epoch permutations of the rest."""

    in_chans = 3
    _EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")

    def __init__(self, root, *, seed: int = 0, image_size: int = 32, eval_fraction: float = 0.1):
        from PIL import Image

        root = os.fspath(root)
        if not os.path.isdir(root):
            raise ValueError(f"--images: {root!r} is not a folder (expected one subfolder per class)")
        classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        if len(classes) < 2:
            raise ValueError(f"--images: {root!r} needs at least 2 class subfolders, found {len(classes)}")
        if not 0 < eval_fraction < 1:
            raise ValueError(f"ImageFolderData: eval_fraction must be in (0, 1), got {eval_fraction}")
        self.root, self.classes, self.seed, self.image_size = root, classes, int(seed), int(image_size)
        self.num_classes = len(classes)
        rng = np.random.default_rng([self.seed, 2])
        train, held = [], []
        for label, name in enumerate(classes):
            folder = os.path.join(root, name)
            files = sorted(f for f in os.listdir(folder) if f.lower().endswith(self._EXTENSIONS))
            if len(files) < 2:
                raise ValueError(f"--images: class folder {folder!r} needs at least 2 images, found {len(files)}")
            order = rng.permutation(len(files))
            n_eval = max(1, int(round(eval_fraction * len(files))))
            for rank, idx in enumerate(order):
                with Image.open(os.path.join(folder, files[idx])) as img:
                    img = img.convert("RGB").resize((image_size, image_size), Image.BILINEAR)
                    array = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0
                (held if rank < n_eval else train).append((array, label))
        self._train_x = np.stack([a for a, _ in train])
        self._train_y = np.array([y for _, y in train], dtype=np.int64)
        mean = self._train_x.mean(axis=(0, 2, 3), keepdims=True)
        std = self._train_x.std(axis=(0, 2, 3), keepdims=True) + 1e-6
        self._train_x = (self._train_x - mean) / std
        self._eval = (torch.from_numpy(((np.stack([a for a, _ in held]) - mean) / std).astype(np.float32)),
                      torch.tensor([y for _, y in held], dtype=torch.int64))

    def describe(self) -> dict:
        return {"data": "image-folder", "root": os.path.abspath(self.root), "classes": self.classes,
                "seed": self.seed, "image_size": self.image_size, "num_train": len(self._train_y),
                "num_eval": len(self._eval[1])}

    def train_batch(self, step: int, batch_size: int, rank: int = 0, world_size: int = 1):
        """As ``SyntheticGlyphs.train_batch``: sample positions step*B ... step*B + B - 1 of
        the endless sequence of seeded epoch permutations."""
        rows = rank_slice(batch_size, rank, world_size)
        n = len(self._train_y)
        positions = np.arange(step * batch_size, (step + 1) * batch_size)[rows]
        index = np.empty(len(positions), dtype=np.int64)
        for epoch in np.unique(positions // n):
            pick = positions // n == epoch
            index[pick] = np.random.default_rng([self.seed, 3, int(epoch)]).permutation(n)[positions[pick] % n]
        return torch.from_numpy(self._train_x[index].astype(np.float32)), torch.from_numpy(self._train_y[index])

    def eval_set(self):
        return self._eval
