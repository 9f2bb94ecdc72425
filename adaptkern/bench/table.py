"""Markdown and plain-text tables of a benchmark run, and the latest results file, for the
README (``adaptkern bench --table [FILE]``) and the console."""

import glob
import json
import os

from .runner import validate

RESULTS_DIR = os.path.join("benchmarks", "results")


def _num(value, fmt=None):
    """3 significant digits below 100 (CPU throughputs are small), whole numbers above."""
    if value is None:
        return "-"
    if fmt is not None:
        return format(value, fmt)
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _peak(row):
    parts = [f"{row[k]:.0%} {what}" for k, what in (("frac_peak_flops", "FLOP"), ("frac_peak_bw", "BW"))
             if row.get(k) is not None]
    return " / ".join(parts) or "-"


def _versus(row):
    if row["ours"]:
        return ""
    ratio = row.get("adaptkern_speedup")
    return "-" if ratio is None else f"{ratio:.2f}x"


def _label(row):
    params = row.get("params") or {}
    return f"{row['case']} (D={params['head_dim']})" if "head_dim" in params else row["case"]


def load(path) -> dict:
    with open(path) as f:
        return validate(json.load(f))


def latest(results_dir=RESULTS_DIR, *, device_type="cuda"):
    """(path, data) of the newest valid results file of ``device_type`` in ``results_dir`` or
    its subfolders (gpu_check.sh's), by the date inside; (None, None) if there is none."""
    best = (None, None)
    for path in sorted(glob.glob(os.path.join(results_dir, "**", "*.json"), recursive=True)):
        try:
            data = load(path)
        except (OSError, ValueError):
            continue  # other JSON files (per-op script outputs) live there too
        if data["meta"]["device_type"] == device_type and (best[1] is None or
                                                            data["meta"]["date"] > best[1]["meta"]["date"]):
            best = (path, data)
    return best


def header(data: dict) -> str:
    m, p = data["meta"], data["peaks"]
    versions = ", ".join(f"{k} {m[k]}" for k in ("torch", "triton", "cuda", "driver") if m.get(k))
    commit = (m.get("git_commit") or "unknown")[:10] + (" (uncommitted changes)" if m.get("git_dirty") else "")
    peaks = ", ".join([f"{d} matmul {_num(v)} TFLOP/s" for d, v in (p.get("matmul_tflops") or {}).items()] +
                      ([f"copy {_num(p['copy_gbps'])} GB/s"] if p.get("copy_gbps") else []))
    return (f"**{m['device']}** ({m['device_type']}), {versions}; adaptkern {m.get('adaptkern')} at `{commit}`; "
            f"{m['date']}.  \nCommand: `{m['command']}`.  \nMeasured peaks: {peaks or 'none'}.")


def markdown(data: dict) -> str:
    """The run as a markdown section: provenance, then one table row per (case, mode, impl)."""
    lines = [header(data), ""]
    if data["meta"]["device_type"] != "cuda":
        lines += ["> CPU run: these are not GPU figures (the CPU path is adaptkern's cpu backend: PyTorch's CPU "
                  "kernels, composed).", ""]
    lines += ["| op | case | mode | dtype | implementation | ms (median) | TFLOP/s | GB/s | of peak | "
              "time / adaptkern | note |", "|---|---|---|---|---|---:|---:|---:|---:|---:|---|"]
    for r in data["rows"]:
        impl = f"**{r['impl']}**" if r["ours"] else r["impl"]
        lines.append(f"| {r['op']} | {_label(r)} | {r['mode']} | {r['dtype']} | {impl} | {_num(r['ms'], '.3f')} | "
                     f"{_num(r['tflops'])} | {_num(r['gbps'])} | {_peak(r)} | {_versus(r)} | "
                     f"{(r.get('note') or '').replace('|', '/')} |")
    for error in data["errors"]:
        lines.append(f"\n**Error:** {error}")
    return "\n".join(lines)


def text(data: dict) -> str:
    """The run for the console."""
    rows = [["op", "case", "mode", "dtype", "impl", "ms", "TFLOP/s", "GB/s", "of peak", "vs ours", "note"]]
    for r in data["rows"]:
        rows.append([r["op"], _label(r), r["mode"], r["dtype"], r["impl"] + (" *" if r["ours"] else ""),
                     _num(r["ms"], ".3f"), _num(r["tflops"]), _num(r["gbps"]), _peak(r), _versus(r),
                     (r.get("note") or "")[:60]])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    out = ["  ".join(c.ljust(w) if i in (0, 1, 2, 3, 4, 10) else c.rjust(w) for i, (c, w) in
                     enumerate(zip(row, widths))).rstrip() for row in rows]
    out.append("* adaptkern; 'vs ours' = that implementation's time / adaptkern's (> 1: adaptkern is faster)")
    return "\n".join(out)
