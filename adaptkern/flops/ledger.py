"""A ledger of the FLOPs a training run spent, across steps and shape switches.

Counts are Python ints (exact at any size), kept per shape (any key; stored as ``str(key)``,
e.g. "p16") and per phase ("forward", "backward", "optimizer", "eval", ...), with the
steps, samples and tokens each shape saw. The ledger is pure accounting: it runs no ops.

* Resumable: ``save(path)`` writes JSON atomically (a temp file in the same folder, then
  ``os.replace``), ``FlopLedger.load(path)`` reads it back. ``record(step, ...)`` is
  idempotent per ``kind`` of step: a step at or below the last one committed is ignored, so
  the steps a resumed run replays (checkpoint older than the ledger) are not counted twice.
* Distributed: ``sum_across_ranks()`` sums every rank's counts exactly (int64 all_reduce
  of 32-bit limbs, so totals beyond 2^63 survive).
* ``measure_step`` counts one training step with ``torch.utils.flop_counter.FlopCounterMode``
  and records forward and backward separately; ``compare_flops`` sets the total against
  6*N*D and a padded count.
"""

import json
import numbers
from dataclasses import dataclass

from .._io import atomic_write

_LEDGER = "adaptkern.flops.FlopLedger"
_FORMAT = "adaptkern.flops.FlopLedger"
_VERSION = 1
_LIMB_BITS = 32  # a limb summed over < 2^31 ranks still fits in int64
_COUNT_FIELDS = ("steps", "samples", "tokens")


def _count(where, name, value):
    """A non-negative integer count (int, numpy integer), returned as a Python int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{where}: {name} must be an int (exact FLOP counts), got {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"{where}: {name} must be >= 0, got {value}")
    return int(value)


def _name(where, name, value):
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: {name} must be a non-empty str, got {value!r}")
    return value


def _selection(value):
    """None (everything), one key, or a list/set of keys -> a set of str or None. A tuple
    is one key, as shapes such as (16, 16) are."""
    if value is None:
        return None
    return {str(v) for v in value} if isinstance(value, (list, set, frozenset)) else {str(value)}


class FlopLedger:
    """FLOPs spent per (shape, phase) plus steps/samples/tokens per (kind, shape).

    ``kind`` separates streams of steps that are counted independently ("train", "eval"):
    each has its own last committed step and its own step/sample/token counters.
    """

    def __init__(self):
        self._flops = {}  # (shape, phase) -> int
        self._counts = {}  # (kind, shape) -> [steps, samples, tokens]
        self._last_step = {}  # kind -> last committed step

    # -- recording ---------------------------------------------------------------------

    def add(self, shape, phase, flops):
        """Add ``flops`` (int >= 0) to (``shape``, ``phase``) unconditionally: for one-off
        costs outside the step stream (a PI-resize matrix, a profiling pass)."""
        where = f"{_LEDGER}.add"
        key = (str(shape), _name(where, "phase", phase))
        self._flops[key] = self._flops.get(key, 0) + _count(where, "flops", flops)

    def record(self, step, shape, flops, *, samples=0, tokens=0, kind="train") -> bool:
        """Commit one step: its FLOPs per phase and the samples/tokens it processed.

        Args:
            step: the step number (int >= 0), increasing within ``kind``.
            shape: the shape the step ran at (any key; stored as ``str(shape)``).
            flops: mapping phase -> FLOPs (int >= 0), or one int booked under ``kind``.
            samples, tokens: what the step processed (ints >= 0; tokens after packing).
            kind: the stream of steps ("train", "eval", ...).

        Returns True if recorded, False if ``step`` is at or below the last step committed
        for ``kind`` (a replay after a resume), in which case nothing changes.
        """
        where = f"{_LEDGER}.record"
        step = _count(where, "step", step)
        kind = _name(where, "kind", kind)
        if not isinstance(flops, dict):
            flops = {kind: flops}
        checked = {_name(where, "flops key", p): _count(where, f"flops[{p!r}]", f) for p, f in flops.items()}
        samples, tokens = _count(where, "samples", samples), _count(where, "tokens", tokens)
        if step <= self._last_step.get(kind, -1):
            return False
        shape = str(shape)
        for phase, value in checked.items():
            self._flops[(shape, phase)] = self._flops.get((shape, phase), 0) + value
        counts = self._counts.setdefault((kind, shape), [0, 0, 0])
        counts[0] += 1
        counts[1] += samples
        counts[2] += tokens
        self._last_step[kind] = step
        return True

    # -- reading -----------------------------------------------------------------------

    def last_step(self, kind="train"):
        """The last step committed for ``kind`` (None before the first)."""
        return self._last_step.get(kind)

    @property
    def shapes(self) -> list:
        """Every shape seen, in first-seen order."""
        seen = dict.fromkeys([s for s, _ in self._flops] + [s for _, s in self._counts])
        return list(seen)

    @property
    def phases(self) -> list:
        return list(dict.fromkeys(p for _, p in self._flops))

    def total(self, *, shape=None, phase=None) -> int:
        """FLOPs summed over everything, or over the given shape(s) and/or phase(s) (one
        key, or a list/set of keys)."""
        shapes, phases = _selection(shape), _selection(phase)
        return sum(v for (s, p), v in self._flops.items()
                   if (shapes is None or s in shapes) and (phases is None or p in phases))

    def by_shape(self, *, phase=None) -> dict:
        return {s: self.total(shape=s, phase=phase) for s in self.shapes}

    def by_phase(self, *, shape=None) -> dict:
        return {p: self.total(shape=shape, phase=p) for p in self.phases}

    def table(self) -> dict:
        """{shape: {phase: flops}} of every non-empty entry."""
        out = {}
        for (s, p), v in self._flops.items():
            out.setdefault(s, {})[p] = v
        return out

    def counts(self, shape=None, *, kind="train") -> dict:
        """{"steps", "samples", "tokens"} of ``kind`` for one shape, or summed over shapes."""
        shapes = _selection(shape)
        totals = [0, 0, 0]
        for (k, s), values in self._counts.items():
            if k == kind and (shapes is None or s in shapes):
                totals = [a + b for a, b in zip(totals, values)]
        return dict(zip(_COUNT_FIELDS, totals))

    def summary(self) -> str:
        """A plain-text table: FLOPs per shape and phase, and the training counts."""
        phases = self.phases
        rows = [["shape", *phases, "total", "steps", "samples", "tokens"]]
        for s in self.shapes:
            c = self.counts(s)
            rows.append([s, *(f"{self._flops.get((s, p), 0):.4g}" for p in phases), f"{self.total(shape=s):.4g}",
                         str(c["steps"]), str(c["samples"]), str(c["tokens"])])
        c = self.counts()
        rows.append(["all", *(f"{self.total(phase=p):.4g}" for p in phases), f"{self.total():.4g}",
                     str(c["steps"]), str(c["samples"]), str(c["tokens"])])
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(r, widths)) for r in rows)

    def __repr__(self):
        return f"FlopLedger(total={self.total()}, shapes={self.shapes}, last_step={self._last_step})"

    def __eq__(self, other):
        return isinstance(other, FlopLedger) and self.to_dict() == other.to_dict()

    # -- combining ---------------------------------------------------------------------

    def merge(self, other):
        """Add ``other``'s FLOPs and counts into this ledger (last steps: the later of the
        two). For ledgers of separate runs or sweeps; for DDP ranks use ``sum_across_ranks``."""
        if not isinstance(other, FlopLedger):
            raise TypeError(f"{_LEDGER}.merge: other must be a FlopLedger, got {type(other).__name__}")
        for key, value in other._flops.items():
            self._flops[key] = self._flops.get(key, 0) + value
        for key, values in other._counts.items():
            mine = self._counts.setdefault(key, [0, 0, 0])
            mine[:] = [a + b for a, b in zip(mine, values)]
        for kind, step in other._last_step.items():
            self._last_step[kind] = max(step, self._last_step.get(kind, -1))
        return self

    def __add__(self, other):
        return FlopLedger().merge(self).merge(other)

    def copy(self):
        return FlopLedger().merge(self)

    def sum_across_ranks(self, group=None):
        """A new ledger holding every rank's FLOPs, samples and tokens summed; steps and
        last committed steps are the maximum over ranks (DDP ranks take the same steps).

        A collective: every rank of ``group`` (default: the default process group) must
        call it. Counts travel as 32-bit limbs in int64 tensors through
        ``torch.distributed.all_reduce``, so the sums are exact at any size. Ranks may have
        seen different shapes and phases (their key sets are gathered first). With NCCL the
        tensors go to the current CUDA device. Without an initialized process group it
        returns a copy.
        """
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self.copy()
        device = torch.device("cpu")
        if dist.get_backend(group) == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        local = (sorted(self._flops), sorted(self._counts), sorted(self._last_step),
                 max([v.bit_length() for v in self._flops.values()]
                     + [max(c[1:]).bit_length() for c in self._counts.values()] + [1]))
        gathered = [None] * dist.get_world_size(group)
        dist.all_gather_object(gathered, local, group=group)
        flop_keys = sorted({k for g in gathered for k in g[0]})
        count_keys = sorted({k for g in gathered for k in g[1]})
        kinds = sorted({k for g in gathered for k in g[2]})
        n_limbs = -(-max(g[3] for g in gathered) // _LIMB_BITS)

        summed = [self._flops.get(k, 0) for k in flop_keys]
        for key in count_keys:
            summed += self._counts.get(key, [0, 0, 0])[1:]
        mask = (1 << _LIMB_BITS) - 1
        limbs = torch.tensor([[(v >> (_LIMB_BITS * i)) & mask for i in range(n_limbs)] for v in summed],
                             dtype=torch.int64, device=device).reshape(len(summed), n_limbs)
        maxed = torch.tensor([self._counts.get(k, [0])[0] for k in count_keys]
                             + [self._last_step.get(k, -1) for k in kinds], dtype=torch.int64, device=device)
        # Every rank holds the same key union, so all of them skip an empty reduce alike.
        if limbs.numel():
            dist.all_reduce(limbs, op=dist.ReduceOp.SUM, group=group)
        if maxed.numel():
            dist.all_reduce(maxed, op=dist.ReduceOp.MAX, group=group)
        totals = [sum(int(x) << (_LIMB_BITS * i) for i, x in enumerate(row)) for row in limbs.cpu().tolist()]
        maxima = maxed.cpu().tolist()

        out = FlopLedger()
        out._flops = dict(zip(flop_keys, totals[:len(flop_keys)]))
        rest = totals[len(flop_keys):]
        out._counts = {k: [maxima[i], rest[2 * i], rest[2 * i + 1]] for i, k in enumerate(count_keys)}
        out._last_step = {k: s for k, s in zip(kinds, maxima[len(count_keys):]) if s >= 0}
        return out

    # -- serialization -----------------------------------------------------------------

    def to_dict(self) -> dict:
        """A JSON-ready dict (ints stay ints: Python's json keeps them exact at any size)."""
        counts = {}
        for (kind, shape), values in self._counts.items():
            counts.setdefault(kind, {})[shape] = dict(zip(_COUNT_FIELDS, values))
        return {"format": _FORMAT, "version": _VERSION, "flops": self.table(), "counts": counts,
                "last_step": dict(self._last_step)}

    @classmethod
    def from_dict(cls, data):
        """Inverse of ``to_dict``; raises ValueError naming what is malformed."""
        where = f"{_LEDGER}.from_dict"
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError(f"{where}: data is not a FlopLedger dict (format {_FORMAT!r} expected)")
        if data.get("version") != _VERSION:
            raise ValueError(f"{where}: data has version {data.get('version')!r}; this adaptkern reads {_VERSION}")
        ledger = cls()
        try:
            for shape, phases in data["flops"].items():
                for phase, value in phases.items():
                    ledger._flops[(shape, _name(where, "data['flops'] phase", phase))] = _count(
                        where, f"data['flops'][{shape!r}][{phase!r}]", value)
            for kind, shapes in data["counts"].items():
                for shape, values in shapes.items():
                    ledger._counts[(kind, shape)] = [
                        _count(where, f"data['counts'][{kind!r}][{shape!r}][{f!r}]", values[f]) for f in _COUNT_FIELDS]
            for kind, step in data["last_step"].items():
                ledger._last_step[kind] = _count(where, f"data['last_step'][{kind!r}]", step)
        except (KeyError, AttributeError) as err:
            raise ValueError(f"{where}: data is malformed (missing or mistyped entry: {err})") from None
        return ledger

    def save(self, path):
        """Write the ledger to ``path`` as JSON, atomically: readers (and a crash) see the
        old file or the new one, never a partial write. Under torch.distributed, save the
        result of ``sum_across_ranks`` from one rank."""
        return atomic_write(path, lambda f: json.dump(self.to_dict(), f, indent=1), text=True)

    @classmethod
    def load(cls, path, *, missing_ok=False):
        """Read a ledger saved by ``save``; with ``missing_ok`` a missing file gives an
        empty ledger (the first start of a resumable run)."""
        try:
            with open(path) as f:
                data = json.load(f)
        except FileNotFoundError:
            if missing_ok:
                return cls()
            raise
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"FlopLedger.load: {path} is not a readable ledger (truncated or corrupt: "
                             f"{error})") from None
        return cls.from_dict(data)


class StepFlopCounter:
    """Context manager from ``measure_step``: counts one step under FlopCounterMode.

    Everything before ``backward()`` (or ``phase("backward")``) is booked as "forward",
    the backward pass as "backward", whatever follows (the optimizer step) as "optimizer";
    ``phase(name)`` switches to any phase by hand. On a clean exit the step is recorded
    (phases with zero FLOPs left out); after an exception nothing is. ``flops`` holds
    the measured counts per phase, ``recorded`` whether the ledger took them (False for
    a replayed step). FlopCounterMode counts only ops with a registered formula (matmuls,
    convolutions, attention, adaptkern ops), so element-wise and optimizer work count 0.
    """

    def __init__(self, ledger, step, shape, *, samples=0, tokens=0, kind="train"):
        if not isinstance(ledger, FlopLedger):
            raise TypeError(f"adaptkern.flops.measure_step: ledger must be a FlopLedger, got {type(ledger).__name__}")
        where = "adaptkern.flops.measure_step"
        step, samples, tokens = (_count(where, n, v) for n, v in (("step", step), ("samples", samples), ("tokens", tokens)))
        self.ledger, self.step, self.shape = ledger, step, shape
        self.samples, self.tokens, self.kind = samples, tokens, kind
        self.flops, self.recorded = {}, False
        self._mode = self._phase = None

    def __enter__(self):
        from torch.utils.flop_counter import FlopCounterMode

        self._mode = FlopCounterMode(display=False)
        self._mode.__enter__()
        self._phase, self._mark = "forward", 0
        return self

    def phase(self, name):
        """Book what follows under phase ``name``."""
        _name("adaptkern.flops.measure_step", "phase", name)
        self._close_phase()
        self._phase = name

    def backward(self, loss, **kwargs):
        """``loss.backward(**kwargs)`` booked as "backward"; what follows is "optimizer"."""
        self.phase("backward")
        loss.backward(**kwargs)
        self.phase("optimizer")

    def _close_phase(self):
        now = self._mode.get_total_flops()
        self.flops[self._phase] = self.flops.get(self._phase, 0) + now - self._mark
        self._mark = now

    def __exit__(self, exc_type, exc, tb):
        self._close_phase()
        self._mode.__exit__(exc_type, exc, tb)
        if exc_type is None:
            spent = {p: f for p, f in self.flops.items() if f}
            self.recorded = self.ledger.record(self.step, self.shape, spent, samples=self.samples,
                                               tokens=self.tokens, kind=self.kind)
        return False


def measure_step(ledger, step, shape, *, samples=0, tokens=0, kind="train"):
    """Count one training step's FLOPs and record them in ``ledger``::

        with ak.flops.measure_step(ledger, step, "p16", samples=len(images), tokens=total) as m:
            loss = loss_fn(model(images), labels)   # "forward"
            m.backward(loss)                        # "backward"
            optimizer.step()                        # "optimizer" (0 unless formulas exist)

    Arguments as ``FlopLedger.record``. Returns a ``StepFlopCounter``.
    """
    return StepFlopCounter(ledger, step, shape, samples=samples, tokens=tokens, kind=kind)


@dataclass(frozen=True)
class FlopComparison:
    """Exact FLOPs beside the 6*N*D estimate and the count a padded batch would execute."""

    exact: int
    six_nd: int = None
    padded: int = None

    @property
    def exact_over_six_nd(self):
        return self.exact / self.six_nd if self.six_nd else None

    @property
    def padded_over_exact(self):
        """How many times the exact count a padded run executes (>= 1 when padding wastes)."""
        return self.padded / self.exact if self.padded is not None and self.exact else None

    def to_dict(self) -> dict:
        return {"exact": self.exact, "six_nd": self.six_nd, "padded": self.padded,
                "exact_over_six_nd": self.exact_over_six_nd, "padded_over_exact": self.padded_over_exact}

    def summary(self) -> str:
        lines = [f"exact FLOPs        {self.exact:.6g}"]
        if self.six_nd is not None:
            lines.append(f"6*N*D estimate     {self.six_nd:.6g}  (exact / 6ND = {self.exact_over_six_nd:.4g})")
        if self.padded is not None:
            ratio = self.padded_over_exact
            lines.append(f"padded execution   {self.padded:.6g}  (padded / exact = "
                         f"{'n/a' if ratio is None else format(ratio, '.4g')})")
        return "\n".join(lines)


def compare_flops(ledger, *, num_params=None, num_tokens=None, padded_flops=None, phase=None):
    """Set the exact count against 6*N*D and a padded count, when those are given.

    Args:
        ledger: a FlopLedger (its ``phase`` total is used) or an exact count (int).
        num_params: N, the parameter count, for 6*N*D.
        num_tokens: D, training tokens; default the ledger's "train" token count.
        padded_flops: FLOPs the same training would execute on padded batches (int).
        phase: the ledger phase(s) to total; default every phase except "eval" and
            "optimizer" (6*N*D estimates a training step's forward and backward).
    """
    where = "adaptkern.flops.compare_flops"
    if isinstance(ledger, FlopLedger):
        if phase is None:
            phase = [p for p in ledger.phases if p not in ("eval", "optimizer")]
        exact = ledger.total(phase=phase)
        default_tokens = ledger.counts()["tokens"]
    else:
        exact, default_tokens = _count(where, "ledger", ledger), None
    six_nd = None
    if num_params is not None:
        n = _count(where, "num_params", num_params)
        d = default_tokens if num_tokens is None else _count(where, "num_tokens", num_tokens)
        if not d:
            raise ValueError(f"{where}: num_tokens is needed for 6*N*D (the ledger recorded no tokens)")
        six_nd = 6 * n * d
    padded = None if padded_flops is None else _count(where, "padded_flops", padded_flops)
    return FlopComparison(exact, six_nd, padded)
