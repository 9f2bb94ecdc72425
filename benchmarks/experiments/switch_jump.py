"""Issue 16 experiment: how far a switch p16 -> p8 sets a model back, on task variants.

Static p16 (batch 64) and p8 (batch 32) runs, seed 0, each also evaluated at the other patch
size at every eval (``cross``: the loss right after a switch). Variants: "orig" (the demo's
SyntheticScales); "mag" (each feature's 4x4x3 sign pattern shown at a scale drawn per image,
16, 8 or 4 px, as objects appear at any distance); "pink" (mag on a 1/f, scale-invariant,
background instead of white noise); "mag32" (mag with 32 px too, the whole image: at p16 a
feature spans 2 x 2 tokens at its largest, which is how a 16 px feature looks at p8); "orig64"
(the demo's task on 64 px images: grids 4 x 4 at p16 and 8 x 8 at p8 instead of 2 x 2 and
4 x 4); "mag64" (mag on 64 px images with 32 px features); "navit" (mag64 with mixed
resolutions, see MixedResolution). Not part of the demo: a record of what was tried.

Measured (3e11, seed 0): mag32 p16 ends 0.753, p8 1.036; p16 evaluated at p8 at 1.94e11: 0.749
-> 1.992 (+1.24 nats), so seeing multi-token features at p16 did not make the switch cheaper.
orig64 p16 ends 0.964, p8 1.518; p16 at p8 at 1.95e11: 1.129 -> 2.86 (+1.73 nats), and the gap
grows with training (+0.09 at 2.2e10): a p16 model specialises to its token scale, as a plain
ViT does when PI-resized to another patch size (FlexiViT, Beyer et al. 2023, Fig. 2: DeiT III
at other patch sizes).
mag64 (mag on 64 px, scales 32-4): p16 1.236, p8 1.823 at 3e11; jump +0.60 at 3e11. navit (mag64
with half of every batch at 32 px, packed NaViT-style, the held-out set likewise): p16 1.153,
p8 1.393 at 3e11; jump +0.11 at 5.3e10, +0.35 at 3e11, the smallest seen, but p8 never
overtakes p16 within 3e11 FLOPs, so no switch can pay inside this budget. At 1e12 (`navit
1e12`): p16 0.955, p8 1.098, the gap narrowing (0.24 at 3e11, 0.14 at 1e12) but no crossing
yet; jump at 1e12 +0.38.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/experiments/switch_jump.py mag 6e11
"""

import os
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from adaptkern.train.data import SyntheticScales
from adaptkern.train.data.images import _step_rng
from adaptkern.train.loop import RunConfig, train_run
from adaptkern.train.schedule import ShapeSchedule
from adaptkern.train.tasks import VisionTask


class Magnified(SyntheticScales):
    """A feature is its sign pattern (and class); each image shows it at a random scale."""

    def __init__(self, *, pink: bool = False, mag_scales=(16, 8, 4), **kwargs):
        super().__init__(**kwargs)
        self.pink, self.mag_scales = pink, mag_scales
        self.patterns = _step_rng(self.seed, 7, 1).choice([-1.0, 1.0], size=(len(self.frequency), 3, 4, 4))

    def _pink(self, rng, n):
        size = self.image_size
        white = rng.standard_normal((n, 3, size, size))
        k = np.hypot(np.fft.fftfreq(size)[:, None], np.fft.fftfreq(size)[None, :])
        k[0, 0] = np.inf  # no DC component
        pink = np.fft.ifft2(np.fft.fft2(white) / k).real
        return (pink / pink.std(axis=(-1, -2), keepdims=True)).astype(np.float32)

    def generate(self, rng, n):
        # (draw order as in the recorded runs: a pink background first, white noise after the labels)
        images = self._pink(rng, n) if self.pink else None
        features = rng.choice(len(self.frequency), size=n, p=self.frequency)
        scales = rng.choice(self.mag_scales, size=n)
        if images is None:
            images = rng.standard_normal((n, 3, self.image_size, self.image_size), dtype=np.float32)
        cells = rng.random(n)
        for i, (feature, s) in enumerate(zip(features, scales)):
            stamp = np.kron(self.patterns[feature], np.ones((s // 4, s // 4))).astype(np.float32)
            per_side = self.image_size // s
            cell = int(cells[i] * per_side * per_side)
            y, x = (cell // per_side) * s, (cell % per_side) * s
            images[i, :, y:y + s, x:x + s] += stamp
        return images, self.feature_class[features].astype(np.int64)


class MixedResolution(VisionTask):
    """NaViT-style batches: the scene rendered at 64 px; half of every batch is shown at 32 px
    (antialiased), packed beside the 64 px half, in training and in the held-out set. A p8 token
    of a 32 px image is then a p16 token of the 64 px one (PI-resize), so the p16 model has seen
    the grids and token scales p8 will show."""

    def _prepare(self, images, shape, device):
        images = images.to(device)
        half = len(images) // 2
        low = F.interpolate(images[:half], scale_factor=0.5, mode="bilinear", antialias=True, align_corners=False)
        return list(low) + list(images[half:])

    def signature(self, step, shape, rank, world_size):
        return super().signature(step, shape, rank, world_size) + ("mixed",)

    def _tokens(self, batch, shape):
        pixels = sum(x.shape[-1] * x.shape[-2] for x in batch.inputs)
        return batch._replace(tokens=pixels // self.shape(shape).patch ** 2)

    def train_batch(self, step, shape, rank, world_size, device):
        return self._tokens(super().train_batch(step, shape, rank, world_size, device), shape)

    def eval_batches(self, shape, rank, world_size, device):
        for batch in super().eval_batches(shape, rank, world_size, device):
            yield self._tokens(batch, shape)


def main(variant: str, budget: float):
    torch.set_num_threads(1)
    data = {"orig": lambda: SyntheticScales(seed=0, num_eval=512),
            "mag": lambda: Magnified(seed=0, num_eval=512),
            "pink": lambda: Magnified(seed=0, num_eval=512, pink=True),
            "mag32": lambda: Magnified(seed=0, num_eval=512, mag_scales=(32, 16, 8, 4)),
            "orig64": lambda: SyntheticScales(seed=0, num_eval=512, image_size=64),
            "mag64": lambda: Magnified(seed=0, num_eval=512, image_size=64, mag_scales=(32, 16, 8, 4)),
            "navit": lambda: Magnified(seed=0, num_eval=512, image_size=64, mag_scales=(32, 16, 8, 4))}[variant]()
    task_class = MixedResolution if variant == "navit" else VisionTask
    for shape, batch in (("p16", 64), ("p8", 32)):
        config = RunConfig(budget=int(budget), seed=0, lr=2e-3, n_evals=10, first_eval_fraction=0.02,
                           warmup_steps=30, cross_eval_shapes=("p8", "p16"), cross_eval_after=0.0, progress=False)
        out = os.path.join(tempfile.gettempdir(), f"switch_jump_{variant}_{shape}_{int(budget)}")
        started = time.time()
        result = train_run(task_class(data, batch_size=batch), ShapeSchedule.static(shape), config, out, resume=False)
        print(f"{variant} {shape} ({time.time() - started:.0f} s): compute, loss, loss at the other patch size")
        for row in result.evals:
            cross = {k: round(v, 3) for k, v in row.get("cross", {}).items()}
            print(f"  {row['compute']:.3g}  {row['loss']:.3f}  {cross}")


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
