"""PNG of a benchmark run: one panel per op, achieved throughput (exact-FLOP TFLOP/s, or
GB/s for the memory-bound position-embedding op) per implementation, grouped by case, mode
and dtype, with the device's measured peak as a dashed line."""

# Memory-bound ops are plotted in GB/s against the copy peak; the rest in TFLOP/s.
METRIC = {"interp_pos_embed": "gbps"}


def _legend(row) -> str:
    return row["impl"] + (" (adaptkern)" if row["ours"] and "adaptkern" not in row["impl"] else "")


def plot_results(data: dict, path) -> str:
    """Write the PNG of a results dict (as ``adaptkern bench`` writes it) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = list(dict.fromkeys(r["op"] for r in data["rows"]))
    if not ops:
        raise ValueError("adaptkern bench: no rows to plot")
    fig, axes = plt.subplots(len(ops), 1, figsize=(12, 3.6 * len(ops)), squeeze=False)
    meta, peaks = data["meta"], data["peaks"]
    for ax, op in zip(axes[:, 0], ops):
        rows = [r for r in data["rows"] if r["op"] == op]
        metric = METRIC.get(op, "tflops")
        groups = list(dict.fromkeys((r["case"], r["mode"], r["dtype"]) for r in rows))
        timed = [r for r in rows if r[metric]]
        colors = {impl: f"C{i % 10}" for i, impl in enumerate(dict.fromkeys(r["impl"] for r in timed))}
        labelled = set()
        for i, group in enumerate(groups):
            bars = [r for r in timed if (r["case"], r["mode"], r["dtype"]) == group]
            width = 0.8 / max(len(bars), 1)
            for j, r in enumerate(bars):
                ax.bar(i + (j - (len(bars) - 1) / 2) * width, r[metric], width=width, color=colors[r["impl"]],
                       hatch="" if r["ours"] else "//", edgecolor="white",
                       label=None if r["impl"] in labelled else _legend(r))
                labelled.add(r["impl"])
        skipped = sorted({f"{r['impl']}: {r['note']}" for r in rows if not r[metric] and r.get("note")})
        if skipped:
            ax.text(0.0, -0.32, "not timed: " + "; ".join(skipped), transform=ax.transAxes, fontsize=7,
                    va="top", wrap=True)
        if metric == "gbps" and peaks.get("copy_gbps"):
            ax.axhline(peaks["copy_gbps"], ls="--", c="k", lw=1, label="measured copy peak")
        elif metric == "tflops":
            for dtype, peak in sorted((peaks.get("matmul_tflops") or {}).items()):
                if any(g[2] == dtype for g in groups):
                    ax.axhline(peak, ls="--", lw=1, c="k" if dtype == "bfloat16" else "grey",
                               label=f"measured {dtype} matmul peak")
        ax.set_xticks(range(len(groups)), [f"{c}\n{m} {d}" for c, m, d in groups], fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("GB/s" if metric == "gbps" else "TFLOP/s (exact FLOPs)")
        ax.set_title(op)
        ax.grid(axis="y", alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.suptitle(f"adaptkern bench on {meta['device']} ({meta['date'][:10]}, torch {meta['torch']}"
                 f"{', quick' if meta.get('quick') else ''}); hatched: peers", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
