"""Compute-optimal adaptive shape schedule (Anagnostidis et al. 2023, "Navigating Scaling
Laws: Compute Optimality in Adaptive Model Training").

Each shape s has a law E_s(C) = c + a (C + d)^-b mapping training compute to loss. Its
inverse C_s(E) is the compute shape s needs to reach loss E from scratch. Training walks
the loss down from ``start_loss`` to ``target_loss``; at every loss level it may follow any
shape, and a switch to shape s' at loss E continues along s' from C_s'(E). The compute of
a plan is the sum, over its segments, of C_s(E_end) - C_s(E_start), so with free switches
the optimum follows, at every loss level, the shape with the least |dC_s/dE| and costs the
integral of that minimum. A charge per switch breaks that pointwise rule; then the plan is
found by dynamic programming (see ``optimal_schedule``).

A law passed in is duck-typed: ``predict(C)``, ``inverse(L)``, ``d_inverse(L)`` (analytic
dC/dL) and its asymptote ``c`` (``adaptkern.scaling.fit_shape_law`` returns such laws).
Compute here is "compute along the laws", C_s(E) = max(inverse_s(E), 0).

No free segments: a law says nothing about losses above its own loss at C = 0 (a fresh
model of that shape), so a plan may follow shape s only at or below that loss. (An older
version let every shape descend for free from the plan's start down to its C = 0 loss,
while the static runs were charged for the same stretch.) Give ``start_loss`` = the
measured loss of the fresh model and laws anchored at it (``fit_shape_law(...,
initial_loss=L0)``): then every shape starts at C = 0 and every segment costs its compute.

A switch can cost compute twice over: a fixed charge ``switch_cost`` and a measured loss
jump ``switch_jump`` (the loss rises by the jump when the shape changes, e.g. a ViT
evaluated at a new patch size; the new shape then pays along its law to come back down).
A jump may also be a function of the loss at the switch (an *effective* jump measured from
runs that switched there: how far back along the new shape's law the switch set training,
which may differ from the raw jump, and may be negative, since a model recovers from a
switch faster than a fresh one learns).
``order`` restricts switches to one direction (patches only shrink, contexts only grow).
"""

import itertools
import math
import numbers
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import brentq

# Relative slack for a start loss that a law anchored there gives back at C=0 with round-off.
_ROUND_OFF = 1e-9
_OP = "adaptkern.schedule.optimal_schedule"
_LAW_METHODS = ("predict", "inverse", "d_inverse")
_MAX_GRID = 2**20


@dataclass(frozen=True)
class Segment:
    """One stretch of training on one shape, from loss ``loss_start`` down to ``loss_end``.

    ``compute`` is what the stretch costs along the shape's law; ``compute_start`` and
    ``compute_end`` are the plan's cumulative compute (switch charges included) when the
    stretch begins and ends, so a training loop switches shape once it has spent
    ``compute_end``."""

    shape: object
    loss_start: float
    loss_end: float
    compute: float
    compute_start: float
    compute_end: float
    loss_jump: float = 0.0  # the loss rise at the switch into this segment (its compute includes the way back)


@dataclass(frozen=True)
class Plan:
    """An adaptive schedule. ``savings`` = 1 - total_compute / best_static_compute
    (negative when adapting costs more, which only switch charges can cause)."""

    segments: list
    total_compute: float
    best_static_shape: object
    best_static_compute: float
    savings: float
    start_loss: float
    target_loss: float
    switch_cost: float
    static_compute: dict = field(default_factory=dict)  # shape -> compute to the target alone (inf: never)
    switch_jumps: dict = field(default_factory=dict)    # (from, to) -> jump given to the planner (or "a function ...")
    order: tuple = None                                  # allowed direction of switches (None: any)

    def compute_at(self, loss: float, laws) -> float:
        """The plan's cumulative compute when its loss first reaches ``loss`` (between
        ``start_loss`` and ``target_loss``), along the laws it was made from."""
        for seg in self.segments:
            if loss >= seg.loss_end:
                shape = _Shape(seg.shape, laws[seg.shape])
                top = _landing(shape, np.array([seg.loss_start]), np.array([seg.loss_jump]), self.target_loss)
                ends = shape.static(np.array([top[0], max(loss, seg.loss_end)]))
                return float(seg.compute_start + ends[1] - ends[0])
        return self.total_compute

    @property
    def num_switches(self) -> int:
        return max(len(self.segments) - 1, 0)

    def to_dict(self) -> dict:
        """JSON-ready: shapes as given, an unreachable static shape's compute as None."""
        def finite(x):
            return x if math.isfinite(x) else None

        return {
            "segments": [dict(vars(seg)) for seg in self.segments],
            "total_compute": self.total_compute, "num_switches": self.num_switches,
            "best_static_shape": self.best_static_shape, "best_static_compute": self.best_static_compute,
            "savings": self.savings, "start_loss": self.start_loss, "target_loss": self.target_loss,
            "switch_cost": self.switch_cost,
            "static_compute": {str(k): finite(v) for k, v in self.static_compute.items()},
            "switch_jumps": {f"{a}->{b}": j for (a, b), j in self.switch_jumps.items()},
            "order": None if self.order is None else [str(k) for k in self.order],
        }

    def summary(self) -> str:
        """A few human-readable lines: the segments, the total and the best static shape."""
        lines = [f"adaptive plan from loss {self.start_loss:.4g} to {self.target_loss:.4g}:"]
        for seg in self.segments:
            lines.append(
                f"  shape {seg.shape!s:>8}: loss {seg.loss_start:.4g} -> {seg.loss_end:.4g}, "
                f"compute {seg.compute:.4g} (cumulative {seg.compute_end:.4g})"
            )
        lines.append(f"  total {self.total_compute:.4g} ({self.num_switches} switches at {self.switch_cost:.3g} each)")
        lines.append(
            f"  best static shape {self.best_static_shape!s}: {self.best_static_compute:.4g} "
            f"-> savings {100 * self.savings:.1f}%"
        )
        return "\n".join(lines)


class _Shape:
    """A law seen as the compute-of-loss curve C(E) and its slope |dC/dE|, usable only at or
    below ``fresh``, its loss at C = 0."""

    def __init__(self, key, law):
        self.key, self.law = key, law
        self.c = float(law.c)
        with np.errstate(all="ignore"):
            try:
                fresh = float(np.asarray(law.predict(0.0), dtype=float))
            except (ArithmeticError, ValueError):
                fresh = math.inf
        self.fresh = fresh if math.isfinite(fresh) and fresh > self.c else math.inf

    def static(self, losses):
        """C(E) = max(inverse(E), 0): compute to reach each loss from scratch (0 at or above
        ``fresh``, inf at or below the asymptote)."""
        losses = np.atleast_1d(np.asarray(losses, dtype=float))
        out = np.full(losses.shape, math.inf)
        live = (losses > self.c) & (losses < self.fresh)
        if live.any():
            out[live] = np.maximum(self._checked(self.law.inverse, losses[live]), 0.0)
        out[losses >= self.fresh] = 0.0
        return out

    def compute(self, losses):
        """C(E) where a plan may follow this shape (E <= fresh), inf elsewhere."""
        losses = np.atleast_1d(np.asarray(losses, dtype=float))
        return np.where(losses > self.fresh, math.inf, self.static(losses))

    def slope(self, losses):
        """|dC/dE| just below each loss (training lowers the loss); inf at or below the
        asymptote and above ``fresh`` (not usable there)."""
        losses = np.atleast_1d(np.asarray(losses, dtype=float))
        out = np.full(losses.shape, math.inf)
        live = (losses > self.c) & (losses <= self.fresh)
        if live.any():
            below = losses[live] - 1e-9 * (losses[live] - self.c)  # "just below": never the flat C=0 side
            out[live] = np.abs(self._checked(self.law.d_inverse, below))
        return out

    def _checked(self, fn, losses):
        values = _call(fn, losses)
        if np.isnan(values).any():
            at = float(losses[np.isnan(values)][0])
            raise ValueError(f"{_OP}: laws[{self.key!r}].{getattr(fn, '__name__', 'law')}({at:.6g}) is NaN; a law "
                             "must give a number at every loss above its asymptote c")
        return values


def _call(fn, x):
    """fn on a float array, element by element if the law only takes scalars."""
    with np.errstate(all="ignore"):
        try:
            y = np.asarray(fn(x), dtype=float)
            if y.shape == x.shape:
                return y
        except (TypeError, ValueError):
            pass
        return np.array([float(np.asarray(fn(float(v)), dtype=float)) for v in x])


def _real(name, value, *, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{_OP}: {name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{_OP}: {name} must be finite, got {value}")
    return value


def _check_laws(laws):
    if not isinstance(laws, dict):
        raise TypeError(f"{_OP}: laws must be a dict shape -> law, got {type(laws).__name__}")
    if not laws:
        raise ValueError(f"{_OP}: laws must be a non-empty dict shape -> law, got {{}}")
    shapes = []
    for key, law in laws.items():
        missing = [m for m in _LAW_METHODS if not callable(getattr(law, m, None))]
        missing += [] if hasattr(law, "c") else ["c"]
        if missing:
            raise ValueError(
                f"{_OP}: laws[{key!r}] lacks {', '.join(missing)}; a law needs predict(C), inverse(L), "
                f"d_inverse(L) and its asymptote c"
            )
        c = getattr(law, "c")
        if isinstance(c, bool) or not isinstance(c, numbers.Real) or not math.isfinite(c):
            raise ValueError(f"{_OP}: laws[{key!r}].c must be a finite real number, got {c!r}")
        _check_params(key, law)
        shapes.append(_Shape(key, law))
    # Ties go to the shape usable from the highest loss.
    return sorted(shapes, key=lambda s: -s.fresh)


def _check_params(key, law):
    """A fitted law's parameters (``law.params``) must be finite; a ShapeLaw's must also
    have the signs its formula assumes (c >= 0, a > 0, b > 0, d >= 0), else its inverse is
    NaN or runs the wrong way and the plan's totals come out NaN or meaningless."""
    from .scaling.shape_law import ShapeLaw

    params = getattr(law, "params", None)
    if not isinstance(params, dict):
        return
    for name, value in params.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"{_OP}: laws[{key!r}].{name} must be a finite real number, got {value!r}")
    if isinstance(law, ShapeLaw):
        for name, ok, rule in (("c", law.c >= 0, ">= 0"), ("a", law.a > 0, "> 0"), ("b", law.b > 0, "> 0"),
                               ("d", law.d >= 0, ">= 0")):
            if not ok:
                raise ValueError(f"{_OP}: laws[{key!r}].{name} must be {rule} in E(C) = c + a (C + d)^-b, "
                                 f"got {getattr(law, name)!r}")


def optimal_schedule(laws, target_loss, start_loss=None, switch_cost=0.0, *, grid_size=2048, switch_jump=0.0,
                     order=None):
    """The least-compute way to train from ``start_loss`` down to ``target_loss`` switching shapes.

    Args:
        laws: dict shape -> law; a law has ``predict(C)``, ``inverse(L)``, ``d_inverse(L)``
            and its asymptote ``c``. A shape whose ``c`` is at or above ``target_loss`` may be
            followed only while the loss is above its ``c``, never to the end.
        target_loss: the loss to reach (> 0, above the asymptote of at least one law).
        start_loss: the loss training starts from: the measured loss of the fresh model.
            Default: the highest loss any law predicts at C=0. A shape is followed only at
            or below its own loss at C=0 (see the module docstring), so at least one law
            must predict ``start_loss`` or more at C=0.
        switch_cost: compute charged for each switch (>= 0, in the laws' compute units).
        grid_size: loss levels scanned between start and target (more: finer scan), 16 to 2**20.
        switch_jump: the loss rise at a switch (>= 0): a number for every switch, or a dict
            {(from_shape, to_shape): jump} (missing pairs: 0). A switch into s at loss E
            then costs C_s(E) - C_s(E + jump) more, along s's law. A dict value may also be
            a function of E (losses array -> jumps array, finite, any sign): an effective
            jump measured where it was switched; a switch that would land below the target
            reaches it there (nothing spent after it), one that would land at or below s's
            asymptote is not taken.
        order: a list of the shapes; switches only move forward in it (e.g. patch sizes
            only shrink). None: any order.

    Returns:
        ``Plan``. With ``switch_cost == 0`` the plan follows the cheapest shape at every loss
        level; its boundaries are where the cheapest shape changes, found by a scan of
        ``grid_size`` loss levels and refined with brentq to float precision. With
        ``switch_cost > 0`` the plan is the exact optimum of a dynamic programme whose nodes
        are the scan grid plus every loss at which two shapes' slopes |dC/dE| cross and every
        law's loss at C=0 (where its cost starts): an optimal switch point is always one of
        those (moving it changes the cost by the difference of the two slopes), so the
        plan is exact to brentq precision, unless two crossings of one pair fall inside
        one grid cell, which the scan cannot see; then a switch may be off by up to that
        cell's width. Segment computes are differences of the inverse laws, never a
        quadrature. Jumps and ``order`` also use the dynamic programme; a jump makes the best
        switch point depend on more than slopes, so it is then exact to the grid's spacing.
    """
    shapes = _check_laws(laws)
    target = _real("target_loss", target_loss)
    if target <= 0:
        raise ValueError(f"{_OP}: target_loss must be > 0, got {target}")
    kappa = _real("switch_cost", switch_cost)
    if kappa < 0:
        raise ValueError(f"{_OP}: switch_cost must be >= 0, got {kappa}")
    if isinstance(grid_size, bool) or not isinstance(grid_size, numbers.Integral):
        raise TypeError(f"{_OP}: grid_size must be an int >= 16, got {type(grid_size).__name__}")
    if not 16 <= grid_size <= _MAX_GRID:  # a finer scan gains nothing and would fill the memory
        raise ValueError(f"{_OP}: grid_size must be an int in [16, {_MAX_GRID}], got {grid_size}")
    if all(s.c >= target for s in shapes):
        asymptotes = ", ".join(f"{s.key!r}: {s.c:.6g}" for s in sorted(shapes, key=lambda s: list(laws).index(s.key)))
        raise ValueError(f"{_OP}: no shape reaches target_loss={target:.6g}; their asymptotes c are {{{asymptotes}}}")
    jumps = _check_jumps(shapes, switch_jump)
    rank = _check_order(shapes, order)
    start = _real("start_loss", start_loss, allow_none=True)
    if start is None:
        initial = [s.fresh for s in shapes if math.isfinite(s.fresh)]
        if not initial:
            raise ValueError(f"{_OP}: no law predicts a finite loss at C=0; pass start_loss")
        start = max(initial)
        if start <= target:
            raise ValueError(
                f"{_OP}: target_loss={target:.6g} is at or above every law's loss at C=0 (highest "
                f"{start:.6g}): nothing to train; pass a lower target_loss or a start_loss"
            )
    elif start <= target:
        raise ValueError(f"{_OP}: start_loss={start:.6g} must be greater than target_loss={target:.6g}")
    for shape in shapes:
        # A law anchored at the measured start loss gives it back at C=0 only to round-off
        # (either side): such a shape starts at the start loss, as the fresh model does.
        if math.isfinite(shape.fresh) and abs(shape.fresh - start) <= _ROUND_OFF * abs(start):
            shape.fresh = start
    if all(s.fresh < start for s in shapes):
        fresh = ", ".join(f"{s.key!r}: {s.fresh:.6g}" for s in shapes)
        raise ValueError(f"{_OP}: start_loss={start:.6g} is above every law's loss at C=0 ({{{fresh}}}): no shape may "
                         "start there without a free descent; anchor the laws at the measured initial loss")

    grid = _loss_grid(shapes, start, target, int(grid_size))
    if kappa == 0 and not jumps.any() and rank is None:
        switches = _greedy_switches(shapes, grid)
    else:
        switches = _dp_switches(shapes, _with_crossings(shapes, grid), kappa, jumps, rank)
    plan = _build_plan(shapes, switches, start, target, kappa, jumps)
    return Plan(**{**vars(plan), "switch_jumps": jumps.named(), "order": None if order is None else tuple(order)})


class _Jumps:
    """The loss jump of each switch, from shape i to shape k: a number, or a function of the
    loss at the switch."""

    def __init__(self, shapes, constant, functions):
        self.shapes, self.constant, self.functions = shapes, constant, functions

    def any(self) -> bool:
        return bool(self.constant.any() or self.functions)

    def at(self, i, k, losses):
        """Jumps from shape i to shape k at each of ``losses`` (1-D float array)."""
        if (i, k) not in self.functions:
            return np.full(losses.shape, self.constant[i, k])
        values = _call(self.functions[i, k], losses)
        if not np.isfinite(values).all():
            at = float(losses[~np.isfinite(values)][0])
            pair = (self.shapes[i].key, self.shapes[k].key)
            raise ValueError(f"{_OP}: switch_jump[{pair!r}]({at:.6g}) is {values[~np.isfinite(values)][0]}; a jump "
                             "function must give a finite number at every loss")
        return values

    def named(self) -> dict:
        """{(from, to): jump} for the report: a number, or "a function of the switch loss"."""
        out = {(a.key, b.key): float(self.constant[i, j]) for i, a in enumerate(self.shapes)
               for j, b in enumerate(self.shapes) if self.constant[i, j]}
        out.update({(self.shapes[i].key, self.shapes[k].key): "a function of the switch loss"
                    for i, k in self.functions})
        return out


def _check_jumps(shapes, switch_jump):
    """The jumps of every switch, from shape i (row) to shape j (column)."""
    n = len(shapes)
    functions = {}
    if isinstance(switch_jump, dict):
        index = {s.key: i for i, s in enumerate(shapes)}
        out = np.zeros((n, n))
        for pair, jump in switch_jump.items():
            if not (isinstance(pair, tuple) and len(pair) == 2 and all(k in index for k in pair)):
                raise ValueError(f"{_OP}: switch_jump keys must be (from_shape, to_shape) pairs of the laws' shapes, "
                                 f"got {pair!r}")
            if callable(jump):
                if pair[0] != pair[1]:
                    functions[index[pair[0]], index[pair[1]]] = jump
            else:
                out[index[pair[0]], index[pair[1]]] = _real(f"switch_jump[{pair!r}]", jump)
    else:
        out = np.full((n, n), _real("switch_jump", switch_jump))
    if (out < 0).any():
        raise ValueError(f"{_OP}: switch_jump must be >= 0, got {out[out < 0].min():.6g}")
    np.fill_diagonal(out, 0.0)
    return _Jumps(shapes, out, functions)


def _check_order(shapes, order):
    """Position of each shape in ``order`` (None: no order)."""
    if order is None:
        return None
    order = list(order)
    keys = [s.key for s in shapes]
    if sorted(map(repr, order)) != sorted(map(repr, keys)) or len(set(map(repr, order))) != len(order):
        raise ValueError(f"{_OP}: order must list every shape of laws once, got {order!r} for {keys!r}")
    position = {repr(k): i for i, k in enumerate(order)}
    return np.array([position[repr(k)] for k in keys])


def _loss_grid(shapes, start, target, n):
    """Descending loss levels from start to target: uniform, plus geometric clusters at the
    target and above each asymptote in range (where slopes change fastest), plus the
    free-above kinks."""
    span = start - target
    parts = [np.linspace(target, start, n), target + span * np.geomspace(1e-12, 1.0, n)]
    for s in shapes:
        if target <= s.c < start:
            parts.append(s.c + (start - s.c) * np.geomspace(1e-12, 1.0, n // 4))
        if target < s.fresh < start:
            parts.append([s.fresh])
    grid = np.unique(np.clip(np.concatenate(parts), target, start))
    return grid[::-1]


def _argmin(slopes):
    # np.argmin keeps the first of equal values: shapes are sorted so ties go to the one free longest.
    return np.argmin(slopes, axis=0)


def _slopes(shapes, losses):
    return np.stack([s.slope(losses) for s in shapes])


def _log_ratio(a, b, loss):
    """A bounded, continuous-where-the-slopes-are sign function of slope_a - slope_b."""
    sa, sb = a.slope(loss)[0], b.slope(loss)[0]
    if sa == sb:
        return 0.0
    with np.errstate(all="ignore"):
        return math.atan(np.log(sa) - np.log(sb))


def _crossing(a, b, hi, lo):
    """A loss in [lo, hi] where a's slope stops being below b's (sign change of the ratio)."""
    f_hi, f_lo = _log_ratio(a, b, hi), _log_ratio(a, b, lo)
    if f_hi == 0 or f_lo == 0 or (f_hi > 0) == (f_lo > 0):
        return lo if f_lo == 0 else hi
    return brentq(lambda e: _log_ratio(a, b, e), lo, hi, xtol=4 * np.finfo(float).eps * hi, rtol=1e-15)


def _greedy_switches(shapes, grid, depth=0):
    """[(loss, shape index)]: where the cheapest shape changes, first entry at grid[0]."""
    best = _argmin(_slopes(shapes, grid))
    switches = [(grid[0], int(best[0]))]
    for i in np.nonzero(best[1:] != best[:-1])[0]:
        hi, lo, a, b = grid[i], grid[i + 1], int(best[i]), int(best[i + 1])
        cut = _crossing(shapes[a], shapes[b], hi, lo)
        mids = _argmin(_slopes(shapes, np.array([(hi + cut) / 2, (cut + lo) / 2])))
        if (mids[0] != a or mids[1] != b) and depth < 4 and hi - lo > 8 * np.finfo(float).eps * hi:
            # A third shape wins somewhere inside this cell: rescan it finer.
            inner = _greedy_switches(shapes, np.linspace(hi, lo, 17), depth + 1)
            switches.extend(inner[1:] if inner[0][1] == switches[-1][1] else inner)
        else:
            switches.append((cut, b))
    return _merge(switches)


def _merge(switches):
    merged = []
    for loss, k in switches:
        if merged and merged[-1][1] == k:
            continue
        if merged and merged[-1][0] == loss:
            merged[-1] = (loss, k)
        else:
            merged.append((loss, k))
    return merged


def _with_crossings(shapes, grid):
    """The grid plus every loss where two shapes' slopes cross (sign changes on the grid)."""
    slopes = _slopes(shapes, grid)
    extra = []
    for i, j in itertools.combinations(range(len(shapes)), 2):
        with np.errstate(all="ignore"):
            sign = np.sign(slopes[i] - slopes[j])
        for k in np.nonzero(sign[1:] * sign[:-1] < 0)[0]:
            extra.append(_crossing(shapes[i], shapes[j], grid[k], grid[k + 1]))
    return np.unique(np.concatenate([grid, extra]))[::-1]


def _landing(shape, losses, jumps, target):
    """The loss right after switching into ``shape`` at ``losses`` with ``jumps``: never above
    its fresh loss, and a (negative) jump that lands below the target lands at the target:
    the switch reached it, with no compute after it (never a negative one). A landing at or
    below the asymptote is kept: ``static`` gives inf there, and the switch is not taken."""
    landed = np.minimum(losses + jumps, shape.fresh)
    return np.where(landed > shape.c, np.maximum(landed, target), landed)


def _dp_switches(shapes, nodes, kappa, jumps, rank):
    """Least compute + kappa per switch + the jumps' climb back, over plans that switch only
    at ``nodes`` (descending) and, with ``rank``, only forward in it."""
    compute = np.stack([s.compute(nodes) for s in shapes])  # (S, N), inf where a shape is not usable
    usable = np.isfinite(compute)
    with np.errstate(invalid="ignore"):
        step = np.where(usable[:, 1:] & usable[:, :-1], compute[:, 1:] - compute[:, :-1], np.inf)
    n_shapes, n_steps = step.shape
    # enter[i, k, j]: extra cost of switching from i to k at node j (charge + climbing back the jump)
    enter = np.full((n_shapes, n_shapes, n_steps), math.inf)
    for i, k in itertools.product(range(n_shapes), repeat=2):
        if i == k or (rank is not None and rank[i] >= rank[k]):
            continue
        top = shapes[k].static(_landing(shapes[k], nodes[:-1], jumps.at(i, k, nodes[:-1]), nodes[-1]))
        with np.errstate(invalid="ignore"):  # top inf: the jump lands at or below k's asymptote
            enter[i, k] = np.where(np.isfinite(compute[k, :-1]) & np.isfinite(top), kappa + compute[k, :-1] - top,
                                   np.inf)
    best = np.where(np.isfinite(compute[:, 0]), 0.0, np.inf)  # cost so far of being on each shape at the node
    came_from = np.empty((n_steps, n_shapes), dtype=np.int64)
    for j in range(n_steps):
        via = best[:, None] + enter[:, :, j]  # (from, to)
        source = np.argmin(via, axis=0)
        switched = via[source, np.arange(n_shapes)]
        use_switch = switched < best
        came_from[j] = np.where(use_switch, source, np.arange(n_shapes))
        best = np.where(use_switch, switched, best) + step[:, j]
    shape = int(np.argmin(best))
    if not np.isfinite(best[shape]):
        raise ValueError(f"{_OP}: no plan reaches the target from start_loss (in the given order, no usable shape "
                         "reaches it)")
    switches = []
    for j in range(n_steps - 1, -1, -1):
        prev = int(came_from[j, shape])
        if prev != shape:
            switches.append((nodes[j], shape))
            shape = prev
    switches.append((nodes[0], shape))
    return switches[::-1]


def _build_plan(shapes, switches, start, target, kappa, jumps=None):
    # A leading sliver (its shape's C = 0 loss a rounding error above the next one's) is not
    # a segment: the next shape starts at the start loss.
    while len(switches) > 1:
        (top, k), (cut, _) = switches[0], switches[1]
        ends = shapes[k].static(np.array([top, cut]))
        if ends[1] - ends[0] > 0 and top - cut > 1e-9 * abs(top):
            break
        switches = [(top, switches[1][1])] + switches[2:]
    bounds = [loss for loss, _ in switches[1:]] + [target]
    segments, spent, previous = [], 0.0, None
    for n, ((loss_start, k), loss_end) in enumerate(zip(switches, bounds)):  # switches[0] is at start
        jump = float(jumps.at(previous, k, np.array([loss_start]))[0]) if (n and jumps is not None) else 0.0
        top = float(_landing(shapes[k], np.array([loss_start]), np.array([jump]), target)[0])
        ends = shapes[k].static(np.array([top, loss_end]))
        compute = float(ends[1] - ends[0])
        begin = spent + (kappa if n else 0.0)
        spent = begin + compute
        segments.append(Segment(shapes[k].key, float(loss_start), float(loss_end), compute, begin, spent, jump))
        previous = k
    static = {}
    for s in shapes:
        ends = s.static(np.array([start, target]))
        static[s.key] = float(ends[1] - ends[0]) if np.isfinite(ends[1]) else math.inf
    best_static = min(static, key=static.get)
    best_compute = static[best_static]
    savings = 1.0 - spent / best_compute if best_compute > 0 else 0.0
    return Plan(segments, spent, best_static, best_compute, savings, start, target, kappa, static)


def plot_plan(plan, laws, path, *, title=None, points=200):
    """Draw loss vs compute (log x) of each static law and of the adaptive plan; save to ``path``.

    Args:
        plan: a ``Plan`` from ``optimal_schedule``.
        laws: the dict shape -> law the plan was made from.
        path: where to write the image (format from the suffix, e.g. ``.png``).
        title: figure title (default: a one-line summary of the savings).
        points: samples per curve.
    Returns ``path``. Uses matplotlib's Agg canvas directly, so it needs no display.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shapes = {s.key: s for s in _check_laws(laws)}
    if not isinstance(plan, Plan):
        raise TypeError(f"adaptkern.schedule.plot_plan: plan must be a Plan, got {type(plan).__name__}")
    x_max = 2.5 * max(plan.best_static_compute, plan.total_compute, 1e-300)
    x_min = x_max * 1e-4
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    top = plan.target_loss
    for key, s in shapes.items():
        base = s.static(np.array([plan.start_loss]))[0]
        x = np.geomspace(x_min, x_max, points)
        losses = _call(s.law.predict, base + x)
        ax.plot(x, losses, lw=1.2, alpha=0.75, label=f"static {key}")
        top = max(top, float(np.nanmax(np.minimum(losses, plan.start_loss))))
    for seg in plan.segments:
        losses = np.linspace(seg.loss_start, seg.loss_end, points)
        along = shapes[seg.shape].static(losses)
        x = seg.compute_start + along - along[0]
        keep = x >= x_min
        ax.plot(x[keep], losses[keep], color="black", lw=2.4, solid_capstyle="butt")
    for seg in plan.segments[1:]:
        ax.plot([seg.compute_start], [seg.loss_start], "o", color="black", ms=5)
    ax.plot([], [], color="black", lw=2.4, label="adaptive (dots: switches)")
    ax.axhline(plan.target_loss, color="grey", ls="--", lw=1, label="target loss")
    ax.plot([plan.total_compute], [plan.target_loss], "*", color="black", ms=11)
    if math.isfinite(plan.best_static_compute):
        ax.plot([plan.best_static_compute], [plan.target_loss], "*", color="grey", ms=11,
                label=f"best static ({plan.best_static_shape}) at target")
    ax.set_xscale("log")
    ax.set_xlim(x_min, x_max)
    ax.set_ylim(plan.target_loss - 0.25 * (top - plan.target_loss), top)
    ax.set_xlabel("compute")
    ax.set_ylabel("loss")
    ax.set_title(title or (
        f"adaptive {plan.total_compute:.3g} vs best static ({plan.best_static_shape}) "
        f"{plan.best_static_compute:.3g}: {100 * plan.savings:.1f}% saved"
    ), fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.25)
    fig.savefig(path, dpi=120)
    return path
