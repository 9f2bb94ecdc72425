"""Exact FLOPs per training step without running FlopCounterMode every step.

A step's FLOP count is a function of its *signature*: the shape and what fixes the packed
lengths / patch grids on every rank (``task.signature``), never of the data values. So the
first step of each signature runs under ``FlopCounterMode`` (through
``adaptkern.flops.measure_step``) and later steps with the same signature book the same
per-phase counts. ``tests/test_train.py::test_flop_cache_equals_flopcountermode_every_step``
proves the reuse exact: a run that measures every step writes the identical ledger. The
global (all-rank) count of a signature is summed once, when it is first measured, so the
loop tracks the run's compute without a collective per step. Each rank's cache holds its
own per-phase counts (checkpoints keep one per rank).
"""

from torch.utils.flop_counter import FlopCounterMode

from ..flops import measure_step
from . import distributed


class SignatureFlopCache:
    """Per-signature FLOP cache: key -> (this rank's {phase: flops}, all ranks' total).
    (Not ``adaptkern.flops.StepFlops``, a step's counts per phase and layer type.)"""

    def __init__(self, device):
        self.device = device
        self._train = {}
        self._eval = {}

    def step(self, ledger, step, shape, signature, *, samples, tokens, fresh=False):
        """Context manager around one training step (forward, ``backward(loss)``, optimizer)
        that records it in ``ledger``; afterwards ``.global_flops`` is the step's FLOPs summed
        over ranks. Measures under FlopCounterMode when ``signature`` is new or ``fresh``.
        Every rank must pass the same ``signature`` (it lists every rank's)."""
        return _Step(self, ledger, step, shape, repr(signature), samples, tokens, fresh)

    def forward(self, key, fn):
        """Run ``fn()`` (a no-grad forward) and return (its result, its FLOPs), measured once
        per ``key``."""
        if key in self._eval:
            return fn(), self._eval[key]
        with FlopCounterMode(display=False) as counter:
            out = fn()
        self._eval[key] = counter.get_total_flops()
        return out, self._eval[key]

    def dump(self) -> list:
        return [[key, local, total] for key, (local, total) in self._train.items()] + \
               [["eval", key, flops] for key, flops in self._eval.items()]

    def load(self, rows) -> None:
        for a, b, c in rows:
            if a == "eval":
                self._eval[b] = c
            else:
                self._train[a] = (dict(b), c)


class _Step:
    def __init__(self, cache, ledger, step, shape, key, samples, tokens, fresh):
        self.cache, self.ledger, self.step, self.shape, self.key = cache, ledger, step, shape, key
        self.samples, self.tokens = samples, tokens
        self.measuring = fresh or key not in cache._train
        self.global_flops, self._counter = None, None

    def __enter__(self):
        if self.measuring:
            self._counter = measure_step(self.ledger, self.step, self.shape, samples=self.samples,
                                         tokens=self.tokens).__enter__()
        return self

    def backward(self, loss):
        if self.measuring:
            self._counter.backward(loss)
        else:
            loss.backward()

    def __exit__(self, exc_type, exc, tb):
        if self.measuring:
            self._counter.__exit__(exc_type, exc, tb)
            if exc_type is not None:
                return False
            local = {p: f for p, f in self._counter.flops.items() if f}
            (total,) = distributed.sum_ints([sum(local.values())], self.cache.device)
            self.cache._train[self.key] = (local, total)
        elif exc_type is None:
            local, total = self.cache._train[self.key]
            self.ledger.record(self.step, self.shape, local, samples=self.samples, tokens=self.tokens)
        if exc_type is None:
            self.global_flops = self.cache._train[self.key][1]
        return False
