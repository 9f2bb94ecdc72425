"""The demo's figure: (left) held-out loss vs exact training FLOPs of every measured run --
each static shape per seed, the adaptive run per seed with its switch points -- with the
targets; (right) the adaptive run's savings over the best tuned static shape at every
target (mean over seeds, min-max bars), with the plan's prediction, the oracle and what a
cost-free switch would save on the static curves (``adaptive.FREE_SWITCH_RULE``)."""

import textwrap

import numpy as np

from .adaptive import curve


def plot_demo(summary: dict, laws: dict, path) -> str:
    """Write a PNG of a demo ``summary`` to ``path``; ``laws``: {shape: law} drawn dashed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 5), layout="constrained")
    FigureCanvasAgg(fig)
    ax, bx = fig.subplots(1, 2, width_ratios=[1.6, 1])
    colors = {}
    lo, hi = np.inf, 0.0
    for shape, runs in summary["runs"]["static"].items():
        for n, run in enumerate(runs):
            compute, loss = curve(run["evals"])
            if not len(compute):
                continue
            kw = {"color": colors[shape]} if shape in colors else {}
            line, = ax.plot(compute, loss, "-", lw=1.1, alpha=0.8, label=f"static {shape}" if n == 0 else None, **kw)
            colors[shape] = line.get_color()
            lo, hi = min(lo, compute.min()), max(hi, compute.max())
    grid = np.geomspace(lo, hi, 200) if np.isfinite(lo) else None
    for shape, law in laws.items():
        if grid is not None:
            ax.plot(grid, np.asarray(law.predict(grid), dtype=float), "--", lw=0.9, color=colors.get(shape, "grey"),
                    alpha=0.7)
    ax.plot([], [], "--", color="grey", lw=0.9, label="plan's curve (tuning run)")
    for n, run in enumerate(summary["runs"]["adaptive"]):
        compute, loss = curve(run["evals"])
        if len(compute):
            ax.plot(compute, loss, "-", color="black", lw=2.0, label="adaptive" if n == 0 else None, zorder=4)
        for sw in run.get("switches") or []:
            ax.plot([sw["compute"]], [sw["loss_before"]], "o", color="black", ms=6, zorder=5,
                    label="switch" if n == 0 and sw is run["switches"][0] else None)
            ax.plot([sw["compute"], sw["compute"]], [sw["loss_before"], sw["loss_after"]], "-", color="black", lw=1)
    for t in summary.get("targets", []):
        ax.axhline(t["loss"], color="grey", ls="-." if t["headline"] else ":", lw=1)
    ax.set_xscale("log")
    if np.isfinite(lo):
        ax.set_xlim(lo / 1.3, hi * 1.3)
    ax.set_xlabel("exact training FLOPs (ledger)")
    ax.set_ylabel("held-out loss")
    ax.set_title(f"every measured run, seeds {summary['seeds']} (targets: dotted, headline: dash-dot)", fontsize=9)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7, loc="upper right")

    targets = summary.get("targets", [])
    xs = [t["loss"] for t in targets if t["savings"]["mean"] is not None]
    means = [100 * t["savings"]["mean"] for t in targets if t["savings"]["mean"] is not None]
    low = [100 * (t["savings"]["mean"] - t["savings"]["min"]) for t in targets if t["savings"]["mean"] is not None]
    high = [100 * (t["savings"]["max"] - t["savings"]["mean"]) for t in targets if t["savings"]["mean"] is not None]
    if xs:
        bx.errorbar(xs, means, yerr=[low, high], fmt="o-", color="black", capsize=3, label="measured (mean, min-max)")
    plan = summary.get("plan")
    if plan:
        pred = []
        for row in plan.get("predicted_flops_by_target", []):
            t = next(t for t in targets if t["loss"] == row["loss"])
            st = [v for v in t["static_flops"][t["best_static_shape"]] if v is not None]
            if st:
                pred.append((row["loss"], 100 * (1 - row["flops"] / np.mean(st))))
        if pred:
            bx.plot(*zip(*pred), "s--", color="tab:blue", ms=4, label="plan's prediction vs measured static")
    free = [(t["loss"], 100 * t["free_switch"]["savings"]["mean"]) for t in targets
            if (t.get("free_switch") or {}).get("savings", {}).get("mean") is not None]
    if free:
        bx.plot(*zip(*free), "^:", color="tab:green", ms=4, label="free switch (static curves, loss as the state)")
    oracle = summary.get("oracle", {}).get("best_savings")
    head = next((t for t in targets if t["headline"]), None)
    if oracle is not None and head is not None:
        bx.plot([head["loss"]], [100 * oracle], "*", color="tab:red", ms=12, label=f"oracle single switch (seed {summary['oracle']['seed']})")
    bx.axhline(0, color="grey", lw=1)
    if head is not None:
        bx.axvline(head["loss"], color="grey", ls="-.", lw=1)
    bx.invert_xaxis()
    bx.set_xlabel("target loss (harder to the right)")
    bx.set_ylabel("saving vs best tuned static shape (%)")
    bx.set_title(textwrap.fill(summary["verdict"]["claim"], width=72, max_lines=5, placeholder=" ..."), fontsize=7)
    bx.grid(True, alpha=0.25)
    if bx.get_legend_handles_labels()[0]:
        bx.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    return path
