"""``adaptkern demo``, the main job: does switching shape at the planned moment save
training compute against the best *tuned* static shape, over several seeds?

Protocol (every step resumable with ``resume=True``; what each step spends is booked):
1. Tune (own seed ``tune_seed``, never one of the measured seeds): every static shape on the
   same budget over a grid of batch sizes (``grid``: tokens per step, so the images per step
   of a shape are tokens / patches per image); the chosen setting of a shape is the one with
   the lowest final loss (mean of its last two evals). A best setting at the edge of the
   grid means the optimum may lie beyond it: the grid is extended past that edge (halving
   or doubling, at most ``grid_extend`` times per shape) until the best is inside. These
   runs also give the laws, the targets and the switch jumps: everything the plan needs is
   fixed before any measured run.
2. Laws: one per shape, anchored at the run's step-0 loss, fitted after the transient
   (``laws.TRANSIENT_RULE``); inside the transient the plan follows the run's measured evals
   (``laws.JoinedCurve``); a law with a parameter at a bound falls back to the measured
   curve (``laws.fit_laws``).
3. Targets: ``adaptive.TARGET_RULE`` (five losses, the middle one the headline).
4. Switch jumps: at the tuning runs' late evals the same model is also evaluated at the
   other shapes; the median rise is the raw jump (reported; the planner's jump for a pair
   without probes). Then switch probes (``adaptive.PROBE_RULE``, the tuning seed): runs
   that switch a -> b at a few points on a's way to the headline target; each gives
   the *effective* jump at its switch loss (``adaptive.effective_jump``: the one with which
   the laws predict the probe's FLOPs to the headline target), and the planner gets them
   as a function of the switch loss (``adaptive.JumpCurve``; a later switch than any probe
   is charged the raw jump, measured late; the LM, whose raw jumps are 0 by construction
   since every context is scored at the longest one, gets the latest probe's jump there, or
   none if it was negative).
   A model recovers from a switch faster than the raw jump implies.
5. Plan: ``ak.schedule.optimal_schedule`` from the measured step-0 loss to the lowest
   target, switches only forward in the shape order, jumps charged.
6. Measured runs, for every seed: each static shape at its tuned setting, and the adaptive
   run (each segment at its shape's tuned setting), switching when its smoothed training
   loss reaches the planned loss level (``--switch-on compute``: at the planned compute).
   Evals are log-spaced, and at most ``dense_ratio`` apart in compute once the smoothed
   training loss is halfway from the step-0 loss to the highest target.
7. Oracle: on the first seed, single switches from the plan's first shape to its last (if
   the plan does not switch: to the later shape whose tuning run ended lowest) at several
   compute points (10% to 60% of the best static shape's FLOPs to the headline target);
   the best of them is what a perfect single-switch plan would have achieved.
   Free switch (no runs): per seed and target, the best single switch on the static curves
   if switching cost nothing and the loss were the whole state (``adaptive.FREE_SWITCH_RULE``):
   how much room the shapes' own learning curves leave for any switching schedule.
8. Report: ``<out>/summary.json`` (the keys of DESIGN.md's "main job's report"), the
   printed table and ``<out>/demo.png``.
"""

import concurrent.futures
import multiprocessing
import os
import signal
import sys
import time

import numpy as np
import torch

from .. import schedule as ak_schedule
from . import distributed
from .adaptive import (FREE_SWITCH_RULE, PROBE_RULE, TARGET_RULE, JumpCurve, choose_targets, effective_jump,
                       final_loss, first_crossing, probe_switches, spread, switch_jumps, target_entry)
from .data import ImageFolderData, SyntheticCopyText, SyntheticScales, TextFileData
from .io import read_json, write_json
from .laws import fit_laws
from .loop import RunConfig, run_identity, train_run
from .plot import plot_demo
from .report import table, verdict
from .schedule import ShapeSchedule
from .sweep import run_record
from .tasks import LMTask, VisionTask

# Sized for 2 CPU cores (see the README for measured times); a GPU runs the same sizes.
PRESETS = {
    "vit": {"shapes": ["p16", "p8", "p4"], "budget": 1.5e11, "grid": [256, 512, 1024], "grid_extend": 2,
            "num_eval": 512, "n_evals": 10, "first_eval_fraction": 0.02, "lr": 2e-3, "seeds": 3, "oracle_points": 4,
            "probe_points": 4, "dense_ratio": 1.1, "warmup_steps": 30},
    "lm": {"shapes": ["ctx16", "ctx64", "ctx256"], "budget": 1.5e11, "grid": [512, 1024, 2048], "grid_extend": 2,
           "num_eval": 8192, "n_evals": 10, "first_eval_fraction": 0.02, "lr": 3e-3, "seeds": 3, "oracle_points": 4,
           "probe_points": 4, "dense_ratio": 1.1, "warmup_steps": 30},
}
# --fast (CI): tiny budgets, one seed, two settings per shape: proves the pipeline, not the science.
FAST = {
    "vit": {"budget": 5e9, "grid": [256, 1024], "grid_extend": 0, "num_eval": 64, "n_evals": 6,
            "first_eval_fraction": 0.05, "seeds": 1, "oracle_points": 2, "probe_points": 1, "dense_ratio": 1.25,
            "warmup_steps": 3},
    "lm": {"budget": 5e9, "grid": [512, 1024], "grid_extend": 0, "num_eval": 1024, "n_evals": 6,
           "first_eval_fraction": 0.05, "seeds": 1, "oracle_points": 2, "probe_points": 1, "dense_ratio": 1.25,
           "warmup_steps": 3},
}
TUNE_SEED_OFFSET = 1000  # the tuning seed is seed + 1000: never one of the measured seeds


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def make_task(model: str, settings: dict, *, images=None, text=None, seed: int = 0, per_shape=None):
    """The task of ``model`` on the embedded data (or ``images`` / ``text``); ``per_shape``:
    {shape: images per step (vit) / tokens per step (lm)}, else the settings' batch."""
    if model == "vit":
        if text is not None:
            raise ValueError("--text goes with --model lm, not --model vit")
        data = (ImageFolderData(images, seed=seed) if images else
                SyntheticScales(seed=seed, num_eval=settings["num_eval"]))
        return VisionTask(data, batch_size=per_shape or settings.get("batch_size") or 32)
    if model == "lm":
        if images is not None:
            raise ValueError("--images goes with --model vit, not --model lm")
        data = TextFileData(text, seed=seed) if text else SyntheticCopyText(seed=seed)
        return LMTask(data, tokens_per_batch=per_shape or settings.get("tokens_per_batch") or 1024,
                      eval_tokens=settings["num_eval"])
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
    if int(settings["seeds"]) < 1:
        raise ValueError(f"--seeds must be at least 1, got {settings['seeds']}")
    for key, flag in (("probe_points", "--probes"), ("oracle_points", "--oracle-points")):
        if int(settings[key]) < 0:
            raise ValueError(f"{flag} must be at least 0, got {settings[key]}")
    return settings


def _next_grid_entry(tried, smallest: int):
    """The entry to try after ``tried`` [(entry, final loss)], or None: while the best entry
    is the smallest or largest tried, one more beyond it (half the smallest, not below
    ``smallest``, or twice the largest): a best setting at the grid's edge is not known to
    be tuned."""
    values = sorted(g for g, _ in tried)
    best = min(tried, key=lambda t: t[1])[0]
    if best == values[0] and best // 2 >= smallest:
        return best // 2
    if best == values[-1] and len(values) > 1:
        return best * 2
    return None


def tune_grids(grids: dict, final_losses_of, extend: int = 0, smallest=None) -> dict:
    """Try every entry of every grid ({key: positive ints}) and return {key: [(entry, final
    loss)]} in the order tried. ``final_losses_of([(key, entry), ...])`` runs one round (the
    runs may train at once) and returns their final losses in order: first every grid, then,
    at most ``extend`` times, one more entry for each key whose best is at an edge of what it
    tried (``smallest``: {key: the least entry allowed}, default 1)."""
    tried = {key: [] for key in grids}

    def tune_round(entries):
        for (key, entry), loss in zip(entries, final_losses_of(entries)):
            tried[key].append((entry, loss))

    rounds = []
    for key, grid in grids.items():
        grid = sorted({int(g) for g in grid})
        if not grid or grid[0] < 1:
            raise ValueError(f"grid: expected positive tokens per step, got {grid}")
        rounds += [(key, g) for g in grid]
    tune_round(rounds)
    for _ in range(int(extend)):
        entries = [(key, _next_grid_entry(tried[key], (smallest or {}).get(key, 1))) for key in grids]
        entries = [(key, g) for key, g in entries if g is not None]
        if not entries:
            break
        tune_round(entries)
    return tried


def _grid_setting(task, shape, per_step: int) -> int:
    """Images (vit) or tokens (lm) per step for a grid entry of ``per_step`` tokens."""
    if isinstance(task, VisionTask):
        return max(1, per_step // task.shape(shape).grid ** 2)
    return per_step


def _train(task, schedule, config, folder, device, resume, desc, identity):
    """One training run -> (its record, seconds); run in this process or in a worker."""
    started = time.perf_counter()
    result = train_run(task, schedule, config, folder, device=device, resume=resume)
    if result.stopped == "max_steps":
        raise RuntimeError(f"run {desc} paused at max_steps before its budget")
    record = run_record(desc, identity, result)
    record.update(initial=result.initial, switches=result.switches, schedule=schedule.to_dict())
    return record, time.perf_counter() - started


def _worker_init(threads):
    """A worker process of a parallel demo: ``threads`` torch threads, and (Linux) killed with
    its parent, so that a demo killed mid-sweep leaves no run writing into its folder."""
    torch.set_num_threads(threads)
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


MAX_DEFAULT_JOBS = 8  # a worker holds its own torch (about 0.45 GB RSS); a demo round has at most 12 runs


def default_jobs(device) -> int:
    """Runs at once: one per usable CPU core on CPU, at most ``MAX_DEFAULT_JOBS`` (each run on
    one thread: the models are tiny and a second thread per run mostly spins), one on a GPU
    or under torchrun."""
    if torch.device(device).type != "cpu" or distributed.world_size() > 1:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, MAX_DEFAULT_JOBS))


class _Pending:
    """One run of a :class:`_Runner`: what to train, and its record once it has one."""

    def __init__(self, label, path, check):
        self.label, self.path, self.check = label, path, check
        self.job = self.record = self.seconds = None


class _Runner:
    """Runs (or, with resume, reloads) training runs and keeps their records. ``submit``
    takes a run and ``gather`` returns the records of a list of them. With ``jobs`` > 1 the
    runs of a list train at once, at most ``jobs`` at a time, in worker processes (each on
    ``threads`` torch threads); else one by one here, each as it is submitted. A run's
    record.json is written as soon as it ends and its ``check`` runs then, so an error stops
    the demo at the first run that shows it; records and printed lines come in submission
    order, and the numbers do not depend on ``jobs``: every run seeds itself."""

    def __init__(self, device, resume, progress, say, jobs=1, threads=1):
        self.device, self.resume, self.progress, self.say = device, resume, progress, say
        self.jobs, self.threads, self.count, self._pool = int(jobs), int(threads), 0, None

    def submit(self, task, schedule, config, folder, desc, check=None) -> _Pending:
        """A run of ``task`` on ``schedule``; ``check(record)`` may raise to stop the demo."""
        self.count += 1
        run = _Pending(f"[{self.count}] {desc}", os.path.join(folder, "record.json"), check)
        identity = run_identity(task, schedule, config)
        if self.resume and os.path.exists(run.path):
            run.record = read_json(run.path)
            if run.record.get("identity") != identity:
                raise ValueError(f"{run.path} holds a run with a different configuration; use another output "
                                 "folder or run without --resume")
            self._ended(run)
            return run
        if self.jobs == 1:
            config = RunConfig(**{**vars(config), "progress": self.progress, "progress_desc": run.label})
            run.record, run.seconds = _train(task, schedule, config, folder, self.device, self.resume, desc, identity)
            self._ended(run, report=True)
            return run
        run.job = (task, schedule, RunConfig(**{**vars(config), "progress": False}), folder, str(self.device),
                   self.resume, desc, identity)
        return run

    def _ended(self, run, report=False):
        """Write a record trained here or in a worker (not one reloaded), print its line if
        ``report`` (parallel runs print theirs in submission order, see ``gather``), check it."""
        if run.seconds is not None:
            if distributed.is_main():
                write_json(run.path, run.record)
            distributed.barrier()
            if report:
                self._report(run)
        if run.check is not None:
            run.check(run.record)

    def _report(self, run):
        self.say(f"  {run.label}: {run.record['steps']} steps, {run.record['compute']:.3g} FLOPs, final eval "
                 f"{run.record['evals'][-1]['loss'] if run.record['evals'] else float('nan'):.4f}, "
                 f"{run.seconds:.0f} s")

    def gather(self, runs, what="runs") -> list:
        """The records of ``runs`` (from ``submit``), in order, training those not done yet."""
        waiting = [run for run in runs if run.record is None]
        if waiting:
            self._train_all(waiting, what)
            for run in waiting:
                self._report(run)
        return [run.record for run in runs]

    def _train_all(self, waiting, what):
        if self._pool is None:
            self._pool = concurrent.futures.ProcessPoolExecutor(
                self.jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
                initargs=(self.threads,))
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(waiting), desc=what, unit="run", leave=False, disable=None)  # a terminal only
        queue, running = list(reversed(waiting)), {}
        try:
            while queue or running:
                while queue and len(running) < self.jobs:  # never more than jobs started: a failed
                    run = queue.pop()                      # check leaves at most the others in flight
                    running[self._pool.submit(_train, *run.job)] = run
                finished, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in finished:
                    run = running.pop(future)
                    run.record, run.seconds = future.result()
                    self._ended(run)
                    if bar is not None:
                        bar.update()
        finally:
            if bar is not None:
                bar.close()

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


def _eval_flops(record) -> int:
    return sum(v for phases in record["ledger"]["flops"].values() for p, v in phases.items() if p == "eval")


def run_demo(model: str = "vit", *, images=None, text=None, shapes=None, budget=None, device=None,
             out="adaptkern-demo", fast: bool = False, seed: int = 0, resume: bool = False, target_loss=None,
             batch_size=None, tokens_per_batch=None, evals=None, seeds=None, switch_on: str = "loss",
             probes=None, oracle_points=None, progress: bool = True, log=print, jobs: int = 1,
             threads: int = 1) -> dict:
    """Run the whole demo (see the module docstring); returns the summary dict. ``probes``:
    switch probes per forward pair (0: none, the planner gets the raw jumps); ``oracle_points``:
    single switches the oracle tries (0: no oracle); None keeps the preset's. ``jobs``:
    runs trained at once, in worker processes of ``threads`` torch threads each (1: one by
    one in this process, on its threads); the numbers are the same. The workers are started
    with multiprocessing's "spawn" method, so a script calling this with ``jobs`` > 1 must
    do so under ``if __name__ == "__main__":``."""
    if int(jobs) < 1:
        raise ValueError(f"--jobs must be at least 1, got {jobs}")
    if int(jobs) > 1 and distributed.world_size() > 1:
        raise ValueError("--jobs > 1 does not go with torchrun: under torchrun every rank trains every run")
    started = time.perf_counter()
    settings = settings_for(model, fast=fast, shapes=shapes, budget=budget, n_evals=evals, seeds=seeds,
                            probe_points=probes, oracle_points=oracle_points)
    fixed = batch_size if model == "vit" else tokens_per_batch
    base = make_task(model, settings, images=images, text=text, seed=seed)
    names = [base.short_name(s) for s in settings["shapes"]]
    if len(set(names)) != len(names) or len(names) < 2:
        raise ValueError(f"--shapes needs at least two distinct shapes, got {settings['shapes']}")
    if switch_on not in ("loss", "compute"):
        raise ValueError(f"--switch-on must be 'loss' or 'compute', got {switch_on!r}")
    device = torch.device(device or default_device())
    main = distributed.is_main()
    say = log if main else (lambda *a, **k: None)
    run = _Runner(device, resume, progress and main, say, jobs=jobs, threads=threads)
    try:
        return _demo_steps(run, model, settings, fixed, base, names, images, text, device, out, seed, target_loss,
                           switch_on, say, main, started)
    finally:
        run.close()


def _demo_steps(run, model, settings, fixed, base, names, images, text, device, out, seed, target_loss, switch_on,
                say, main, started):
    """The steps of :func:`run_demo` once its arguments are checked."""
    budget = int(settings["budget"])
    seed_list = [seed + i for i in range(int(settings["seeds"]))]
    tune_seed = seed + TUNE_SEED_OFFSET
    eval_shape = names[-1] if model == "lm" else None  # LM: every context scored on the same tokens, longest context
    common = dict(budget=budget, lr=settings["lr"], n_evals=settings["n_evals"], warmup_steps=settings["warmup_steps"],
                  first_eval_fraction=settings["first_eval_fraction"], eval_shape=eval_shape)
    say(f"adaptkern demo: {base.kind} on {base.describe()['data']}, shapes {' '.join(names)}, {budget:.3g} training "
        f"FLOPs per static run, seeds {seed_list} (tuning seed {tune_seed}), device {device}, out {out}")

    # 1. tuning: every shape's grid at once, then each extension round at once
    tried = {s: [] for s in names}

    def tune_round(entries):
        pending = []
        for shape, setting in entries:
            def check(record, shape=shape, setting=setting):
                if len(record["evals"]) < 2:  # the budget is a step or two: no curve to fit, say so now
                    raise ValueError(f"--budget {budget:.3g} gives tune {shape} batch {setting} only "
                                     f"{record['steps']} training step(s) and {len(record['evals'])} eval(s); every "
                                     "run needs a curve: raise --budget (the preset is the default)")

            task = make_task(model, settings, images=images, text=text, seed=tune_seed, per_shape={shape: setting})
            config = RunConfig(seed=tune_seed, cross_eval_shapes=tuple(names), cross_eval_after=0.3, **common)
            pending.append(run.submit(task, ShapeSchedule.static(shape), config,
                                      os.path.join(out, "tune", f"{shape}-{setting}"), f"tune {shape} batch {setting}",
                                      check=check))
        records = run.gather(pending, "tuning")
        for (shape, setting), record in zip(entries, records):
            tried[shape].append({"setting": setting, "record": record})
        return [final_loss(record["evals"]) for record in records]

    say("tuning every static shape on the same budget:")
    # the grid is in tokens per step (the same for every shape); the run takes images per
    # step (vit) or tokens: extensions halve/double the setting itself
    smallest = {s: 1 if model == "vit" else base.shape(s).context for s in names}  # a window needs its context
    if fixed:
        tune_grids({s: [fixed] for s in names}, tune_round)
    else:
        tune_grids({s: {max(smallest[s], _grid_setting(base, s, g)) for g in settings["grid"]} for s in names},
                   tune_round, extend=settings.get("grid_extend", 0), smallest=smallest)
    tuned = {s: min(tried[s], key=lambda t: final_loss(t["record"]["evals"])) for s in names}
    batch_key = "batch_size" if model == "vit" else "tokens_per_step"
    per_shape = {s: tuned[s]["setting"] for s in names}
    tune_records = {s: tuned[s]["record"] for s in names}

    # 2-5. laws, targets, jumps, plan: all from the tuning runs
    laws, law_report = fit_laws(tune_records, settings["warmup_steps"])
    targets = [float(target_loss)] if target_loss is not None else choose_targets(tune_records)
    headline = targets[len(targets) // 2]  # the middle one (f = 0.20 of five)
    # The LM scores every context on the same tokens at the longest one, so a model's eval does
    # not depend on the context it trains at: its raw jump would be 0 by construction, not a
    # measurement, and is not used (a switch later than every probe gets the latest probe's
    # jump, or none if that one was negative: a gain measured early is not extrapolated).
    jumps = switch_jumps(tune_records, names) if eval_shape is None else {}
    summary = {"task": base.describe(), "shapes": names, "budget": budget, "device": str(device),
               "world_size": distributed.world_size(), "seeds": seed_list, "tune_seed": tune_seed,
               "target_rule": "given with --target-loss" if target_loss is not None else TARGET_RULE,
               "free_switch_rule": FREE_SWITCH_RULE,
               "laws": law_report, "switch_jumps": {f"{a}->{b}": j for (a, b), j in jumps.items()}}
    if eval_shape is not None:
        summary["switch_jumps_note"] = (f"no raw jumps: every shape is scored at {eval_shape}, so the same model "
                                        "scores the same at every shape; a switch later than every probe is charged "
                                        "the latest probe's jump (none if it was negative)")
    summary["baselines"] = {s: {"chosen": {batch_key: per_shape[s], "lr": settings["lr"]},
                                "tried": [{batch_key: t["setting"], "lr": settings["lr"],
                                           "final_loss": final_loss(t["record"]["evals"]),
                                           "flops_to_target": first_crossing(t["record"]["evals"], headline)[0]}
                                          for t in tried[s]]} for s in names}
    start_loss = max(r["initial"]["loss"] for r in tune_records.values())
    # dense evals once the smoothed training loss is halfway from the start to the highest
    # target: the moving average lags, so the margin must cover its lag before the first crossing
    dense_below = targets[0] + 0.5 * (start_loss - targets[0])
    lr = {s: settings["lr"] for s in names}

    # 4b. switch probes (tuning seed): the effective jump of each forward switch
    probes, skipped = _switch_probes(run, model, settings, images, text, names, laws, tune_records, per_shape, lr,
                                     common, tune_seed, dense_below, headline, budget, out)
    summary["switch_probes"] = {"rule": PROBE_RULE, "tried": [{k: v for k, v in p.items() if k != "record"}
                                                              for p in probes], "not_probed": skipped}
    plan_jumps = {k: v for k, v in jumps.items() if k[0] in laws and k[1] in laws}
    measured = {}  # (from, to) -> its probes that measured a jump
    for p in probes:
        if p["effective_jump"] is not None:
            measured.setdefault((p["from"], p["to"]), []).append(p)
    for (a, b), mine in measured.items():
        later = jumps.get((a, b))  # a switch later than every probe: the raw jump, measured late
        if later is None and eval_shape is not None:  # the LM has none: its latest probe's, never a gain
            later = max(0.0, min(mine, key=lambda p: p["switch_loss"])["effective_jump"])
        plan_jumps[a, b] = JumpCurve([p["switch_loss"] for p in mine], [p["effective_jump"] for p in mine],
                                     float(np.asarray(laws[b].predict(0.0))), later=later)
    plan = None
    try:
        if not laws:
            raise ValueError("no law could be fitted")
        # The plan starts at the lowest fresh-model loss: each law is anchored at its own
        # shape's measured step-0 loss (they differ by the initialisation's noise, ~0.01 nats),
        # and the planner follows a shape only at or below that loss. From the highest one,
        # every plan would begin on that shape, even where another is the best static run, and
        # pay for a segment the switch throws away (a plan predicted worse than static).
        plan_start = min(r["initial"]["loss"] for s, r in tune_records.items() if s in laws)
        plan = ak_schedule.optimal_schedule(laws, targets[-1], start_loss=plan_start, switch_jump=plan_jumps,
                                            order=[s for s in names if s in laws])
    except ValueError as error:
        summary["plan_error"] = str(error)
    if plan is not None:
        predicted = {t: plan.compute_at(t, laws) for t in targets}
        summary["plan"] = {**plan.to_dict(), "trigger": switch_on, "predicted_flops": predicted[headline],
                           "predicted_flops_by_target": [{"loss": t, "flops": predicted[t]} for t in targets]}

    # 6. measured runs, all at once
    static, adaptive, pending = {s: [] for s in names}, [], []
    for run_seed in seed_list:
        task = make_task(model, settings, images=images, text=text, seed=run_seed, per_shape=per_shape)
        config = RunConfig(seed=run_seed, dense_below=dense_below, dense_ratio=settings["dense_ratio"], **common)
        for shape in names:
            pending.append((static[shape], run.submit(task, ShapeSchedule.static(shape), config,
                                                      os.path.join(out, f"seed{run_seed}", shape),
                                                      f"seed {run_seed} static {shape}")))
        if plan is not None:
            schedule = ShapeSchedule.from_plan(plan, trigger=switch_on)
            config = RunConfig(**{**vars(config), "lr": lr, "stop_at_loss": targets[-1]})
            pending.append((adaptive, run.submit(task, schedule, config,
                                                 os.path.join(out, f"seed{run_seed}", "adaptive"),
                                                 f"seed {run_seed} adaptive {'->'.join(schedule.shapes)}")))
    for runs, record in zip([p[0] for p in pending], run.gather([p[1] for p in pending], "measured runs")):
        runs.append(record)

    # 7. oracle: best single switch point, first seed
    oracle = []
    if plan is not None:
        # the plan's switch; when it plans none, the plan's shape to the next shape in the order
        # whose tuning run ended lowest (where a single forward switch could pay off)
        first = plan.segments[0].shape
        later = names[names.index(first) + 1:]
        last = plan.segments[-1].shape if len(plan.segments) > 1 else (
            min(later, key=lambda s: final_loss(tune_records[s]["evals"])) if later else None)
        if last is None:  # the plan starts on the last shape of the order: nothing to switch to
            first, last = names[0], first
        entry = target_entry(headline, True, static, adaptive)
        reference = entry["static_flops"][entry["best_static_shape"]][0] or budget
        task = make_task(model, settings, images=images, text=text, seed=seed_list[0], per_shape=per_shape)
        config = RunConfig(seed=seed_list[0], dense_below=dense_below, dense_ratio=settings["dense_ratio"],
                           **{**common, "lr": lr, "stop_at_loss": headline})
        fractions = np.linspace(0.1, 0.6, int(settings["oracle_points"]))
        switches = [float(fraction * reference) for fraction in fractions]
        pending = [run.submit(task, ShapeSchedule(((first, switch), (last, None))), config,
                              os.path.join(out, "oracle", f"{first}-{last}-{fraction:.2f}"),
                              f"oracle {first}->{last} at {switch:.3g}")
                   for fraction, switch in zip(fractions, switches)]
        for switch, record in zip(switches, run.gather(pending, "oracle")):
            oracle.append({"from": first, "to": last, "switch_flops": switch, "record": record,
                           "flops_to_headline": first_crossing(record["evals"], headline)[0]})

    # 8. report
    summary["targets"] = [target_entry(t, t == headline, static, adaptive) for t in targets]
    reached = [o for o in oracle if o["flops_to_headline"] is not None]
    best_oracle = min(reached, key=lambda o: o["flops_to_headline"]) if reached else None
    head = next(t for t in summary["targets"] if t["headline"])
    static_first = head["static_flops"][head["best_static_shape"]][0]
    summary["oracle"] = {
        "seed": seed_list[0], "tried": [{k: v for k, v in o.items() if k != "record"} for o in oracle],
        "best": None if best_oracle is None else {k: v for k, v in best_oracle.items() if k != "record"},
        "best_savings": (None if best_oracle is None or not static_first
                         else 1.0 - best_oracle["flops_to_headline"] / static_first)}
    all_runs = ([t["record"] for ts in tried.values() for t in ts] + [r for rs in static.values() for r in rs]
                + adaptive + [o["record"] for o in oracle] + [p["record"] for p in probes])
    sweeps = {"sweep_tuning": int(sum(t["record"]["compute"] for ts in tried.values() for t in ts)),
              "sweep_probes": int(sum(p["record"]["compute"] for p in probes)),
              "sweep_oracle": int(sum(o["record"]["compute"] for o in oracle))}
    summary["excluded_flops"] = {"eval": int(sum(_eval_flops(r) for r in all_runs)), "sweep": sum(sweeps.values()),
                                 **sweeps}
    summary["runs"] = {"static": {s: [_brief(r) for r in rs] for s, rs in static.items()},
                       "adaptive": [_brief(r) for r in adaptive],
                       "tuning": {s: [_brief(t["record"]) for t in ts] for s, ts in tried.items()}}
    summary["eval_noise"] = {"held_out": settings["num_eval"],
                             "stderr_at_end": spread([r["evals"][-1].get("stderr") for rs in static.values()
                                                      for r in rs if r["evals"]])}
    summary["verdict"] = verdict(summary)
    summary["seconds"] = time.perf_counter() - started
    if main:
        summary_path = os.path.join(out, "summary.json")
        summary["files"] = {"summary": summary_path,
                            "plot": plot_demo(summary, laws, os.path.join(out, "demo.png"))}
        write_json(summary_path, summary)
    say("")
    say(table(summary))
    say(f"\nwrote {os.path.join(out, 'summary.json')} and {os.path.join(out, 'demo.png')} "
        f"({summary['seconds']:.0f} s)")
    return summary


def _switch_probes(run, model, settings, images, text, names, laws, tune_records, per_shape, lr, common, tune_seed,
                   dense_below, headline, budget, out):
    """Step 4b: ``adaptive.PROBE_RULE``'s runs, each with its effective jump
    (``adaptive.effective_jump``) against the planner's curves at the headline target:
    [{from, to, switch_flops, switch_loss, target, flops_to_target, effective_jump, how,
    record}], and the forward pairs not probed [{from, to, why}]: a pair whose second shape's
    curve never reaches the headline (its effective jump would be a restart whatever the
    probe measured) or with no switch point before the cap; the planner keeps their raw
    jumps. Why the headline and not the plan's (lowest) target: it is the goal's target, and
    crossings are less noisy there (a single probe's jump absorbs its run's noise; see the
    README's account of both)."""
    skipped = []
    crossings = {s: first_crossing(r["evals"], headline)[0] for s, r in tune_records.items()}
    reached = [c for c in crossings.values() if c]
    cap = int(min(budget, 2 * min(reached))) if reached else budget
    task = make_task(model, settings, images=images, text=text, seed=tune_seed, per_shape=per_shape)
    config = RunConfig(seed=tune_seed, dense_below=dense_below, dense_ratio=settings["dense_ratio"],
                       **{**common, "budget": cap, "lr": lr, "stop_at_loss": headline})
    todo, count = [], int(settings.get("probe_points", 0))
    for i, a in enumerate(names):
        if a not in laws:
            continue
        own = crossings[a] or budget
        for b in names[i + 1:]:
            if b not in laws:
                continue
            if not count:
                skipped.append({"from": a, "to": b, "why": "no probes asked for (--probes 0)"})
                continue
            if not np.isfinite(np.asarray(laws[b].inverse(headline), dtype=float)).all():
                skipped.append({"from": a, "to": b, "why": f"{b}'s curve never reaches the headline target"})
                continue
            points = [c for c in probe_switches(own, count) if c < cap]
            if not points:
                skipped.append({"from": a, "to": b, "why": "no switch point before the probes' compute cap"})
            todo += [(a, b, c) for c in points]
    pending = [run.submit(task, ShapeSchedule(((a, c), (b, None))), config,
                          os.path.join(out, "probe", f"{a}-{b}-{c:.3g}"), f"probe {a}->{b} at {c:.3g}")
               for a, b, c in todo]
    probes = []
    for (a, b, c), record in zip(todo, run.gather(pending, "switch probes")):
        crossing = first_crossing(record["evals"], headline)[0]
        loss, jump, how = effective_jump(laws[a], laws[b], c, crossing, headline)
        probes.append({"from": a, "to": b, "switch_flops": c, "switch_loss": loss, "target": headline,
                       "flops_to_target": crossing, "effective_jump": jump, "how": how, "record": record})
    return probes, skipped


def _brief(record) -> dict:
    """What the report keeps of a run: its evals, start, switches, compute and ledger."""
    return {k: record.get(k) for k in ("evals", "initial", "switches", "steps", "compute", "stopped", "seconds",
                                       "schedule", "ledger")}
