"""Byte-level text for the language-model loop.

* ``SyntheticCopyText``: the embedded default. A deterministic corpus of "documents", each
  built from its own small set of random phrases repeated in random order, so most of a
  phrase can be copied from an earlier occurrence if (and only if) that occurrence is inside
  the model's context: longer contexts genuinely lower the loss (induction-style copying,
  Olsson et al. 2022), shorter ones are cheaper per token.
* ``TextFileData``: a user's file, read as bytes (vocabulary 256), last ``eval_fraction``
  held out.

Training windows are a pure function of (step, rank, world_size): window starts drawn from
a seeded generator per step, so resumed and distributed runs see the same tokens.
"""

import os

import numpy as np
import torch

from .images import _step_rng, rank_slice

VOCAB_SIZE = 256  # bytes


def windows(stream: np.ndarray, starts: np.ndarray, length: int) -> torch.Tensor:
    """(len(starts), length + 1) int64 slices of ``stream``: inputs are [:, :-1], targets [:, 1:]."""
    idx = starts[:, None] + np.arange(length + 1)[None, :]
    return torch.from_numpy(stream[idx].astype(np.int64))


class _ByteStream:
    """Shared batching over a train stream and a held-out stream of uint8 tokens."""

    vocab_size = VOCAB_SIZE

    def train_batch(self, step: int, tokens_per_batch: int, context: int, rank: int = 0, world_size: int = 1):
        """This rank's share of global batch ``step``: (tokens_per_batch // context /
        world_size, context + 1) int64 windows. The global batch holds
        tokens_per_batch // context windows of ``context`` predicted tokens."""
        count = tokens_per_batch // context
        if count < 1:
            raise ValueError(f"tokens_per_batch={tokens_per_batch} is smaller than the context {context}")
        rows = rank_slice(count, rank, world_size)
        high = len(self._train) - context - 1
        if high <= 0:
            raise ValueError(f"the training text ({len(self._train)} bytes) is shorter than the context {context} + 1")
        starts = _step_rng(self.seed, 4, step).integers(0, high, count)
        return windows(self._train, starts[rows], context)

    def eval_windows(self, context: int, eval_tokens: int) -> torch.Tensor:
        """The fixed held-out set at one context: the first ``eval_tokens`` predicted tokens
        of the held-out stream, cut into consecutive (n, context + 1) windows (every
        context sees the same tokens; shorter contexts see less history)."""
        count = eval_tokens // context
        if count < 1 or count * context + 1 > len(self._eval):
            raise ValueError(f"the held-out text ({len(self._eval)} bytes) cannot hold {eval_tokens} tokens at "
                             f"context {context}")
        return windows(self._eval, np.arange(count) * context, context)


class SyntheticCopyText(_ByteStream):
    """Documents of repeated random phrases (lowercase words joined by spaces).

    A document picks its own ``letters_per_doc`` letters of the 26, draws
    ``phrases_per_doc`` phrases (each ``words_per_phrase`` random words of 2 to 7 of those
    letters), then writes ``phrase_repeats * phrases_per_doc`` phrases chosen uniformly from
    its set, separated by ". ", ending in a newline. Two kinds of long-range information:
    which letters this document uses (a bag-of-letters over the context narrows 26 choices
    to ``letters_per_doc``: quick to learn, and a 16-byte context has seen only some of
    them), and the phrases themselves (the first letter of a phrase is unpredictable, the
    rest can be copied from an earlier occurrence, if it is inside the context: a ~20-byte
    phrase repeated among 12 rarely recurs within 16 or 64 bytes, usually within 256).
    """

    def __init__(self, *, seed: int = 0, train_bytes: int = 1 << 21, eval_bytes: int = 1 << 15,
                 letters_per_doc: int = 8, phrases_per_doc: int = 12, words_per_phrase: int = 4,
                 phrase_repeats: int = 6):
        if not 2 <= letters_per_doc <= 26:
            raise ValueError(f"SyntheticCopyText: letters_per_doc must be in [2, 26], got {letters_per_doc}")
        self.seed = int(seed)
        self.config = dict(train_bytes=int(train_bytes), eval_bytes=int(eval_bytes), letters_per_doc=letters_per_doc,
                           phrases_per_doc=phrases_per_doc, words_per_phrase=words_per_phrase,
                           phrase_repeats=phrase_repeats)
        self._train = self._corpus(_step_rng(seed, 5, 0), int(train_bytes))
        self._eval = self._corpus(_step_rng(seed, 5, 1), int(eval_bytes))

    def describe(self) -> dict:
        return {"data": "synthetic-copy-text", "seed": self.seed, **self.config}

    def _corpus(self, rng, size):
        letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
        c = self.config
        out, length = [], 0
        while length < size:
            alphabet = rng.choice(letters, c["letters_per_doc"], replace=False)
            phrases = []
            for _ in range(c["phrases_per_doc"]):
                words = [alphabet[rng.integers(0, len(alphabet), rng.integers(2, 8))].tobytes()
                         for _ in range(c["words_per_phrase"])]
                phrases.append(b" ".join(words))
            order = rng.integers(0, len(phrases), c["phrase_repeats"] * len(phrases))
            doc = b". ".join(phrases[k] for k in order) + b".\n"
            out.append(doc)
            length += len(doc)
        return np.frombuffer(b"".join(out)[:size], dtype=np.uint8)


class TextFileData(_ByteStream):
    """A text file as bytes; the last ``eval_fraction`` of it is the held-out stream."""

    def __init__(self, path, *, seed: int = 0, eval_fraction: float = 0.1):
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise ValueError(f"--text: {path!r} is not a file")
        if not 0 < eval_fraction < 1:
            raise ValueError(f"TextFileData: eval_fraction must be in (0, 1), got {eval_fraction}")
        with open(path, "rb") as f:
            data = np.frombuffer(f.read(), dtype=np.uint8)
        cut = int(len(data) * (1 - eval_fraction))
        self.path, self.seed = path, int(seed)
        self._train, self._eval = data[:cut], data[cut:]

    def describe(self) -> dict:
        return {"data": "text-file", "path": os.path.abspath(self.path), "seed": self.seed,
                "train_bytes": len(self._train), "eval_bytes": len(self._eval)}
