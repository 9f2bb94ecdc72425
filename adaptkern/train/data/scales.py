"""``SyntheticScales``: the embedded image task of ``adaptkern demo``. Many features at
several spatial scales, with Zipf-distributed frequencies.

Each image holds one *feature*: an s x s stamp (s = 16, 8 or 4 pixels; a random 4 x 4 x 3
sign pattern, each cell s/4 pixels wide, so detail scales with size) added, with amplitude
``amplitude``, to Gaussian noise (std 1) at a random position on the s-pixel grid. Every
feature belongs to one of ``num_classes`` classes; the label is its class. Features are
drawn with Zipf-Mandelbrot frequencies p(rank) ~ (rank + ``zipf_offset``)^-``zipf`` (the
offset, as in Mandelbrot's fit to word counts, keeps the single most common feature from
holding a quarter of the mass, which would make one seed's task very unlike another's) over
one random ranking of all features (so every scale has common and rare features).

Why the learning curves are power laws: a feature is learned once it has been seen often
enough, and with Zipf frequencies the mass of the not-yet-learned features falls as a
power of the number of images seen (the "quantization" picture of neural scaling, Michaud
et al. 2023; Hutter 2021, "Learning curve theory"). The loss is that mass times the cost of
guessing, so it falls as a power law in data, hence in compute, until model capacity or the
noise stops it.

Why several patch sizes matter, as on natural images: a stamp at scale s sits on the s-grid,
so a patch of size p <= s sees it aligned at the same place in every patch (one shared
linear embedding recognises it anywhere: convolution-like weight sharing), while a patch
p > s sees it at (p / s)^2 offsets, each needing its own template. Large patches therefore
learn the coarse features with few tokens per image (cheap steps, many images per FLOP) but
learn fine ones slowly; small patches learn everything but pay for every image many times
over. Natural images have the same structure: most of what separates common classes is
coarse (layout, colour, large shapes), and a long, rarer tail needs fine detail (texture,
small parts) -- which is why FlexiViT's large patches are a cheap start and small ones reach
lower loss (Beyer et al. 2023), and why switching patch size while training pays off
(Anagnostidis et al. 2023).

Deterministic from the seed; an endless training stream (each step's batch is a pure
function of (seed, step), so resumed and distributed runs see the same images) and a fixed
held-out set from its own stream.
"""

from typing import Tuple

import numpy as np

from .images import _GeneratedImages, _step_rng

SCALES = (16, 8, 4)


class SyntheticScales(_GeneratedImages):
    in_chans = 3
    STREAMS = (8, 9)  # random streams of the training batches and the held-out set

    def __init__(self, *, seed: int = 0, image_size: int = 32, num_eval: int = 512, num_classes: int = 10,
                 features_per_scale: int = 32, zipf: float = 1.2, zipf_offset: float = 3.0, amplitude: float = 1.0,
                 scales=SCALES):
        scales = tuple(int(s) for s in scales)
        if any(s % 4 or image_size % s for s in scales):
            raise ValueError(f"SyntheticScales: every scale must be a multiple of 4 dividing image_size={image_size}, "
                             f"got {scales}")
        if features_per_scale * len(scales) < num_classes:
            raise ValueError("SyntheticScales: fewer features than classes")
        self.seed, self.image_size, self.num_eval = int(seed), int(image_size), int(num_eval)
        self.num_classes, self.scales = int(num_classes), scales
        self.config = dict(features_per_scale=int(features_per_scale), zipf=float(zipf), zipf_offset=float(zipf_offset),
                           amplitude=float(amplitude))
        rng = _step_rng(self.seed, 7, 0)
        n = features_per_scale * len(scales)
        self.feature_scale = np.repeat(np.arange(len(scales)), features_per_scale)
        signs = rng.choice([-1.0, 1.0], size=(n, 3, 4, 4)).astype(np.float32)
        self.stamps = [np.kron(signs[i], np.ones((s // 4, s // 4), dtype=np.float32)) * amplitude
                       for i, s in enumerate(np.array(scales)[self.feature_scale])]
        self.feature_class = rng.permutation(np.arange(n) % self.num_classes)
        # One ranking over all scales, dealt round-robin (each round of len(scales) ranks holds
        # one feature of every scale, in random order), so every scale has common and rare
        # features and no seed gives one scale most of the mass by chance.
        rounds = np.stack([rng.permutation(len(scales)) for _ in range(features_per_scale)])  # (rounds, scales)
        slot = rounds + len(scales) * np.arange(features_per_scale)[:, None]
        within = np.stack([rng.permutation(features_per_scale) for _ in scales], axis=1)  # which feature per round
        rank = np.empty(n, dtype=np.int64)
        for k in range(len(scales)):
            rank[k * features_per_scale + within[:, k]] = slot[:, k] + 1
        weights = (rank + zipf_offset).astype(float) ** -zipf
        self.frequency = weights / weights.sum()
        self._eval = None

    def describe(self) -> dict:
        return {"data": "synthetic-scales", "seed": self.seed, "image_size": self.image_size,
                "num_eval": self.num_eval, "num_classes": self.num_classes, "scales": list(self.scales), **self.config}

    def mass_by_scale(self) -> dict:
        """Probability mass of the features at each scale (what each patch size can learn cheaply)."""
        return {f"s{s}": float(self.frequency[self.feature_scale == k].sum()) for k, s in enumerate(self.scales)}

    def generate(self, rng: np.random.Generator, n: int) -> Tuple[np.ndarray, np.ndarray]:
        """n images (n, 3, S, S) float32 and labels (n,) int64 drawn from ``rng``."""
        size = self.image_size
        features = rng.choice(len(self.frequency), size=n, p=self.frequency)
        images = rng.standard_normal((n, 3, size, size), dtype=np.float32)
        cells = rng.random(n)
        for i, f in enumerate(features):
            stamp = self.stamps[f]
            s = stamp.shape[-1]
            per_side = size // s
            cell = int(cells[i] * per_side * per_side)
            y, x = (cell // per_side) * s, (cell % per_side) * s
            images[i, :, y:y + s, x:x + s] += stamp
        return images, self.feature_class[features].astype(np.int64)
