"""From a sweep to an adaptive run: fit one law per shape, choose the target loss, plan the
compute-optimal schedule, and measure what each run spent to reach the target.

Switching rule (documented choice): the adaptive run switches shape when its exact training
compute reaches the plan's segment boundary (``Segment.compute_end``), not when its eval
loss reaches the segment's loss. Compute is known exactly at every step, while the eval
loss is measured only at a few points and is noisy, so a loss trigger would switch late or
early by chance; a compute trigger executes exactly the plan whose cost the report quotes.
"""

import math
import warnings

import numpy as np

from .. import schedule as ak_schedule
from ..scaling import fit_shape_law

FIRST_EVAL = "at first eval"  # first_crossing's "how" when the number is only an upper bound
TARGET_RULE = ("the higher of the last two eval losses of the static run that ended lowest: a loss the best "
               "static shape demonstrably reached within the sweep budget, and not a single lucky eval")


def curve(evals):
    """(compute, loss) float arrays of an eval history, in compute order."""
    rows = sorted(evals, key=lambda r: r["compute"])
    return np.array([r["compute"] for r in rows], dtype=float), np.array([r["loss"] for r in rows], dtype=float)


def fit_laws(records: dict) -> tuple:
    """{shape: ShapeLaw} fitted to each sweep run's (compute, eval loss), and {shape: error
    message} for shapes whose fit failed (too few points, no convergence, a warning); a
    shape is in one of the two, never both."""
    laws, errors = {}, {}
    for shape, record in records.items():
        compute, loss = curve(record["evals"])
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                law = fit_shape_law(compute, loss)
            if not law.fit_info.get("converged", True):
                errors[shape] = f"fit did not converge ({law.fit_info.get('message')})"
            elif caught:
                errors[shape] = f"fit warned: {caught[0].message}"
            else:  # only a clean fit plans the schedule
                laws[shape] = law
        except (ValueError, TypeError) as error:
            errors[shape] = str(error)
    return laws, errors


def choose_target(records: dict) -> float:
    """The target loss by ``TARGET_RULE``."""
    finals = {s: curve(r["evals"])[1] for s, r in records.items() if len(r["evals"]) >= 2}
    if not finals:
        raise ValueError("choose_target: every sweep run needs at least two evals")
    best = min(finals, key=lambda s: finals[s][-1])
    return float(max(finals[best][-2:]))


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


def plan_schedule(laws: dict, target: float):
    """``ak.schedule.optimal_schedule`` over the fitted laws (free switches)."""
    return ak_schedule.optimal_schedule(laws, target)
