"""The demo's report: a JSON-ready summary and the printed table."""

import math

from .adaptive import FIRST_EVAL


def _fmt(x, spec=".3e"):
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def compare(static: dict, adaptive_crossing, *, static_how=None, adaptive_how=None, no_adaptive_run=None):
    """The verdict from the measured numbers alone.

    static: {shape: FLOPs to target or None}; adaptive_crossing: FLOPs or None;
    static_how / adaptive_how: ``first_crossing``'s "how" of each ({shape: how} / str; None:
    interpolated). A crossing "at first eval" is only an upper bound (the curve was already
    below the target at its first eval), so when a static shape that reached the target or
    the adaptive run has one, neither a saving nor a winner is claimed.
    no_adaptive_run: why there is no adaptive run (the plan failed), or None.
    Returns {"best_static_shape", "best_static_flops", "adaptive_flops", "savings",
    "adaptive_wins", "claim"}: savings = 1 - adaptive / best static; the claim says in
    words what the numbers say, whichever way they point.
    """
    reached = {s: c for s, c in static.items() if c is not None}
    best = min(reached, key=reached.get) if reached else None
    best_flops = reached.get(best)
    out = {"best_static_shape": best, "best_static_flops": best_flops, "adaptive_flops": adaptive_crossing,
           "savings": None, "adaptive_wins": None}
    bounds = [f"static {s}" for s in reached if (static_how or {}).get(s) == FIRST_EVAL]
    if adaptive_crossing is not None and adaptive_how == FIRST_EVAL:
        bounds.append("adaptive")
    if no_adaptive_run is not None:
        out["claim"] = f"no adaptive run: {no_adaptive_run}"
    elif best is None and adaptive_crossing is None:
        out["claim"] = "neither the static shapes nor the adaptive run reached the target loss"
    elif best is None:
        out["adaptive_wins"] = True
        out["claim"] = (f"the adaptive run reached the target with {adaptive_crossing:.4g} FLOPs; no static shape "
                        "reached it within the sweep budget")
    elif adaptive_crossing is None:
        out["adaptive_wins"] = False
        out["claim"] = (f"the adaptive run did NOT reach the target loss within its budget; the best static shape "
                        f"{best} reached it with {best_flops:.4g} FLOPs")
    elif bounds:
        out["claim"] = (f"the target was reached at the first eval ({', '.join(bounds)}): those FLOPs to target are "
                        "only upper bounds, so no comparison is claimed")
    else:
        out["savings"] = 1.0 - adaptive_crossing / best_flops
        out["adaptive_wins"] = adaptive_crossing < best_flops
        if adaptive_crossing == best_flops:
            out["claim"] = (f"the adaptive run did NOT beat the best static shape: it needed the same "
                            f"{adaptive_crossing:.4g} exact FLOPs to reach the target as {best}")
        elif out["adaptive_wins"]:
            out["claim"] = (f"the adaptive run reached the target with {adaptive_crossing:.4g} exact FLOPs, "
                            f"{100 * out['savings']:.1f}% fewer than the best static shape {best} "
                            f"({best_flops:.4g})")
        else:
            out["claim"] = (f"the adaptive run did NOT beat the best static shape: it needed {adaptive_crossing:.4g} "
                            f"exact FLOPs to reach the target, the best static shape {best} {best_flops:.4g} "
                            f"({-100 * out['savings']:.1f}% more)")
    return out


def table(summary: dict) -> str:
    """The printed table of a demo summary."""
    target = summary["target_loss"]
    lines = [f"target loss {target:.4f}  ({summary['target_rule']})", ""]
    head = f"{'run':<10} {'FLOPs to target':>16} {'how':>14} {'law predicts':>13} {'final loss':>11} " \
           f"{'steps':>7} {'seconds':>8}"
    lines += [head, "-" * len(head)]
    for shape, row in summary["static"].items():
        lines.append(f"{shape:<10} {_fmt(row['flops_to_target']):>16} {row['crossing']:>14} "
                     f"{_fmt(row.get('law_flops_to_target')):>13} {_fmt(row['final_loss'], '.4f'):>11} "
                     f"{row['steps']:>7} {row['seconds']:>8.1f}")
    ad = summary.get("adaptive")
    if ad:
        lines.append(f"{'adaptive':<10} {_fmt(ad['flops_to_target']):>16} {ad['crossing']:>14} "
                     f"{_fmt(ad.get('planned_flops')):>13} {_fmt(ad['final_loss'], '.4f'):>11} "
                     f"{ad['steps']:>7} {ad['seconds']:>8.1f}")
        lines.append("")
        lines.append("adaptive schedule: " + "  ->  ".join(
            f"{seg['shape']} until {_fmt(seg['compute_end'], '.3g') if seg['compute_end'] else 'the end'}"
            for seg in ad["schedule"]))
    lines += ["", f"verdict: {summary['verdict']['claim']}"]  # says "no adaptive run: ..." when planning failed
    return "\n".join(lines)
