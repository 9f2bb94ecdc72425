"""The training loop: one run of a task on a shape schedule, with an exact FLOP ledger,
checkpoints and resume, a progress bar, metrics written as it goes and held-out evals at
log-spaced compute points.

Learning rate: AdamW with a short linear warmup, then CONSTANT. With a decaying schedule the
loss halfway through a run depends on the run's planned length, so a run's eval curve would
not tell what a shorter run reaches; with a constant rate every prefix of a run is itself a
valid shorter run, so one run per shape gives the whole loss-vs-compute curve at every
budget (an "anytime" curve), and an adaptive run can switch shape without restarting a
schedule. (Constant rates lose a little final loss to a cooldown; Hägele et al. 2024,
"Scaling Laws and Compute-Optimal Training Beyond Fixed Training Durations", show that a
short cooldown recovers it. Every run here is treated alike, so comparisons stay fair.)

Evals: at step 0 (the fresh model's loss, ``RunResult.initial``: the anchor of the laws and
the plan's start), at the log-spaced points of ``RunConfig.points()`` (and, when those begin
only after the warmup, from the warmup's end on at their own ratio:
``RunConfig.warmup_evals``), and, once the smoothed training loss (in the evals' units, as
the loss trigger reads it, below) is at or below ``dense_below``, at the last step before
the compute grows past ``dense_ratio`` times its value at the last eval (so the evals are at
most that far apart where the targets are crossed, unless one step is a larger part of the
compute). The smoothed training loss is a bias-corrected exponential moving average over
``smooth_steps`` steps, reset at every shape switch (it drives loss-triggered switches; one
host sync per step reads the loss). At a shape switch the model is evaluated at the old and
the new shape (the measured loss jump, ``RunResult.switches``).

Loss triggers compare like with like. With ``eval_shape`` set, evals score another quantity
than the training loss (the LM's every context scored at the longest one, where a plan's
loss levels come from), so the trigger reads the smoothed training loss shifted by its gap
to the eval loss at the latest eval of the current segment (no shift before that eval).

Per-shape hyper-parameters: ``RunConfig.lr`` may be a dict {shape: lr}; batch sizes per
shape belong to the task (``VisionTask(batch_size={...})``), so an adaptive run trains
every segment with its shape's tuned settings.

Files written to ``out_dir`` (by rank 0): ``metrics.jsonl`` (train loss every
``log_every`` steps), ``evals.jsonl`` (one row per eval), ``ledger.json`` (FLOPs per shape
and phase, summed over ranks), ``checkpoint.pt`` and, when the run ends, ``summary.json``.
"""

import json
import math
import numbers
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np
import torch

from .._checks import check_bool, check_int, validation
from ..flops import FlopLedger
from . import checkpoint, distributed
from .evaluate import evaluate
from .io import JsonLines, write_json
from .schedule import ShapeSchedule
from .stepflops import SignatureFlopCache


@dataclass
class RunConfig:
    """What defines a run (everything here is part of its identity for resuming, except
    the fields listed in ``_CONTROL``).

    budget: training FLOPs (exact, summed over ranks) after which the run stops.
    eval_points: training-compute levels at which to evaluate (default: ``n_evals``
        log-spaced from ``first_eval_fraction * budget`` to ``budget``).
    warmup_evals: with log-spaced evals (no ``eval_points``) that begin only after the
        learning-rate warmup has ended (a large budget, small steps), also evaluate at the
        first step after the warmup and whenever the compute has grown by the log-spaced
        points' own ratio, until the first point: the curve is measured from the warmup
        on, whatever the budget (the demo's laws and plan read it there).
    eval_shape: score every eval at this shape (None: the shape being trained); loss
        triggers then read the training loss shifted to the evals' units.
    stop_at_loss: also stop after the first eval at or below this loss.
    max_steps: also stop after this many steps (a pause: a later call resumes).
    measure_every_step: count every step under FlopCounterMode instead of once per FLOP
        signature (slow; the tests use it to prove the cache exact).
    lr: a float, or {shape: lr} (every shape the run trains at).
    dense_below, dense_ratio: extra evals once the smoothed training loss, in the evals'
        units (shifted as for a loss trigger when ``eval_shape`` is set), is at or below
        ``dense_below`` (an eval loss), at the last step before the compute grows past
        ``dense_ratio`` times the last eval's (consecutive evals at most that far apart
        whenever a step is a smaller part of the compute).
    cross_eval_shapes, cross_eval_after: at evals past ``cross_eval_after * budget`` also
        evaluate at these shapes (row["cross"] = {shape: loss}): the loss jump a switch to
        them would cause, measured before any adaptive run.
    smooth_steps: time constant (steps) of the smoothed training loss.
    """

    budget: int
    seed: int = 0
    lr: object = 2e-3
    warmup_steps: int = 30
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    n_evals: int = 12
    first_eval_fraction: float = 0.01
    eval_points: Optional[tuple] = None
    warmup_evals: bool = True
    eval_shape: Optional[str] = None
    dense_below: Optional[float] = None
    dense_ratio: float = 1.1
    cross_eval_shapes: tuple = ()
    cross_eval_after: float = 0.5
    smooth_steps: int = 32
    stop_at_loss: Optional[float] = None
    max_steps: Optional[int] = None
    checkpoint_every: int = 200
    log_every: int = 10
    measure_every_step: bool = False
    progress: bool = True
    progress_desc: Optional[str] = None

    _CONTROL = ("max_steps", "checkpoint_every", "log_every", "progress", "progress_desc", "measure_every_step")

    def __post_init__(self):
        def number(name, value, *, low=None, high=None, low_open=False, optional=False):
            """A finite real in the given range (integer fields go through check_int)."""
            if value is None and optional:
                return
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"RunConfig: {name} must be a number, got {type(value).__name__} {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"RunConfig: {name} must be finite, got {value}")
            if low is not None and (value <= low if low_open else value < low):
                raise ValueError(f"RunConfig: {name} must be {'>' if low_open else '>='} {low}, got {value}")
            if high is not None and value > high:
                raise ValueError(f"RunConfig: {name} must be <= {high}, got {value}")

        for name, minimum in (("budget", 1), ("seed", 0), ("warmup_steps", 0), ("n_evals", 0),
                              ("smooth_steps", 1), ("checkpoint_every", 1), ("log_every", 1)):
            check_int("RunConfig", name, getattr(self, name), minimum=minimum)
        if self.max_steps is not None:
            check_int("RunConfig", "max_steps", self.max_steps, minimum=0)
        for shape, lr in (self.lr.items() if isinstance(self.lr, dict) else [(None, self.lr)]):
            number("lr" if shape is None else f"lr[{shape!r}]", lr, low=0, low_open=True)
        number("weight_decay", self.weight_decay, low=0)
        number("grad_clip", self.grad_clip, low=0, optional=True)
        number("first_eval_fraction", self.first_eval_fraction, low=0, high=1, low_open=True)
        check_bool("RunConfig", "warmup_evals", self.warmup_evals)
        for point in self.eval_points or ():
            number("eval_points", point, low=0)
        number("dense_below", self.dense_below, optional=True)
        number("dense_ratio", self.dense_ratio, low=1, low_open=True)
        number("cross_eval_after", self.cross_eval_after, low=0, high=1)
        number("stop_at_loss", self.stop_at_loss, optional=True)

    def warmup_ratio(self) -> Optional[float]:
        """The log-spaced points' ratio, which spaces the ``warmup_evals`` (None: none, also
        when every point is at the budget, ``first_eval_fraction`` 1)."""
        if not self.warmup_evals or self.eval_points is not None or self.n_evals < 2 or self.first_eval_fraction >= 1:
            return None
        return float((1.0 / self.first_eval_fraction) ** (1.0 / (self.n_evals - 1)))

    def points(self) -> list:
        if self.eval_points is not None:
            return sorted(float(p) for p in self.eval_points)
        if self.n_evals < 1:
            return []
        return [float(p) for p in np.geomspace(self.first_eval_fraction * self.budget, self.budget, self.n_evals)]


@dataclass
class RunResult:
    evals: list                # [{"step", "compute", "loss", "shape", ...}]
    ledger: FlopLedger         # summed over ranks
    steps: int
    compute: int               # exact training FLOPs, summed over ranks
    stopped: str               # "budget", "target", "max_steps"
    seconds: float
    summary: dict = field(default_factory=dict)
    initial: dict = field(default_factory=dict)    # the step-0 eval: {"loss", "stderr", "shape"}
    switches: list = field(default_factory=list)   # [{"step", "compute", "from", "to", "loss_before", "loss_after"}]


def run_identity(task, schedule: ShapeSchedule, config: RunConfig) -> dict:
    """What a run is (task, data, model, schedule, hyper-parameters, world size), as JSON:
    a checkpoint or a finished sweep entry is reused only for the same identity."""
    fields = {k: v for k, v in asdict(config).items() if k not in RunConfig._CONTROL}
    fields["eval_points"] = config.points()
    return json.loads(json.dumps({"task": task.describe(), "schedule": schedule.to_dict(), "config": fields,
                                  "world_size": distributed.world_size()}))


def _lr_at(config: RunConfig, step: int, shape=None) -> float:
    lr = config.lr[shape] if isinstance(config.lr, dict) else config.lr
    return lr * min(1.0, (step + 1) / max(config.warmup_steps, 1))


def train_run(task, schedule: ShapeSchedule, config: RunConfig, out_dir, *, device="cpu",
              resume: bool = True) -> RunResult:
    """Train ``task``'s model on ``schedule`` until ``config.budget`` training FLOPs (or the
    target loss / max_steps); see the module docstring for what is written where.

    Under torchrun (torch.distributed initialized, or WORLD_SIZE > 1 in the environment)
    the model is wrapped in DistributedDataParallel, every rank trains on its share of each
    global batch, and the ledger is summed across ranks. ``resume`` continues from
    ``out_dir/checkpoint.pt`` when it exists (it must come from the same run).
    """
    device = distributed.setup(torch.device(device))
    rank, world = distributed.rank(), distributed.world_size()
    os.makedirs(out_dir, exist_ok=True)
    identity = run_identity(task, schedule, config)
    model = task.build_model(config.seed).to(device)
    # foreach: one multi-tensor update instead of a Python loop over the parameters (torch's
    # default off CUDA): the same arithmetic, with less per-parameter overhead on small models.
    optimizer = torch.optim.AdamW(model.parameters(), lr=_lr_at(config, 10**9, schedule.segments[0][0]),
                                  betas=(0.9, 0.98), weight_decay=config.weight_decay, foreach=True)
    ledger, flops = FlopLedger(), SignatureFlopCache(device)
    state = {"step": 0, "compute": 0, "next_eval": 0, "evals": [], "stopped": None, "seconds": 0.0,
             "segment": 0, "smooth": [0.0, 0.0], "initial": None, "switches": [], "last_eval": 0,
             "eval_gap": None}
    metrics = JsonLines(os.path.join(out_dir, "metrics.jsonl"))
    eval_log = JsonLines(os.path.join(out_dir, "evals.jsonl"))
    ckpt = checkpoint.load(out_dir, identity) if resume else None
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        ledger = FlopLedger.from_dict(ckpt["ledgers"][rank])
        state = ckpt["run_state"]
        flops.load(ckpt["flop_caches"][rank])
        checkpoint.set_rng_state(ckpt["rng"][rank])
    elif distributed.is_main():
        for log in (metrics, eval_log):
            log.truncate(lambda row: False)
    if distributed.is_main():  # rows a crash wrote after the checkpoint are redone: drop them
        metrics.truncate(lambda row: row["step"] <= state["step"])
        eval_log.truncate(lambda row: row["step"] <= state["step"])
    net = distributed.wrap(model, device)
    points = config.points()

    def save():
        checkpoint.save(out_dir, identity=identity, model=model, optimizer=optimizer, ledger=ledger,
                        flop_cache=flops.dump(), run_state=state)

    bar = _progress(config, state["compute"], schedule) if distributed.is_main() else None
    started = time.perf_counter() - state["seconds"]
    last_saved = state["step"]
    warmup_ratio = config.warmup_ratio()
    decay = 1.0 - 1.0 / max(config.smooth_steps, 1)

    def run_eval(shape, with_error=False):
        state["eval_calls"] = state.get("eval_calls", 0) + 1  # the ledger's eval "step": increasing
        return evaluate(task, model, shape, ledger, state["eval_calls"], flops, device, with_error=with_error)

    def smoothed():
        ema, weight = state["smooth"]
        return ema / weight if weight else None

    def trigger_loss():
        """The smoothed training loss in the evals' units (see the module docstring)."""
        value = smoothed()
        gap = state.get("eval_gap")
        return value if value is None or gap is None or config.eval_shape is None else value + gap

    # The models build cu_seqlens from Python ints (valid by construction): checking their
    # values would cost a host sync in every attention call of every step.
    with validation(False):
        if state["initial"] is None:  # the fresh model's loss: the anchor of the laws
            shape0 = config.eval_shape or schedule.segments[0][0]
            loss0, err0 = run_eval(shape0, with_error=True)
            state["initial"] = {"loss": loss0, "stderr": err0, "shape": shape0}
        while state["stopped"] is None:
            if state["compute"] >= config.budget:
                state["stopped"] = "budget"
                break
            if config.max_steps is not None and state["step"] >= config.max_steps:
                break  # a pause, not an end: the run can be resumed
            step = state["step"]
            index = schedule.index_at(state["compute"], trigger_loss(), state["segment"])
            if index != state["segment"]:
                old, new = schedule.segments[state["segment"]][0], schedule.segments[index][0]
                state["switches"].append({"step": step, "compute": state["compute"], "from": old, "to": new,
                                          "loss_before": run_eval(config.eval_shape or old),
                                          "loss_after": run_eval(config.eval_shape or new),
                                          "smoothed_train_loss": smoothed()})
                state["segment"], state["smooth"], state["eval_gap"] = index, [0.0, 0.0], None
            shape = schedule.segments[state["segment"]][0]
            batch = task.train_batch(step, shape, rank, world, device)
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(config, step, shape)
            signature = (shape, tuple(task.signature(step, shape, r, world) for r in range(world)))
            with flops.step(ledger, step, shape, signature, samples=batch.samples, tokens=batch.tokens,
                            fresh=config.measure_every_step) as counter:
                loss = task.loss(net, batch, shape)
                counter.backward(loss)
                if config.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state["compute"] += counter.global_flops
            state["step"] = step + 1
            loss_value = distributed.sum_floats([float(loss.detach())], device)[0] / world
            ema, weight = state["smooth"]
            state["smooth"] = [decay * ema + (1 - decay) * loss_value, decay * weight + (1 - decay)]
            if distributed.is_main() and (step % config.log_every == 0):
                row = {"step": step + 1, "shape": shape, "compute": state["compute"], "loss": loss_value,
                       "smoothed": smoothed(), "lr": _lr_at(config, step, shape),
                       "seconds": round(time.perf_counter() - started, 3)}
                metrics.write(row)
                if bar is not None:
                    bar.set_postfix(shape=shape, loss=f"{smoothed():.3f}", refresh=False)
            if bar is not None:
                bar.update(min(state["compute"], config.budget) / 1e9 - bar.n)
            crossed = False
            while state["next_eval"] < len(points) and state["compute"] >= points[state["next_eval"]]:
                state["next_eval"] += 1
                crossed = True
            # dense: evaluate now if the next step (as dear as this one) would take the compute past
            # dense_ratio times the last eval's, so that no two evals are more than that apart
            if (config.dense_below is not None and trigger_loss() <= config.dense_below
                    and state["compute"] + counter.global_flops > state["last_eval"] * config.dense_ratio):
                crossed = True
            if (warmup_ratio is not None and state["next_eval"] == 0 and state["step"] > config.warmup_steps
                    and state["compute"] >= state["last_eval"] * warmup_ratio):
                crossed = True  # the warmup is over before the first log-spaced point
            if crossed:
                eval_shape = config.eval_shape or shape
                loss_eval, stderr = run_eval(eval_shape, with_error=True)
                row = {"step": state["step"], "compute": state["compute"], "loss": loss_eval, "stderr": stderr,
                       "shape": eval_shape, "train_shape": shape, "smoothed_train_loss": smoothed(),
                       "seconds": round(time.perf_counter() - started, 3)}
                if config.cross_eval_shapes and state["compute"] >= config.cross_eval_after * config.budget:
                    row["cross"] = {s: run_eval(s) for s in config.cross_eval_shapes if s != eval_shape}
                state["evals"].append(row)
                state["last_eval"] = state["compute"]
                state["eval_gap"] = loss_eval - smoothed()
                if distributed.is_main():
                    eval_log.write(row)
                if config.stop_at_loss is not None and loss_eval <= config.stop_at_loss:
                    state["stopped"] = "target"
            state["seconds"] = time.perf_counter() - started
            if crossed or state["step"] - last_saved >= config.checkpoint_every:
                save()
                last_saved = state["step"]
    if bar is not None:
        bar.close()
    state["seconds"] = time.perf_counter() - started
    save()
    total = ledger.sum_across_ranks()
    result = RunResult(state["evals"], total, state["step"], state["compute"], state["stopped"] or "max_steps",
                       state["seconds"], initial=state["initial"], switches=state["switches"])
    if distributed.is_main():
        total.save(os.path.join(out_dir, "ledger.json"))
        result.summary = {"identity": identity, "steps": result.steps, "compute": result.compute,
                          "stopped": result.stopped, "seconds": round(result.seconds, 3), "evals": result.evals,
                          "initial": result.initial, "switches": result.switches,
                          "flops_by_shape": total.by_shape(), "flops_by_phase": total.by_phase()}
        if state["stopped"] is not None:
            write_json(os.path.join(out_dir, "summary.json"), result.summary)
    return result


def _progress(config: RunConfig, done: float, schedule: ShapeSchedule):
    if not config.progress:
        return None
    from tqdm.auto import tqdm

    desc = config.progress_desc or "+".join(dict.fromkeys(schedule.shapes))
    # disable=None: no bar when stderr is not a terminal (CI logs, pipes)
    return tqdm(total=config.budget / 1e9, initial=min(done, config.budget) / 1e9, unit="GFLOP", desc=desc,
                dynamic_ncols=True, disable=None, leave=False,
                bar_format="{l_bar}{bar}| {n:.3g}/{total:.3g} GFLOP [{elapsed}<{remaining}{postfix}]")
