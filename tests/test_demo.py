"""``adaptkern demo --fast`` end to end in a subprocess: it writes its JSON (the keys of
DESIGN.md's "main job's report") and PNG, and whatever its adaptive run achieved, the
numbers and the verdict it prints and stores are the ones its own eval curves imply
(recomputed here independently). The demo trains its runs two at a time (--jobs 2), and
one at a time in this process gives the same numbers. A demo killed (SIGKILL) in the
middle of its tuning sweep and rerun with --resume redoes no finished run and ends with
the same numbers as the uninterrupted one."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import SESSION_SEED

from adaptkern.train.adaptive import free_switch

DEMO_SEED = SESSION_SEED % 1000


def _demo(out, *extra):
    return [sys.executable, "-m", "adaptkern", "demo", "--fast", "--out", str(out), "--no-progress",
            "--seed", str(DEMO_SEED), "--jobs", "2", *extra]


@pytest.fixture(scope="module")
def clean_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    proc = subprocess.run(_demo(out), capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


def _first_crossing(evals, target):
    """Independent re-implementation: first eval at/below target, log-linear interpolation;
    None when the first eval is already below (the report's rule: only an upper bound)."""
    compute = np.array([e["compute"] for e in evals], dtype=float)
    loss = np.array([e["loss"] for e in evals], dtype=float)
    order = np.argsort(compute)
    compute, loss = compute[order], loss[order]
    for i in range(len(loss)):
        if loss[i] <= target:
            if i == 0:
                return None
            t = (loss[i - 1] - target) / (loss[i - 1] - loss[i])
            return math.exp(math.log(compute[i - 1]) + t * (math.log(compute[i]) - math.log(compute[i - 1])))
    return None


def test_demo_fast_end_to_end(clean_demo):
    """The report's keys (DESIGN.md, "the main job's report") and every number in them
    recomputed here from the stored eval curves: crossings, best static shape, savings."""
    out, proc = clean_demo
    summary = json.loads((out / "summary.json").read_text())
    assert (out / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    shapes = summary["shapes"]
    assert summary["seeds"] and summary["tune_seed"] not in summary["seeds"]
    for shape in shapes:
        base = summary["baselines"][shape]
        assert len(base["tried"]) >= 2 and base["chosen"]["batch_size"] in [t["batch_size"] for t in base["tried"]]
        chosen = min(base["tried"], key=lambda t: t["final_loss"])
        assert chosen["batch_size"] == base["chosen"]["batch_size"]
        law = summary["laws"][shape]
        assert {"params", "rms_log_residual", "at_bound", "used"} <= set(law)
        if law["at_bound"]:
            assert law["used"] != "anchored power law"  # never used silently
    excluded = summary["excluded_flops"]
    assert set(excluded) >= {"eval", "sweep"} and excluded["eval"] > 0
    assert excluded["sweep"] == sum(v for k, v in excluded.items() if k.startswith("sweep_"))
    # switch probes (tuning seed): forward pairs, switched before the headline, every
    # crossing recomputed from the probe's own stored run
    probes = summary["switch_probes"]["tried"]
    pairs = {(p["from"], p["to"]) for p in probes} | {(p["from"], p["to"]) for p in summary["switch_probes"]["not_probed"]}
    with_laws = [s for s in shapes if summary["laws"][s]["used"]]
    assert pairs == {(a, b) for i, a in enumerate(with_laws) for b in with_laws[i + 1:]}  # every pair: probed or why not
    assert (excluded["sweep_probes"] > 0) == bool(probes)
    goal = next(t["loss"] for t in summary["targets"] if t["headline"])
    for probe in probes:
        assert shapes.index(probe["from"]) < shapes.index(probe["to"])
        folder = out / "probe" / f"{probe['from']}-{probe['to']}-{probe['switch_flops']:.3g}"
        record = json.loads((folder / "record.json").read_text())
        assert record["schedule"]["segments"] == [[probe["from"], probe["switch_flops"]], [probe["to"], None]]
        crossing = _first_crossing(record["evals"], goal)
        assert probe["target"] == goal and (crossing is None) == (probe["flops_to_target"] is None)
        assert crossing is None or math.isclose(crossing, probe["flops_to_target"], rel_tol=1e-9)
        assert probe["how"] == "measured" or "restart" in probe["how"] or probe["effective_jump"] is None
    runs = summary["runs"]
    verdict = summary["verdict"]
    if "plan" not in summary:
        assert verdict["claim"].startswith("no adaptive run")
        return
    plan = summary["plan"]
    assert plan["predicted_flops"] > 0 and all(seg["compute"] > 0 for seg in plan["segments"])
    # the plan starts at a measured step-0 loss (of a tuning run), not at a law's guess: the
    # lowest of the shapes' own, so that any shape may begin it as its static run does
    assert any(math.isclose(plan["start_loss"], r["initial"]["loss"], rel_tol=1e-12)
               for rs in runs["tuning"].values() for r in rs)
    assert math.isclose(plan["start_loss"], min(summary["laws"][s]["initial_loss"] for s in plan["static_compute"]),
                        rel_tol=1e-12)
    assert plan["savings"] >= -1e-9  # staying on the best static shape is always a plan
    for run in runs["adaptive"]:
        ledger = run["ledger"]["flops"]
        train = sum(v for phases in ledger.values() for p, v in phases.items() if p != "eval")
        assert train == run["compute"]  # the ledger is the run's compute axis
    for entry in summary["targets"]:
        target = entry["loss"]
        static = {s: [_first_crossing(r["evals"], target) for r in runs["static"][s]] for s in shapes}
        for s in shapes:
            for mine, theirs in zip(static[s], entry["static_flops"][s]):
                assert (mine is None) == (theirs is None) and (mine is None or math.isclose(mine, theirs, rel_tol=1e-9))
        adaptive = [_first_crossing(r["evals"], target) for r in runs["adaptive"]]
        assert [a is None for a in adaptive] == [a is None for a in entry["adaptive_flops"]]
        best = entry["best_static_shape"]
        for a, st, saving in zip(adaptive, static[best], entry["savings_per_seed"]):
            if a is None or st is None:
                assert saving is None
            else:
                assert math.isclose(saving, 1 - a / st, rel_tol=1e-9)
        for i, (switch, saving) in enumerate(zip(entry["free_switch"]["per_seed"],
                                                 entry["free_switch"]["savings_per_seed"])):
            assert switch == free_switch({s: runs["static"][s][i]["evals"] for s in shapes}, target)
            assert saving is None or saving >= -1e-12  # staying on the best static shape is one "switch"
        values = [v for v in entry["savings_per_seed"] if v is not None]
        if values:
            assert math.isclose(entry["savings"]["mean"], float(np.mean(values)), rel_tol=1e-9)
            assert entry["savings"]["min"] == min(values) and entry["savings"]["max"] == max(values)
    head = [t for t in summary["targets"] if t["headline"]]
    assert len(head) == 1 and verdict["headline_target"] == head[0]["loss"]
    assert verdict["savings_mean"] == head[0]["savings"]["mean"]
    if verdict["savings_mean"] is not None:
        assert ("did NOT" in verdict["claim"]) == (verdict["savings_mean"] <= 0)
    assert verdict["claim"] in proc.stdout  # the printed verdict is the stored one


def _numbers(summary):
    static = {s: [[(e["compute"], e["loss"]) for e in r["evals"]] for r in rs]
              for s, rs in summary["runs"]["static"].items()}
    adaptive = [[(e["compute"], e["loss"]) for e in r["evals"]] for r in summary["runs"]["adaptive"]]
    return static, adaptive, [t["loss"] for t in summary["targets"]], summary["verdict"]["claim"]


def test_demo_numbers_do_not_depend_on_jobs(clean_demo, tmp_path):
    """The same demo one run at a time in this process (jobs=1, on one thread as the CLI's
    workers are) gives the numbers the --jobs 2 demo gave, and the same records."""
    import torch

    from adaptkern.train.demo import run_demo

    reference, _ = clean_demo
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = run_demo("vit", fast=True, out=str(tmp_path), seed=DEMO_SEED, progress=False, jobs=1,
                           log=lambda *args, **kwargs: None)
    finally:
        torch.set_num_threads(threads)
    assert _numbers(summary) == _numbers(json.loads((reference / "summary.json").read_text()))
    records = sorted(reference.glob("**/record.json"))
    assert len(records) >= 8  # tuning, measured and oracle runs
    for record in records:
        mine = json.loads((tmp_path / record.relative_to(reference)).read_text())
        theirs = json.loads(record.read_text())
        for key in ("identity", "steps", "compute", "ledger"):
            assert mine[key] == theirs[key], (record, key)
        untimed = [[{k: v for k, v in e.items() if k != "seconds"} for e in r["evals"]] for r in (mine, theirs)]
        assert untimed[0] == untimed[1], record


@pytest.mark.parametrize("command", ["demo", "train"])
@pytest.mark.parametrize("evals", ["0", "1"])
def test_too_few_evals_is_refused_up_front(tmp_path, capsys, command, evals):
    """--evals below 2 leaves no curve to fit, target or cross: refused before any training
    (it used to run the whole sweep and then crash with an IndexError)."""
    from adaptkern.cli import main

    extra = ["--fast"] if command == "demo" else ["--shape", "p8"]
    assert main([command, "--evals", evals, "--target-loss", "2", "--out", str(tmp_path / "out"), "--no-progress",
                 *extra]) == 2
    assert f"--evals: must be an integer >= 2, got {evals}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_demo_killed_mid_sweep_resumes_without_redoing_runs(clean_demo, tmp_path):
    reference, _ = clean_demo
    out = tmp_path / "out"
    proc = subprocess.Popen(_demo(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        first = None
        while first is None and proc.poll() is None and time.monotonic() < deadline:
            done = sorted((out / "tune").glob("*/record.json")) if (out / "tune").exists() else []
            first = done[0] if done else None
            time.sleep(0.05)
        assert first is not None, "the first tuning run never finished"
        time.sleep(0.5)  # let the second run start and checkpoint
        if proc.poll() is not None:
            pytest.skip("the demo finished before it could be killed")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert not (out / "summary.json").exists()
    stamp, content = first.stat().st_mtime_ns, first.read_bytes()
    resumed = subprocess.run(_demo(out, "--resume"), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert first.stat().st_mtime_ns == stamp and first.read_bytes() == content  # finished run not redone
    got = json.loads((out / "summary.json").read_text())
    want = json.loads((reference / "summary.json").read_text())
    assert _numbers(got) == _numbers(want)


def test_no_probes_and_no_oracle(clean_demo, tmp_path):
    """--probes 0 --oracle-points 0 on the fast demo's finished runs (--resume keeps them):
    every forward pair is reported unprobed with that reason, the planner gets the raw
    jumps, nothing is spent on probes or the oracle, and the tuning runs are not redone."""
    import shutil

    reference, _ = clean_demo
    out = tmp_path / "out"
    shutil.copytree(reference / "tune", out / "tune")
    stamps = {p: p.stat().st_mtime_ns for p in (out / "tune").glob("*/record.json")}
    proc = subprocess.run(_demo(out, "--resume", "--probes", "0", "--oracle-points", "0"), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert stamps and all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    summary = json.loads((out / "summary.json").read_text())
    shapes = summary["shapes"]
    forward = {(a, b) for i, a in enumerate(shapes) for b in shapes[i + 1:]}
    probes = summary["switch_probes"]
    assert probes["tried"] == [] and not (out / "probe").exists()
    assert probes["not_probed"] and {(p["from"], p["to"]) for p in probes["not_probed"]} <= forward
    assert all(p["why"] == "no probes asked for (--probes 0)" for p in probes["not_probed"])
    assert summary["oracle"]["tried"] == [] and summary["oracle"]["best"] is None
    assert summary["excluded_flops"]["sweep_probes"] == 0 and summary["excluded_flops"]["sweep_oracle"] == 0
    assert "oracle" not in summary["verdict"]["claim"]


@pytest.mark.parametrize("optimum, extend, expected", [
    (5.0, 2, [4, 8, 16, 2]),        # best at the small edge: one halving finds the inside optimum
    (0.3, 2, [4, 8, 16, 2, 1]),     # still at the edge after one step: a second halving
    (0.3, 1, [4, 8, 16, 2]),        # ...but never more than `extend` steps
    (0.1, 5, [4, 8, 16, 2, 1]),     # never below one image / token per step
    (50.0, 2, [4, 8, 16, 32, 64]),  # best at the large edge: doubling
    (9.0, 2, [4, 8, 16]),           # best inside: nothing added
    (50.0, 0, [4, 8, 16]),
])
def test_tuning_grid_extends_past_an_edge_best(optimum, extend, expected):
    """A tuned baseline whose best setting sits at the edge of its grid is not known to be
    tuned: the grid grows past that edge until the best is inside (or the limit)."""
    from adaptkern.train.demo import tune_grids

    loss = lambda g: (math.log2(g) - math.log2(optimum)) ** 2  # noqa: E731  convex in log batch
    rounds = []

    def losses(entries):
        rounds.append(entries)
        return [loss(g) for _, g in entries]

    # a second key whose best is inside its grid: it stops after the first round, the other goes on
    tried = tune_grids({"edge": [16, 4, 8], "inside": [4, 8, 16]},
                       lambda entries: [loss(g) if key == "edge" else abs(g - 8) for key, g in entries],
                       extend=extend)
    assert [g for g, _ in tried["inside"]] == [4, 8, 16]
    tried = tune_grids({"edge": [16, 4, 8]}, losses, extend=extend)["edge"]
    assert [g for g, _ in tried] == expected
    assert rounds[0] == [("edge", 4), ("edge", 8), ("edge", 16)] and all(len(r) == 1 for r in rounds[1:])
    assert all(value == loss(g) for g, value in tried)
    best = min(tried, key=lambda t: t[1])[0]
    assert best == min(expected, key=loss)
    with pytest.raises(ValueError, match="grid"):
        tune_grids({"edge": [0, 4]}, losses)


def test_lm_demo_tunes_a_context_longer_than_the_grid_start(tmp_path):
    """--shapes ctx64 ctx1024 with the --fast grid [512, 1024] tokens per step: ctx1024 is
    tuned from 1024 (a window needs its context), and the shorter context's runs, which
    evaluate at ctx1024, are not refused for it (they used to fail at their first eval)."""
    from adaptkern.train.demo import run_demo

    summary = run_demo("lm", fast=True, shapes=["ctx64", "ctx1024"], out=str(tmp_path), seed=DEMO_SEED,
                       progress=False, log=lambda *a, **k: None)
    tried = {s: [t["tokens_per_step"] for t in b["tried"]] for s, b in summary["baselines"].items()}
    assert tried == {"ctx64": [512, 1024], "ctx1024": [1024]}
    # every context is scored at ctx1024: a raw jump would be 0 by construction, so none is reported or used
    assert summary["switch_jumps"] == {} and "ctx1024" in summary["switch_jumps_note"]
    from adaptkern.train.report import table

    printed = table(summary)
    assert summary["switch_jumps_note"] in printed and "measured late in the tuning runs (same model" not in printed
    for p in summary["switch_probes"]["not_probed"]:
        assert f"{p['from']}->{p['to']} not probed ({p['why']}): the planner uses no jump (0)" in printed


def test_lm_task_refuses_training_windows_longer_than_a_step():
    from adaptkern.train import LMTask, SyntheticCopyText

    task = LMTask(SyntheticCopyText(seed=0, train_bytes=5000, eval_bytes=3000), tokens_per_batch={"ctx64": 512},
                  eval_tokens=2048)
    assert task.shape("ctx1024").context == 1024  # parsing (and evaluating) at a long context is fine
    assert task.tokens_for("ctx64") == 512
    task = LMTask(SyntheticCopyText(seed=0, train_bytes=5000, eval_bytes=3000), tokens_per_batch=512)
    with pytest.raises(ValueError, match="context 1024 exceeds tokens_per_batch=512"):
        task.tokens_for("ctx1024")
