"""From runs to numbers: eval curves, first crossings of a target, the target rule, the
measured switch jumps, and the savings over seeds.

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
    already at its first eval gives no number: it is only an upper bound)."""
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
    return {"loss": float(target), "headline": bool(headline), "best_static_shape": best,
            "static_flops": static_flops, "adaptive_flops": adaptive_flops, "savings_per_seed": per_seed,
            "savings": spread(per_seed), "max_eval_ratio_at_crossings": max(gaps) if gaps else None}
