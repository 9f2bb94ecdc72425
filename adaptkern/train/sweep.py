"""Sweeps of static shapes that survive crashes.

Each shape is one run (its own folder with checkpoints, so a run interrupted midway resumes
from its last checkpoint); a finished run is written at once to ``<out>/<shape>.json``
(atomically), and a rerun skips every shape whose JSON is there with the same run identity:
nothing finished is redone or lost.
"""

import os

from . import distributed
from .io import read_json, write_json
from .loop import RunConfig, run_identity, train_run
from .schedule import ShapeSchedule


def run_record(shape, identity, result) -> dict:
    """The JSON kept for a finished run."""
    return {"shape": shape, "identity": identity, "evals": result.evals, "steps": result.steps,
            "compute": result.compute, "stopped": result.stopped, "seconds": round(result.seconds, 3),
            "ledger": result.ledger.to_dict()}


def run_sweep(task, shapes, config: RunConfig, out_dir, *, device="cpu", resume: bool = True,
              progress_prefix: str = "") -> dict:
    """Train every shape of ``shapes`` statically under ``config`` (same budget and eval
    points for all); returns {shape: record} with records as ``run_record``.

    With ``resume`` a shape whose ``<out_dir>/<shape>.json`` exists is loaded, not rerun
    (a ValueError if it came from a different configuration), and an unfinished run
    continues from its checkpoint. Without ``resume`` every run starts from scratch.
    """
    records = {}
    for i, shape in enumerate(shapes):
        name = task.short_name(shape)
        schedule = ShapeSchedule.static(name)
        identity = run_identity(task, schedule, config)
        path = os.path.join(out_dir, f"{name}.json")
        if resume and os.path.exists(path):
            record = read_json(path, what=f"record of the finished sweep run {name}",
                               remedy=f"delete it and rerun with --resume: run {name} then continues from its "
                                      "checkpoint")
            if record.get("identity") != identity:
                raise ValueError(f"{path} holds a run with a different configuration; use another output folder "
                                 "or run without resume")
            records[name] = record
            continue
        run_config = RunConfig(**{**vars(config), "progress_desc": f"{progress_prefix}static {name} "
                                                                   f"({i + 1}/{len(shapes)})"})
        result = train_run(task, schedule, run_config, os.path.join(out_dir, name), device=device, resume=resume)
        if result.stopped == "max_steps":
            raise RuntimeError(f"sweep run {name} paused at max_steps={config.max_steps} before its budget")
        records[name] = run_record(name, identity, result)
        if distributed.is_main():
            write_json(path, records[name])
        distributed.barrier()
    return records
