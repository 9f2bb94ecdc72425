"""Data vs fit, as a PNG: the law's curves over the data (left) and predicted vs observed
(right). Drawn with matplotlib's object API on an Agg canvas, so it runs headless and never
touches pyplot's global state."""

import numpy as np

_CURVES = 6  # fitted curves drawn for representative model sizes / token multipliers


def plot_fit(law, data: dict, path, *, title=None):
    """Write a PNG of ``law`` against the data it was fitted to.

    law: a fitted ``ScalingLaw`` (chinchilla, overtraining, downstream or shape).
    data: {argument: 1-D array} as the law's fit function took them, the observed
        target last (e.g. {"N": ..., "D": ..., "loss": ...}; {"compute": ..., "loss": ...}).
    path: where to write the PNG.
    title: a first line for the heading, above the formula and fitted parameters.
    """
    # matplotlib is imported here, not at module level: it would add ~0.8 s to `import adaptkern`.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(data)
    inputs, observed = [np.asarray(data[k], dtype=float) for k in names[:-1]], np.asarray(data[names[-1]], float)
    fig = Figure(figsize=(12, 5), layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    _DRAW[law.name](left, law, *inputs, observed)
    _parity(right, law.predict(*inputs), observed, names[-1])
    heading = f"{law.formula}\n{_param_text(law)}"
    fig.suptitle(f"{title}\n{heading}" if title else heading, fontsize=10)
    fig.savefig(path, dpi=110)
    return path


def _param_text(law):
    parts = []
    for key, value in law.params.items():
        text = f"{key}={value:.4g}"
        if key in law.intervals:
            text += " [{:.3g}, {:.3g}]".format(*law.intervals[key])
        parts.append(text)
    level = f"   ({law.confidence:.0%} bootstrap CI)" if law.intervals else ""
    return ", ".join(parts) + level


def _compute_axis(ax, compute, label="training compute C = 6ND [FLOPs]"):
    ax.set_xscale("log")
    ax.set_xlabel(label)
    ax.set_ylabel("loss")
    ax.grid(True, which="major", alpha=0.3)
    return np.geomspace(compute.min() / 1.5, compute.max() * 1.5, 200)


def _representatives(values):
    """Up to ``_CURVES`` values spread over ``values`` in log space (distinct ones if few)."""
    distinct = np.unique(np.round(np.log10(values), 3))
    if len(distinct) <= _CURVES:
        return 10**distinct
    return 10 ** np.quantile(distinct, np.linspace(0, 1, _CURVES))


def _log_norm(values):
    from matplotlib.colors import LogNorm

    return LogNorm(values.min(), values.max() if values.max() > values.min() else values.min() * 10)


def _cmap(name):
    """``name`` without its palest 15%: curves in that yellow vanish on white."""
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    return ListedColormap(colormaps[name](np.linspace(0.0, 0.85, 256)))


def _draw_chinchilla(ax, law, N, D, loss):
    compute = 6 * N * D
    grid = _compute_axis(ax, compute)
    norm = _log_norm(N)
    points = ax.scatter(compute, loss, c=N, norm=norm, cmap=_cmap("viridis"), s=18, edgecolors="k", linewidths=0.3)
    for n in _representatives(N):
        # Each curve only where its tokens D = C / 6n stay near the data's: far outside, a
        # huge model on a few tokens shoots off the top of the plot and hides the data.
        tokens = grid / (6 * n)
        near = (tokens >= D.min() / 3) & (tokens <= D.max() * 3)
        ax.plot(grid[near], law.predict(n, tokens[near]), color=points.cmap(norm(n)), lw=1)
    n_opt, d_opt = law.compute_optimal(grid)
    ax.plot(grid, law.predict(n_opt, d_opt), "k--", lw=1.5, label="compute-optimal N, D")
    ax.figure.colorbar(points, ax=ax, label="parameters N")
    ax.legend(loc="upper right")
    ax.set_title("data and fitted L(N, C/6N) per model size", fontsize=10)


def _draw_overtraining(ax, law, N, D, loss):
    compute, multiplier = 6 * N * D, D / N
    grid = _compute_axis(ax, compute)
    norm = _log_norm(multiplier)
    points = ax.scatter(compute, loss, c=multiplier, norm=norm, cmap=_cmap("plasma"), s=24, edgecolors="k",
                        linewidths=0.3)
    for m in _representatives(multiplier):
        ax.plot(grid, law.predict_from_compute(grid, m), color=points.cmap(norm(m)), lw=1, label=f"M = {m:.3g}")
    ax.figure.colorbar(points, ax=ax, label="token multiplier M = D/N")
    ax.legend(loc="upper right")
    ax.set_title("data and fitted L(C, M) per token multiplier", fontsize=10)


def _draw_curve(ax, law, x, y, grid):
    ax.scatter(x, y, s=20, color="tab:blue", edgecolors="k", linewidths=0.3, label="data", zorder=3)
    ax.plot(grid, law.predict(grid), color="tab:orange", lw=1.5, label="fit")
    if law.boot_params is not None and len(law.boot_params):
        low, high = law.predict_interval(grid)
        ax.fill_between(grid, low, high, color="tab:orange", alpha=0.2, label=f"{law.confidence:.0%} bootstrap band")


def _draw_downstream(ax, law, loss, err):
    span = loss.max() - loss.min()
    _draw_curve(ax, law, loss, err, np.linspace(loss.min() - 0.1 * span, loss.max() + 0.1 * span, 200))
    ax.set_xlabel("loss")
    ax.set_ylabel("average top-1 error")
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title("data and fitted Err(L)", fontsize=10)


def _draw_shape(ax, law, compute, loss):
    grid = _compute_axis(ax, compute, "training compute C [FLOPs]")
    _draw_curve(ax, law, compute, loss, grid)
    ax.axhline(law.c, color="grey", ls=":", lw=1, label=f"asymptote c = {law.c:.4g}")
    ax.legend()
    ax.set_title("data and fitted E(C)", fontsize=10)


def _parity(ax, predicted, observed, name):
    low, high = min(predicted.min(), observed.min()), max(predicted.max(), observed.max())
    pad = 0.03 * (high - low)
    ax.plot([low - pad, high + pad], [low - pad, high + pad], color="grey", lw=1, label="y = x")
    ax.scatter(observed, predicted, s=18, color="tab:blue", edgecolors="k", linewidths=0.3)
    rel = np.sqrt(np.mean((predicted / observed - 1) ** 2))
    ax.set_xlabel(f"observed {name}")
    ax.set_ylabel(f"predicted {name}")
    ax.set_title(f"predicted vs observed (RMS relative error {rel:.2%})", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.set_aspect("equal", adjustable="datalim")


_DRAW = {"chinchilla": _draw_chinchilla, "overtraining": _draw_overtraining, "downstream": _draw_downstream,
         "shape": _draw_shape}
