"""``adaptkern demo --fast`` end to end in a subprocess: it writes its JSON and PNG, and
whatever its adaptive run achieved, the verdict it prints and stores is the one its own
numbers imply (recomputed here independently from the stored eval curves). A demo killed
(SIGKILL) in the middle of its sweep and rerun with --resume redoes no finished run and
ends with the same numbers as the uninterrupted one."""

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

DEMO_SEED = SESSION_SEED % 1000


def _demo(out, *extra):
    return [sys.executable, "-m", "adaptkern", "demo", "--fast", "--out", str(out), "--no-progress",
            "--seed", str(DEMO_SEED), *extra]


@pytest.fixture(scope="module")
def clean_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    proc = subprocess.run(_demo(out), capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


def _first_crossing(evals, target):
    """Independent re-implementation: first eval at/below target, log-linear interpolation."""
    compute = np.array([e["compute"] for e in evals], dtype=float)
    loss = np.array([e["loss"] for e in evals], dtype=float)
    order = np.argsort(compute)
    compute, loss = compute[order], loss[order]
    for i in range(len(loss)):
        if loss[i] <= target:
            if i == 0:
                return compute[0]
            t = (loss[i - 1] - target) / (loss[i - 1] - loss[i])
            return math.exp(math.log(compute[i - 1]) + t * (math.log(compute[i]) - math.log(compute[i - 1])))
    return None


def _at_first_eval(evals, target):
    """Already at/below the target at the first eval: the crossing is only an upper bound."""
    return min(evals, key=lambda e: e["compute"])["loss"] <= target


def test_demo_fast_end_to_end(clean_demo):
    out, proc = clean_demo
    summary = json.loads((out / "summary.json").read_text())
    assert (out / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for shape in summary["shapes"]:
        assert (out / "sweep" / f"{shape}.json").exists()
    target = summary["target_loss"]
    static = {}
    for shape, row in summary["static"].items():
        assert len(row["evals"]) >= 4 and row["compute"] >= summary["budget"]
        mine = _first_crossing(row["evals"], target)
        assert (mine is None) == (row["flops_to_target"] is None)
        if mine is not None:
            assert math.isclose(mine, row["flops_to_target"], rel_tol=1e-9)
        static[shape] = mine
    reached = {s: c for s, c in static.items() if c is not None}
    assert reached, "the target rule picks a loss the best static run reached"
    verdict = summary["verdict"]
    assert verdict["best_static_flops"] == min(reached.values())
    assert static[verdict["best_static_shape"]] == verdict["best_static_flops"]
    adaptive = _first_crossing(summary["adaptive"]["evals"], target) if "adaptive" in summary else None
    if "adaptive" in summary:
        ledger = summary["adaptive"]["ledger"]["flops"]
        train = sum(v for phases in ledger.values() for p, v in phases.items() if p != "eval")
        assert train == summary["adaptive"]["compute"]  # the ledger is the run's compute axis
    bounds = [s for s in reached if _at_first_eval(summary["static"][s]["evals"], target)]
    if "adaptive" not in summary:  # planning failed: the verdict says why, and claims nothing
        assert verdict["adaptive_wins"] is None and verdict["claim"] == f"no adaptive run: {summary['plan_error']}"
    elif adaptive is None:
        assert verdict["adaptive_wins"] is False and "did NOT reach" in verdict["claim"]
    elif bounds or _at_first_eval(summary["adaptive"]["evals"], target):  # upper bounds only: no comparison
        assert verdict["adaptive_wins"] is None and verdict["savings"] is None and "first eval" in verdict["claim"]
    else:
        assert math.isclose(verdict["adaptive_flops"], adaptive, rel_tol=1e-9)
        wins = adaptive < verdict["best_static_flops"]
        assert verdict["adaptive_wins"] == wins
        assert math.isclose(verdict["savings"], 1 - adaptive / verdict["best_static_flops"], rel_tol=1e-9)
        assert ("did NOT" in verdict["claim"]) == (not wins)
    assert verdict["claim"] in proc.stdout  # the printed verdict is the stored one
    assert "target loss" in proc.stdout and "adaptive" in proc.stdout


def _numbers(summary):
    static = {s: [(e["compute"], e["loss"]) for e in row["evals"]] for s, row in summary["static"].items()}
    adaptive = [(e["compute"], e["loss"]) for e in summary.get("adaptive", {}).get("evals", [])]
    return static, adaptive, summary["target_loss"], summary["verdict"]["claim"]


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
    shapes = json.loads((reference / "summary.json").read_text())["shapes"]
    first = out / "sweep" / f"{shapes[0]}.json"
    proc = subprocess.Popen(_demo(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.exists(), "the first sweep run never finished"
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
