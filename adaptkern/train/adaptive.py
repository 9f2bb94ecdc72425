"""From runs to numbers: eval curves, first crossings of a target, the target rule, the
measured switch jumps (raw, from cross-shape evals, and effective, from switch probes), and
the savings over seeds.

Crossings: the training compute at which an eval curve first reaches a target, interpolated
linearly in log-compute between the last eval above it and the first at or below it; the
static and the adaptive runs are measured the same way, and the report gives the spacing of
the two evals around every crossing (the protocol keeps it <= ``dense_ratio`` there).
"""

import math

import numpy as np

FIRST_EVAL = "at first eval"  # first_crossing's "how" when the number is only an upper bound
TARGET_FRACTIONS = (0.30, 0.25, 0.20, 0.15, 0.10)
HEADLINE_FRACTION = 0.20
TARGET_RULE = ("fixed from the tuning runs (their own seed, before any measured run): with L0 their mean step-0 "
               "loss and L_end the lowest final loss (mean of the last two evals) of the tuned static shapes, "
               "targets = L_end + f (L0 - L_end) for f = 0.30, 0.25, 0.20, 0.15, 0.10 (the lowest stays at least "
               "3 eval standard errors above L_end: away from the noise floor; equal targets count once); headline: the "
               "middle one, f = 0.20")


def curve(evals):
    """(compute, loss) float arrays of an eval history, in compute order."""
    rows = sorted(evals, key=lambda r: r["compute"])
    return np.array([r["compute"] for r in rows], dtype=float), np.array([r["loss"] for r in rows], dtype=float)


def first_crossing(evals, target: float):
    """Training compute at which the eval curve first reaches ``target``: interpolated
    linearly in log-compute between the last eval above the target and the first at or
    below it. Returns (compute or None if never reached, how: "interpolated" |
    "at first eval" (already below at the first eval: an upper bound) | "not reached")."""
    compute, loss = curve(evals)
    below = np.nonzero(loss <= target)[0]
    if not len(below):
        return None, "not reached"
    i = int(below[0])
    if i == 0:
        return float(compute[0]), FIRST_EVAL
    c0, c1, l0, l1 = math.log(compute[i - 1]), math.log(compute[i]), loss[i - 1], loss[i]
    frac = (l0 - target) / (l0 - l1) if l0 != l1 else 1.0
    return float(math.exp(c0 + frac * (c1 - c0))), "interpolated"


def crossing_gap(evals, target: float):
    """Ratio of the computes of the two evals around the first crossing (None if none)."""
    compute, loss = curve(evals)
    below = np.nonzero(loss <= target)[0]
    if not len(below) or below[0] == 0:
        return None
    return float(compute[below[0]] / compute[below[0] - 1])


def final_loss(evals) -> float:
    """Mean of the last two evals: a run's end point, not one lucky eval."""
    return float(np.mean(curve(evals)[1][-2:]))


def choose_targets(records: dict, fractions=TARGET_FRACTIONS) -> list:
    """The target losses by ``TARGET_RULE`` from the tuned static runs' records
    (``initial`` and ``evals``), highest first."""
    if not records:
        raise ValueError("choose_targets: no tuning runs")
    L0 = float(np.mean([r["initial"]["loss"] for r in records.values()]))
    ends = {s: final_loss(r["evals"]) for s, r in records.items() if len(r["evals"]) >= 2}
    if not ends:
        raise ValueError("choose_targets: every tuning run needs at least two evals")
    best = min(ends, key=ends.get)
    end = ends[best]
    if L0 <= end:
        raise ValueError(f"choose_targets: no tuning run learned (step-0 loss {L0:.4g}, best final {end:.4g})")
    stderr = max(r.get("stderr") or 0.0 for r in records[best]["evals"][-2:])
    top = end + max(fractions) * (L0 - end)
    floor = min(end + 3 * stderr, top)  # a held-out set too small for the rule leaves one target (--fast)
    return sorted({max(end + f * (L0 - end), floor) for f in fractions}, reverse=True)


def switch_jumps(records: dict, order) -> dict:
    """{(a, b): loss jump} for every forward pair of ``order``: the median, over the evals of
    shape a's run that carry cross-shape evals, of max(0, loss at b - loss at a) (the same
    model, the same held-out images, only the shape changed)."""
    jumps = {}
    for i, a in enumerate(order):
        rows = [r for r in records[a]["evals"] if r.get("cross")]
        for b in order[i + 1:]:
            values = [max(0.0, r["cross"][b] - r["loss"]) for r in rows if b in r["cross"]]
            if values:
                jumps[(a, b)] = float(np.median(values))
    return jumps


PROBE_RULE = ("switch probes on the tuning seed, each pair (a, b) forward in the shape order whose b curve reaches "
              "the headline target: a at its tuned setting until C_s, then b at its tuned setting until the headline "
              "(or twice the best tuning run's compute to it); C_s log-spaced from 2% to 50% of a's tuning run's "
              "compute to the headline; the effective jump is the one with which the laws predict the probe's FLOPs "
              "to the headline (a probe that reached it before its switch measures nothing and is left out)")


def effective_jump(law_from, law_to, switch_compute: float, crossing_compute, target: float):
    """(switch loss E, effective jump J, how) of one switch probe: a run trained on shape a
    (``law_from``, the planner's curve) until ``switch_compute``, then on b (``law_to``),
    first reached ``target`` at ``crossing_compute`` (None: never). Along the planner's
    curves a switch at E = law_from(C_s) costs C_b(target) - C_b(E + J) more compute to the
    target; J is the jump that makes that the measured crossing_compute - C_s, so a plan
    switching there predicts what the probe measured. A probe that did no better than a
    fresh b run (or never reached the target) gets the jump back to b's fresh loss: a
    restart, the most the model can charge. J < 0: the switched run beat b's law from E.
    J None: the probe reached the target before it switched (no jump measured)."""
    loss = float(np.asarray(law_from.predict(float(switch_compute)), dtype=float))
    fresh = float(np.asarray(law_to.predict(0.0), dtype=float))
    if crossing_compute is not None and crossing_compute <= switch_compute:
        return loss, None, "reached the target before the switch: measures nothing"
    if crossing_compute is None:
        return loss, fresh - loss, "not reached: charged a restart"
    needed = float(np.asarray(law_to.inverse(float(target)), dtype=float))
    left = needed - (float(crossing_compute) - float(switch_compute))
    if not math.isfinite(needed) or left <= 0:
        return loss, fresh - loss, "no better than a fresh start: charged a restart"
    return loss, float(np.asarray(law_to.predict(left), dtype=float)) - loss, "measured"


class JumpCurve:
    """The effective jump of one switch as a function of the loss at the switch, from probes
    (switch loss, jump): linear between them, the highest-loss probe's jump above them (an
    earlier switch), and below the lowest probed loss (a later switch than any probe) the
    raw jump ``later`` measured late in training where there is one, else the jump back to
    the new shape's fresh loss ``fresh``: a restart."""

    def __init__(self, losses, jumps, fresh: float, later=None):
        order = np.argsort(losses)
        self.losses = np.asarray(losses, dtype=float)[order]
        self.jumps = np.asarray(jumps, dtype=float)[order]
        self.fresh, self.later = float(fresh), None if later is None else float(later)
        if not len(self.losses) or not np.isfinite(self.losses).all() or not np.isfinite(self.jumps).all():
            raise ValueError("JumpCurve: needs at least one probe, with finite losses and jumps")

    def __call__(self, losses):
        losses = np.asarray(losses, dtype=float)
        inside = np.interp(losses, self.losses, self.jumps)
        late = self.fresh - losses if self.later is None else np.full(losses.shape, self.later)
        return np.where(losses < self.losses[0], late, inside)


def probe_switches(compute_to_headline: float, points: int) -> list:
    """Switch computes of the probes of one pair (``PROBE_RULE``): ``points`` log-spaced from
    2% to 50% of the first shape's compute to the headline (one point: the geometric
    middle). Not later: a switch near that compute finds the run at the headline already."""
    if points < 1:
        return []
    fractions = np.geomspace(0.02, 0.5, points) if points > 1 else np.array([0.1])
    return [float(f * compute_to_headline) for f in fractions]


FREE_SWITCH_RULE = ("the least FLOPs to the target of one switch a -> b (any two shapes, or none) if switching cost "
                    "nothing and the loss were the whole state: a's static run to a loss E, then b's static run from "
                    "its own first crossing of E to the target (C_a(E) + C_b(target) - C_b(E)), E on a grid and at "
                    "every eval loss between the target and both runs' first evals; per seed, from that seed's "
                    "static runs alone")


def crossings(evals, levels) -> np.ndarray:
    """``first_crossing``'s compute for many target levels at once (NaN where the curve never
    reaches a level or is already below it at its first eval)."""
    return _crossings(*curve(evals), levels)


def _crossings(compute, loss, levels) -> np.ndarray:
    """:func:`crossings` on a curve already in compute order."""
    levels = np.asarray(levels, dtype=float)
    if len(loss) < 2:  # no eval above a level and one below it: nothing to interpolate
        return np.full(levels.shape, np.nan)
    # the first eval at or below a level is the first whose running minimum is: a sorted search
    lowest = np.minimum.accumulate(loss)
    i = np.searchsorted(-lowest, -levels, side="left")  # how many evals come before it
    inside = (i > 0) & (i < len(loss))
    j = np.where(inside, i, 1)
    l0, l1 = loss[j - 1], loss[j]
    frac = np.where(inside, (l0 - levels) / np.where(inside, l0 - l1, 1.0), 0.0)
    logc = np.log(compute[j - 1]) + frac * (np.log(compute[j]) - np.log(compute[j - 1]))
    return np.where(inside, np.exp(logc), np.nan)


def free_switch(runs: dict, target: float, levels: int = 512):
    """The least compute to ``target`` by ``FREE_SWITCH_RULE`` from one seed's static runs
    {shape: evals}: {"flops", "from", "to", "switch_loss"} ("from" == "to": a static run
    was best), or None when no run reaches the target. What the static curves allow a
    single switch to save when the loss is the state, as the law-based plan assumes; a run
    that learns faster after a switch than b's fresh run at the same loss (a negative
    effective jump) can beat it, and a minimum over noisy curves leans optimistic."""
    curves = {s: curve(ev) for s, ev in runs.items()}  # (compute, loss) in compute order, once
    finish = {s: _crossings(*c, [target])[0] for s, c in curves.items()}
    reached = {s: c for s, c in finish.items() if np.isfinite(c)}
    if not reached:
        return None
    best_static = min(reached, key=reached.get)
    best = {"flops": float(reached[best_static]), "from": best_static, "to": best_static,
            "switch_loss": float(target)}
    for a in runs:
        for b, c_b in reached.items():
            if a == b:
                continue
            top = min(curves[a][1][0], curves[b][1][0])  # the lower of the two first evals' losses
            if top <= target:
                continue
            # a grid, and every eval loss and the level just below it: the crossing of a noisy
            # curve jumps to a later eval just below a dip, and the least cost can sit there
            kinks = np.concatenate([curves[a][1], curves[b][1]])
            grid = np.concatenate([np.linspace(target, top, levels + 1, endpoint=False)[1:], kinks,
                                   np.nextafter(kinks, -np.inf)])
            grid = grid[(grid > target) & (grid < top)]
            cost = _crossings(*curves[a], grid) + c_b - _crossings(*curves[b], grid)
            if np.isfinite(cost).any() and np.nanmin(cost) < best["flops"]:
                k = int(np.nanargmin(cost))
                best = {"flops": float(cost[k]), "from": a, "to": b, "switch_loss": float(grid[k])}
    return best


def spread(values) -> dict:
    """{"mean", "min", "max", "n"} of the non-None values (all None when there are none)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "min": None, "max": None, "n": 0}
    return {"mean": float(np.mean(vals)), "min": float(min(vals)), "max": float(max(vals)), "n": len(vals)}


def _comparable(compute, how):
    """A crossing (``first_crossing``'s pair) that can be compared: None when not reached, and
    None when the run was already below the target at its first eval (then the number is
    only an upper bound)."""
    return compute if how == "interpolated" else None


def _measured(evals, target):
    """The comparable crossing of ``target`` by an eval history (see ``_comparable``)."""
    return _comparable(*first_crossing(evals, target))


def target_entry(target: float, headline: bool, static: dict, adaptive: list) -> dict:
    """One entry of the report's ``targets``: static {shape: [records per seed]}, adaptive
    [record per seed]. The best static shape is the one with the least mean FLOPs over the
    seeds that reached the target (ties and partial reach: more seeds reached wins first; a
    run already below the target at its first eval reached it, and its first eval's FLOPs,
    an upper bound, stand for its crossing in this ranking only); savings per seed = 1 -
    adaptive / best static, both crossings interpolated alike (a run below the target
    already at its first eval gives no number: it is only an upper bound). ``free_switch``:
    per seed, the best single switch by ``FREE_SWITCH_RULE`` and its saving against the same
    best static shape."""
    crossings = {s: [first_crossing(r["evals"], target) for r in runs] for s, runs in static.items()}
    static_flops = {s: [_comparable(*c) for c in runs] for s, runs in crossings.items()}
    adaptive_flops = [_measured(r["evals"], target) for r in adaptive]

    def rank(shape):
        vals = [compute for compute, _ in crossings[shape] if compute is not None]
        return (-len(vals), np.mean(vals) if vals else math.inf)

    best = min(static_flops, key=rank)
    per_seed = [None if (a is None or s is None) else 1.0 - a / s
                for a, s in zip(adaptive_flops, static_flops[best])]
    gaps = [crossing_gap(r["evals"], target) for runs in static.values() for r in runs]
    gaps += [crossing_gap(r["evals"], target) for r in adaptive]
    gaps = [g for g in gaps if g is not None]
    switches = [free_switch({s: runs[i]["evals"] for s, runs in static.items()}, target)
                for i in range(len(static_flops[best]))]
    free = [None if f is None or s is None else 1.0 - f["flops"] / s for f, s in zip(switches, static_flops[best])]
    return {"loss": float(target), "headline": bool(headline), "best_static_shape": best,
            "static_flops": static_flops, "adaptive_flops": adaptive_flops, "savings_per_seed": per_seed,
            "savings": spread(per_seed), "max_eval_ratio_at_crossings": max(gaps) if gaps else None,
            "free_switch": {"per_seed": switches, "savings_per_seed": free, "savings": spread(free)}}
