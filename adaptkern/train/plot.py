"""The demo's figure: held-out loss vs exact training FLOPs of every static run, their
fitted laws, the adaptive run (with its shape switches) and the target loss."""

import numpy as np

from .adaptive import curve


def plot_demo(records: dict, laws: dict, adaptive: dict, target: float, path, *, title: str = None) -> str:
    """Write a PNG to ``path``.

    Args:
        records: {shape: sweep record} (``evals`` rows with compute and loss).
        laws: {shape: fitted law} (may miss shapes whose fit failed).
        adaptive: {"evals": [...], "switches": [(compute, shape), ...], "crossing": float|None}
            or None when there was no adaptive run.
        target: the target loss (None: no line).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    fig = Figure(figsize=(8, 5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colors = {}
    lo, hi = np.inf, 0.0
    for i, (shape, record) in enumerate(records.items()):
        compute, loss = curve(record["evals"])
        if not len(compute):
            continue
        # zorder 3: drawn over the adaptive line, which follows a static run until its first switch
        line, = ax.plot(compute, loss, "o-", ms=4, lw=1.2, alpha=0.85, label=f"static {shape}", zorder=3)
        colors[shape] = line.get_color()
        lo, hi = min(lo, compute.min()), max(hi, compute.max())
        if record.get("crossing"):
            ax.plot([record["crossing"]], [target], "*", ms=12, color=line.get_color(), mec="black", mew=0.5)
    grid = np.geomspace(lo, hi, 200) if np.isfinite(lo) else None
    for shape, law in laws.items():
        if grid is not None:
            ax.plot(grid, np.asarray(law.predict(grid), dtype=float), "--", lw=1, color=colors.get(shape, "grey"),
                    alpha=0.8)
    ax.plot([], [], "--", color="grey", lw=1, label="fitted law c + a (C + d)^-b")
    if adaptive and adaptive.get("evals"):
        compute, loss = curve(adaptive["evals"])
        ax.plot(compute, loss, "s-", color="black", lw=2.6, ms=5, label="adaptive (dotted: shape switches)", zorder=2)
        lo, hi = min(lo, compute.min()), max(hi, compute.max())
        for where, shape in adaptive.get("switches", []):
            if lo / 1.5 <= where <= hi * 1.5:  # inside the drawn range
                ax.axvline(where, color="black", ls=":", lw=1)
                ax.annotate(f"to {shape}", (where, 0.02), xycoords=("data", "axes fraction"), xytext=(3, 0),
                            textcoords="offset points", fontsize=8)
        if adaptive.get("crossing"):
            ax.plot([adaptive["crossing"]], [target], "*", ms=15, color="black", label="first reaches target")
    if target is not None:
        ax.axhline(target, color="grey", ls="-.", lw=1, label=f"target loss {target:.3f}")
    ax.set_xscale("log")
    ax.set_yscale("log")  # the low-loss end, where the target sits, stays readable
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    if np.isfinite(lo):
        ax.set_xlim(lo / 1.5, hi * 1.5)
    ax.set_xlabel("exact training FLOPs (FlopCounterMode, summed over ranks)")
    ax.set_ylabel("held-out loss")
    ax.set_title(title or "loss vs exact compute: static shapes, fitted laws, adaptive run", fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="lower left")
    fig.savefig(path, dpi=120)
    return path
