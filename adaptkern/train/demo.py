"""``adaptkern demo``, the main job: sweep static shapes, fit one scaling law per shape,
plan the compute-optimal shape schedule, train adaptively along it, and report the exact
FLOPs every static shape and the adaptive run needed to reach a target loss.

Steps (each resumable with ``resume=True``):
1. Sweep: one run per static shape, same budget and the same log-spaced eval points
   (``<out>/sweep/<shape>.json`` per finished run).
2. Fit E_s(C) = c + a (C + d)^-b per shape (``ak.scaling.fit_shape_law``) to the eval
   curve: held-out loss vs exact training FLOPs.
3. Target loss by ``adaptive.TARGET_RULE`` (or given), plan with
   ``ak.schedule.optimal_schedule``.
4. Adaptive run (``<out>/adaptive``): fresh model, same data, hyper-parameters and eval
   points, switching shape when its compute reaches each planned boundary, stopping at the
   first eval at or below the target (or at the budget).
5. FLOPs to target = first crossing of the eval curve, interpolated in log-compute; the
   verdict compares the adaptive run with the best static shape on these measured numbers.
Writes ``<out>/summary.json`` and ``<out>/demo.png``; returns the summary.
"""

import os
import time

import numpy as np
import torch

from . import distributed
from .adaptive import TARGET_RULE, choose_target, curve, first_crossing, fit_laws, plan_schedule
from .data import ImageFolderData, SyntheticCopyText, SyntheticGlyphs, TextFileData
from .io import write_json
from .loop import RunConfig, train_run
from .plot import plot_demo
from .report import compare, table
from .schedule import ShapeSchedule
from .sweep import run_sweep
from .tasks import LMTask, VisionTask

# Sized for 2 CPU cores and a few minutes in all (see the README for measured times); on a
# GPU the same command runs the same sizes, just faster.
PRESETS = {
    "vit": {"shapes": ["p16", "p8", "p4"], "budget": 4e11, "batch_size": 32, "num_eval": 1024, "n_evals": 16,
            "first_eval_fraction": 0.01, "lr": 2e-3},
    "lm": {"shapes": ["ctx16", "ctx64", "ctx256"], "budget": 4e11, "tokens_per_batch": 1024, "num_eval": 8192,
           "n_evals": 16, "first_eval_fraction": 0.01, "lr": 3e-3},
}
# --fast (CI): tiny budgets and held-out sets; proves the pipeline, not the science.
FAST = {
    "vit": {"budget": 1e10, "batch_size": 16, "num_eval": 128, "n_evals": 6, "first_eval_fraction": 0.05},
    "lm": {"budget": 1e10, "tokens_per_batch": 512, "num_eval": 1024, "n_evals": 6, "first_eval_fraction": 0.05},
}


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def make_task(model: str, settings: dict, *, images=None, text=None, seed: int = 0):
    if model == "vit":
        if text is not None:
            raise ValueError("--text goes with --model lm, not --model vit")
        data = (ImageFolderData(images, seed=seed) if images else
                SyntheticGlyphs(seed=seed, num_eval=settings["num_eval"]))
        return VisionTask(data, batch_size=settings["batch_size"])
    if model == "lm":
        if images is not None:
            raise ValueError("--images goes with --model vit, not --model lm")
        data = TextFileData(text, seed=seed) if text else SyntheticCopyText(seed=seed)
        return LMTask(data, tokens_per_batch=settings["tokens_per_batch"], eval_tokens=settings["num_eval"])
    raise ValueError(f"--model must be 'vit' or 'lm', got {model!r}")


def settings_for(model: str, *, fast: bool = False, **overrides) -> dict:
    if model not in PRESETS:
        raise ValueError(f"--model must be one of {sorted(PRESETS)}, got {model!r}")
    settings = dict(PRESETS[model], **(FAST[model] if fast else {}))
    settings.update({k: v for k, v in overrides.items() if v is not None})
    if settings["budget"] <= 0:
        raise ValueError(f"--budget must be > 0 FLOPs, got {settings['budget']}")
    if settings["n_evals"] < 2:  # a curve (and a law, a target, a first crossing) needs two points
        raise ValueError(f"--evals must be at least 2, got {settings['n_evals']}")
    return settings


def run_demo(model: str = "vit", *, images=None, text=None, shapes=None, budget=None, device=None,
             out="adaptkern-demo", fast: bool = False, seed: int = 0, resume: bool = False, target_loss=None,
             batch_size=None, tokens_per_batch=None, evals=None, progress: bool = True, log=print) -> dict:
    """Run the whole demo (see the module docstring); returns the summary dict."""
    started = time.perf_counter()
    settings = settings_for(model, fast=fast, shapes=shapes, budget=budget, batch_size=batch_size,
                            tokens_per_batch=tokens_per_batch, n_evals=evals)
    task = make_task(model, settings, images=images, text=text, seed=seed)
    names = [task.short_name(s) for s in settings["shapes"]]
    if len(set(names)) != len(names) or len(names) < 2:
        raise ValueError(f"--shapes needs at least two distinct shapes, got {settings['shapes']}")
    device = torch.device(device or default_device())
    main = distributed.is_main()
    say = log if main else (lambda *a, **k: None)
    config = RunConfig(budget=int(settings["budget"]), seed=seed, lr=settings["lr"], n_evals=settings["n_evals"],
                       first_eval_fraction=settings["first_eval_fraction"], progress=progress and main)
    say(f"adaptkern demo: {task.kind} on {task.describe()['data']}, shapes {' '.join(names)}, "
        f"{config.budget:.3g} training FLOPs per static run, device {device}, out {out}")

    records = run_sweep(task, names, config, os.path.join(out, "sweep"), device=device, resume=resume)
    laws, fit_errors = fit_laws(records)
    target = float(target_loss) if target_loss is not None else choose_target(records)
    rule = "given with --target-loss" if target_loss is not None else TARGET_RULE
    summary = {"task": task.describe(), "shapes": names, "budget": config.budget, "device": str(device),
               "world_size": distributed.world_size(), "target_loss": target, "target_rule": rule,
               "laws": {s: law.to_dict() for s, law in laws.items()}, "fit_errors": fit_errors, "static": {}}
    static_crossings, static_how = {}, {}
    for shape, record in records.items():
        record["crossing"], how = first_crossing(record["evals"], target)
        static_crossings[shape], static_how[shape] = record["crossing"], how
        law = laws.get(shape)
        summary["static"][shape] = {
            "flops_to_target": record["crossing"], "crossing": how,
            "law_flops_to_target": float(law.inverse(target)) if law is not None else None,
            "final_loss": curve(record["evals"])[1][-1], "steps": record["steps"], "compute": record["compute"],
            "seconds": record["seconds"], "evals": record["evals"]}

    adaptive = None
    try:
        plan = plan_schedule(laws, target) if laws else None
        if plan is None:
            raise ValueError("no law could be fitted")
    except ValueError as error:
        plan = None
        summary["plan_error"] = str(error)
    if plan is not None:
        schedule = ShapeSchedule.from_plan(plan)
        summary["plan"] = plan.to_dict()
        run_config = RunConfig(**{**vars(config), "stop_at_loss": target,
                                  "progress_desc": "adaptive " + "->".join(schedule.shapes)})
        result = train_run(task, schedule, run_config, os.path.join(out, "adaptive"), device=device, resume=resume)
        crossing, how = first_crossing(result.evals, target)
        switches = [(end, nxt) for (_, end), (nxt, _) in zip(schedule.segments, schedule.segments[1:])
                    if end <= result.compute]
        adaptive = {"evals": result.evals, "switches": switches, "crossing": crossing, "how": how}
        summary["adaptive"] = {
            "flops_to_target": crossing, "crossing": how, "planned_flops": plan.total_compute,
            "final_loss": curve(result.evals)[1][-1] if result.evals else None, "steps": result.steps,
            "compute": result.compute, "seconds": result.seconds, "stopped": result.stopped,
            "schedule": [{"shape": s, "compute_end": None if np.isinf(e) else e} for s, e in schedule.segments],
            "switches": switches, "evals": result.evals, "ledger": result.ledger.to_dict()}
    summary["verdict"] = compare(static_crossings, adaptive["crossing"] if adaptive else None, static_how=static_how,
                                 adaptive_how=adaptive["how"] if adaptive else None,
                                 no_adaptive_run=summary.get("plan_error"))
    summary["seconds"] = time.perf_counter() - started
    if main:
        summary_path = os.path.join(out, "summary.json")
        summary["files"] = {"summary": summary_path,
                            "plot": plot_demo(records, laws, adaptive, target, os.path.join(out, "demo.png"),
                                              title=_title(summary))}
        write_json(summary_path, summary)
    say("")
    say(table(summary))
    say(f"\nwrote {os.path.join(out, 'summary.json')} and {os.path.join(out, 'demo.png')} "
        f"({summary['seconds']:.0f} s)")
    return summary


def _title(summary) -> str:
    v = summary["verdict"]
    if v["savings"] is None:
        return "adaptive vs static: " + v["claim"][:90]
    change = f"{100 * v['savings']:.1f}% fewer" if v["savings"] >= 0 else f"{-100 * v['savings']:.1f}% more"
    return (f"exact FLOPs to loss {summary['target_loss']:.3f}: adaptive {v['adaptive_flops']:.3g} vs best static "
            f"{v['best_static_shape']} {v['best_static_flops']:.3g} ({change})")
