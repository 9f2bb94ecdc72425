"""The demo's report: a JSON-ready summary and the printed table."""

import math



def _fmt(x, spec=".3e"):
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def _pct(x):
    return "-" if x is None else f"{100 * x:+.1f}%"


def verdict(summary: dict) -> dict:
    """The headline verdict from the measured numbers alone: savings at the headline target
    (mean, min, max over seeds), the plan's predicted FLOPs against the measured mean, the
    oracle's best single switch, and a claim in words, whichever way the numbers point."""
    if "plan" not in summary:
        return {"headline_target": None, "savings_mean": None, "savings_min": None, "savings_max": None,
                "claim": f"no adaptive run: {summary.get('plan_error', 'no plan')}"}
    head = next(t for t in summary["targets"] if t["headline"])
    sv = head["savings"]
    measured = [a for a in head["adaptive_flops"] if a is not None]
    predicted = summary["plan"]["predicted_flops"]
    out = {"headline_target": head["loss"], "best_static_shape": head["best_static_shape"],
           "savings_mean": sv["mean"], "savings_min": sv["min"], "savings_max": sv["max"], "seeds_compared": sv["n"],
           "savings_per_seed": head["savings_per_seed"], "predicted_flops": predicted,
           "measured_flops_mean": float(sum(measured) / len(measured)) if measured else None}
    out["prediction_error"] = (None if not measured else out["measured_flops_mean"] / predicted - 1.0)
    n_seeds = len(summary["seeds"])
    if sv["n"] == 0:
        missing = "the adaptive run" if not measured else f"the best static shape {head['best_static_shape']}"
        out["claim"] = (f"no saving can be measured at the headline target loss {head['loss']:.4f}: {missing} did not "
                        f"reach it")
    else:
        amount = ("as many exact training FLOPs as" if sv["mean"] == 0 else
                  f"{100 * abs(sv['mean']):.1f}% {'fewer' if sv['mean'] > 0 else 'MORE'} exact training FLOPs than")
        out["claim"] = (f"at the headline target loss {head['loss']:.4f} the adaptive run needed {amount} "
                        f"the best tuned static shape "
                        f"{head['best_static_shape']} (mean over {sv['n']} of {n_seeds} seeds; per seed "
                        f"{', '.join(_pct(x) for x in head['savings_per_seed'])} saved); the plan predicted "
                        f"{predicted:.3g} FLOPs, measured {out['measured_flops_mean']:.3g} "
                        f"({_pct(out['prediction_error'])})")
        if sv["mean"] <= 0:
            out["claim"] = "the adaptive run did NOT beat the best tuned static shape: " + out["claim"]
    free = head.get("free_switch", {}).get("savings", {})
    out["free_switch_savings"] = free or None
    if free.get("mean") is not None:
        out["claim"] += (f"; a cost-free switch with the loss as the state could have saved {_pct(free['mean'])} "
                         f"[{_pct(free['min'])}, {_pct(free['max'])}] on the same static curves")
    oracle = summary.get("oracle", {}).get("best_savings")
    if oracle is not None:
        out["claim"] += f"; best single switch (oracle, seed {summary['oracle']['seed']}): {_pct(oracle)} saved"
    return out


def table(summary: dict) -> str:
    """The printed report of a demo summary."""
    lines = []
    lines.append("tuned static settings (tuning seed %d):" % summary["tune_seed"])
    for shape, b in summary["baselines"].items():
        tried = ", ".join(f"{next(iter(t.values()))}: final {t['final_loss']:.4f}" for t in b["tried"])
        lines.append(f"  {shape:<7} chosen {b['chosen']}   tried {tried}")
    lines.append("laws (anchored at the step-0 loss; fitted after the warmup; the plan follows the measured evals "
                 "inside the warmup):")
    for shape, law in summary["laws"].items():
        params = ", ".join(f"{k}={v:.3g}" for k, v in (law["params"] or {}).items())
        rms = "-" if law["rms_log_residual"] is None else f"{law['rms_log_residual']:.3f}"
        note = f"  [{law['problem']}]" if law["problem"] else ""
        early = law.get("transient_points")
        early = f", {early} warmup evals" if early else ""
        lines.append(f"  {shape:<7} {params}  rms log residual {rms}  used: {law['used']}{early}{note}")
    if summary.get("switch_jumps_note"):
        lines.append(f"switch jumps late in the tuning runs: {summary['switch_jumps_note']}")
    if summary.get("switch_jumps"):
        lines.append("switch jumps measured late in the tuning runs (same model, other shape): " + ", ".join(
            f"{k} {v:+.3f}" for k, v in summary["switch_jumps"].items()))
    probed = summary.get("switch_probes") or {}
    probes = probed.get("tried")
    if probes:
        lines.append("effective jumps given to the planner (switch probes, tuning seed; the jump with which the laws "
                     f"predict the probe's FLOPs to the headline target {probes[0]['target']:.4f}):")
        for p in probes:
            reached = "not reached" if p["flops_to_target"] is None else f"{p['flops_to_target']:.3g} FLOPs"
            note = "" if p["how"] == "measured" else f" [{p['how']}]"
            jump = "-" if p["effective_jump"] is None else f"{p['effective_jump']:+.3f}"
            lines.append(f"  {p['from']}->{p['to']} at {p['switch_flops']:.3g} (loss {p['switch_loss']:.3f}): target "
                         f"{reached}, jump {jump}{note}")
    raw = summary.get("switch_jumps") or {}
    for p in probed.get("not_probed") or []:
        pair = f"{p['from']}->{p['to']}"
        uses = f"its raw jump {raw[pair]:+.3f}" if pair in raw else "no jump (0)"
        lines.append(f"  {pair} not probed ({p['why']}): the planner uses {uses}")
    plan = summary.get("plan")
    if plan:
        lines.append(f"plan ({plan['trigger']} trigger): " + "  ->  ".join(
            f"{seg['shape']} to loss {seg['loss_end']:.3f} ({seg['compute']:.3g} FLOPs)" for seg in plan["segments"]))
    lines.append("")
    head = f"{'target':>8} {'best static':>11} {'static FLOPs (mean)':>20} {'adaptive (mean)':>16} " \
           f"{'savings mean [min, max]':>26} {'per seed':>24} {'eval gap':>8} {'free switch':>11}"
    lines += [head, "-" * len(head)]
    for t in summary.get("targets", []):
        st = [v for v in t["static_flops"][t["best_static_shape"]] if v is not None]
        ad = [v for v in t["adaptive_flops"] if v is not None]
        sv = t["savings"]
        span = "-" if sv["mean"] is None else f"{_pct(sv['mean'])} [{_pct(sv['min'])}, {_pct(sv['max'])}]"
        gap = "-" if t["max_eval_ratio_at_crossings"] is None else f"{t['max_eval_ratio_at_crossings']:.2f}x"
        lines.append(f"{t['loss']:>8.4f}{'*' if t['headline'] else ' '}{t['best_static_shape']:>10} "
                     f"{_fmt(sum(st) / len(st) if st else None):>20} {_fmt(sum(ad) / len(ad) if ad else None):>16} "
                     f"{span:>26} {' '.join(_pct(x) for x in t['savings_per_seed']):>24} {gap:>8} "
                     f"{_pct((t.get('free_switch') or {}).get('savings', {}).get('mean')):>11}")
    lines.append("(* headline; savings = 1 - adaptive / best static per seed, exact training FLOPs to the first "
                 "crossing, interpolated between evals; free switch: mean over seeds of the saving of the best "
                 "single switch if it cost nothing and the loss were the whole state, from the static curves alone)")
    ex = summary.get("excluded_flops")
    if ex:
        lines.append(f"not in the counts above: evals {ex['eval']:.3g} FLOPs, sweeps {ex['sweep']:.3g} FLOPs "
                     f"(tuning {ex['sweep_tuning']:.3g}, switch probes {ex.get('sweep_probes', 0):.3g}, oracle "
                     f"{ex['sweep_oracle']:.3g})")
    lines += ["", f"verdict: {summary['verdict']['claim']}"]
    return "\n".join(lines)
