"""adaptkern.train: deterministic data, resume == uninterrupted, the per-signature FLOP
cache == FlopCounterMode on every step, compute-triggered shape switches, and the sweep
surviving a crash."""

import json
import os

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from adaptkern import _checks
from adaptkern.flops import FlopLedger
from adaptkern.train import (ImageFolderData, LMTask, RunConfig, ShapeSchedule, SyntheticCopyText, SyntheticGlyphs,
                             TextFileData, VisionTask, train_run)
from adaptkern.train.sweep import run_sweep

TINY_VIT = dict(dim=16, depth=1, num_heads=2, base_patch_size=4, pos_grid=(4, 4))
TINY_LM = dict(dim=16, depth=1, num_heads=2)


def vit_task(seed=0, batch_size=8):
    return VisionTask(SyntheticGlyphs(seed=seed, image_size=16, num_eval=24), batch_size=batch_size,
                      eval_batch_size=16, model=TINY_VIT)


def lm_task(seed=0):
    return LMTask(SyntheticCopyText(seed=seed, train_bytes=20000, eval_bytes=2000), tokens_per_batch=64,
                  eval_tokens=96, eval_batch_tokens=64, model=TINY_LM)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: a second OpenMP thread only adds contention (many times slower on a
    loaded 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def config(**kw):
    base = dict(budget=10**15, n_evals=0, progress=False, warmup_steps=2, checkpoint_every=3, log_every=1)
    base.update(kw)
    return RunConfig(**base)


# -- data ------------------------------------------------------------------------------


def test_synthetic_images_are_deterministic_sharded_and_fresh(seed):
    data = SyntheticGlyphs(seed=seed)
    x, y = data.train_batch(7, 12)
    x2, y2 = SyntheticGlyphs(seed=seed).train_batch(7, 12)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert x.shape == (12, 3, 32, 32) and x.dtype == torch.float32 and y.min() >= 0 and y.max() < 10
    assert not torch.equal(data.train_batch(8, 12)[0], x)
    assert not torch.equal(SyntheticGlyphs(seed=seed + 1).train_batch(7, 12)[0], x)
    shards = [data.train_batch(7, 12, rank=r, world_size=3) for r in range(3)]
    assert torch.equal(torch.cat([s[0] for s in shards]), x) and torch.equal(torch.cat([s[1] for s in shards]), y)
    ex, ey = data.eval_set()
    assert torch.equal(ex, SyntheticGlyphs(seed=seed).eval_set()[0]) and len(ey) == data.num_eval
    with pytest.raises(ValueError, match="batch_size"):
        data.train_batch(0, 10, rank=0, world_size=3)


def test_synthetic_text_is_deterministic_and_sharded(seed):
    data = SyntheticCopyText(seed=seed, train_bytes=30000, eval_bytes=3000)
    w = data.train_batch(3, 256, 32)
    assert w.shape == (8, 33) and w.dtype == torch.int64
    assert torch.equal(w, SyntheticCopyText(seed=seed, train_bytes=30000, eval_bytes=3000).train_batch(3, 256, 32))
    assert torch.equal(torch.cat([data.train_batch(3, 256, 32, r, 2) for r in range(2)]), w)
    assert not torch.equal(data.train_batch(4, 256, 32), w)
    ev16, ev64 = data.eval_windows(16, 128), data.eval_windows(64, 128)
    # every context scores the same held-out tokens
    assert torch.equal(ev16[:, 1:].reshape(-1), ev64[:, 1:].reshape(-1))
    assert set(bytes(data._train[:2000].tolist()).decode()) <= set("abcdefghijklmnopqrstuvwxyz .\n")


def test_image_folder_and_text_file(tmp_path, seed):
    from PIL import Image

    rng = np.random.default_rng(seed)
    for label in ("cat", "dog"):
        os.makedirs(tmp_path / "imgs" / label)
        for i in range(5):
            size = tuple(int(s) for s in rng.integers(10, 40, 2))
            pixels = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "imgs" / label / f"{i}.png")
    data = ImageFolderData(tmp_path / "imgs", seed=seed, image_size=16)
    assert data.classes == ["cat", "dog"] and data.num_classes == 2
    x, y = data.train_batch(3, 4)
    assert x.shape == (4, 3, 16, 16) and torch.equal(x, ImageFolderData(tmp_path / "imgs", seed=seed,
                                                                        image_size=16).train_batch(3, 4)[0])
    assert len(data.eval_set()[1]) == 2  # one image per class held out
    with pytest.raises(ValueError, match="--images"):
        ImageFolderData(tmp_path / "missing")
    (tmp_path / "t.txt").write_bytes(bytes(rng.integers(0, 256, 5000, dtype=np.uint8)))
    text = TextFileData(tmp_path / "t.txt", seed=seed)
    assert text.train_batch(0, 64, 16).shape == (4, 17)


# -- loop --------------------------------------------------------------------------------


def _params(folder):
    ckpt = torch.load(os.path.join(folder, "checkpoint.pt"), weights_only=False)
    return ckpt["model"], ckpt["optimizer"]["state"]


@pytest.mark.parametrize("make_task,shapes", [(vit_task, ["p8", "p4"]), (lm_task, ["ctx8", "ctx16"])])
def test_resume_equals_uninterrupted(tmp_path, make_task, shapes, seed):
    task = make_task(seed)
    # switch shape in the middle so the resume crosses a switch and an eval
    straight = train_run(task, ShapeSchedule.static(shapes[0]), config(max_steps=1, seed=seed), tmp_path / "probe")
    boundary = straight.compute * 3  # after step 3 of 6
    schedule = ShapeSchedule(((shapes[0], boundary), (shapes[1], float("inf"))))
    cfg = dict(seed=seed, eval_points=(boundary / 2, boundary * 1.5, boundary * 20))
    full = train_run(task, schedule, config(max_steps=6, **cfg), tmp_path / "full")
    half = train_run(task, schedule, config(max_steps=3, **cfg), tmp_path / "resumed")
    assert half.steps == 3 and half.stopped == "max_steps"
    resumed = train_run(task, schedule, config(max_steps=6, **cfg), tmp_path / "resumed")
    assert resumed.steps == full.steps == 6
    assert resumed.ledger == full.ledger and resumed.ledger.shapes == shapes
    assert [(e["step"], e["compute"], e["loss"]) for e in resumed.evals] == \
           [(e["step"], e["compute"], e["loss"]) for e in full.evals]
    (m1, o1), (m2, o2) = _params(tmp_path / "full"), _params(tmp_path / "resumed")
    for key in m1:
        assert torch.equal(m1[key], m2[key]), key
    for key in o1:
        assert all(torch.equal(o1[key][s], o2[key][s]) for s in o1[key])
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in lines] == list(range(1, 7))  # no duplicated or lost rows
    with pytest.raises(ValueError, match="different run"):
        train_run(task, schedule, config(max_steps=6, seed=seed + 1), tmp_path / "resumed")


@pytest.mark.parametrize("make_task,shapes", [(vit_task, ["p8", "p4", "p2"]), (lm_task, ["ctx4", "ctx16", "ctx64"])])
def test_flop_cache_equals_flopcountermode_every_step(tmp_path, make_task, shapes, seed):
    """The loop counts each FLOP signature once and reuses it; a run measuring every step
    under FlopCounterMode books the identical ledger, and an independent FlopCounterMode
    count of one step of each shape equals the ledger's per-step FLOPs."""
    task = make_task(seed)
    probe = train_run(task, ShapeSchedule.static(shapes[0]), config(max_steps=1), tmp_path / "probe").compute
    # two steps of the first shape, then two or three of the second (each costs 2-4x more), then the third
    schedule = ShapeSchedule(((shapes[0], 2 * probe), (shapes[1], 6 * probe), (shapes[2], float("inf"))))
    cached = train_run(task, schedule, config(max_steps=7, seed=seed), tmp_path / "cached")
    fresh = train_run(task, schedule, config(max_steps=7, seed=seed, measure_every_step=True), tmp_path / "fresh")
    assert cached.ledger == fresh.ledger and set(cached.ledger.shapes) == set(shapes)
    model = task.build_model(seed)
    for shape in shapes:
        batch = task.train_batch(123, shape, 0, 1, "cpu")
        with FlopCounterMode(display=False) as counter:
            task.loss(model, batch, shape).backward()
        steps = cached.ledger.counts(shape)["steps"]
        train_phases = ["forward", "backward", "optimizer"]
        assert counter.get_total_flops() * steps == cached.ledger.total(shape=shape, phase=train_phases)
        assert counter.get_total_flops() > 0


def test_compute_triggered_switch_and_eval_points(tmp_path, seed):
    task = vit_task(seed)
    per_step = train_run(task, ShapeSchedule.static("p8"), config(max_steps=1), tmp_path / "probe").compute
    boundary = 2.5 * per_step
    points = (0.5 * per_step, 4 * per_step, 4.2 * per_step)
    run = train_run(task, ShapeSchedule(((("p8"), boundary), ("p4", float("inf")))),
                    config(max_steps=5, eval_points=points), tmp_path / "run")
    assert run.ledger.counts("p8")["steps"] == 3  # steps start at compute 0, 1, 2 per_step < 2.5
    assert run.ledger.counts("p4")["steps"] == 2
    assert run.compute == run.ledger.total(phase=["forward", "backward", "optimizer"])
    assert [e["step"] for e in run.evals] == [1, 4]  # two points crossed by one step: one eval
    assert [e["shape"] for e in run.evals] == ["p8", "p4"]
    # evals: the fresh model, the two points, and the old and new shape at the switch
    assert run.ledger.counts(kind="eval")["steps"] == 5 and run.ledger.total(phase="eval") > 0
    assert run.initial["shape"] == "p8" and run.initial["loss"] > 0 and run.initial["stderr"] > 0
    (switch,) = run.switches
    assert (switch["from"], switch["to"], switch["step"]) == ("p8", "p4", 3)


def test_loss_triggered_switch_follows_the_smoothed_training_loss(tmp_path, seed):
    """A loss-triggered schedule switches at the first step whose smoothed training loss
    (bias-corrected EMA, as logged) is at or below the level; a level above the start
    switches after the first step, one below every loss never does."""
    task = vit_task(seed)
    cfg = config(max_steps=6, seed=seed, smooth_steps=3)
    probe = train_run(task, ShapeSchedule.static("p8"), cfg, tmp_path / "probe")
    rows = [json.loads(r) for r in (tmp_path / "probe" / "metrics.jsonl").read_text().splitlines()]
    smooth = [r["smoothed"] for r in rows]
    decay, ema, weight = 1 - 1 / 3, 0.0, 0.0
    for r in rows:  # the logged smoothed loss is the bias-corrected EMA of the logged losses
        ema, weight = decay * ema + (1 - decay) * r["loss"], decay * weight + (1 - decay)
        assert r["smoothed"] == pytest.approx(ema / weight, rel=1e-12)
    level = sorted(smooth)[len(smooth) // 2]
    first = next(i for i, v in enumerate(smooth) if v <= level)  # step index whose smoothed loss crosses
    run = train_run(task, ShapeSchedule((("p8", level), ("p4", None)), trigger="loss"), cfg, tmp_path / "run")
    (switch,) = run.switches
    assert switch["step"] == first + 1 and switch["smoothed_train_loss"] == pytest.approx(smooth[first])
    assert run.ledger.counts("p8")["steps"] == first + 1 and run.ledger.counts("p4")["steps"] == 5 - first
    assert switch["loss_before"] > 0 and switch["loss_after"] > 0
    never = train_run(task, ShapeSchedule((("p8", -1.0), ("p4", None)), trigger="loss"), cfg, tmp_path / "never")
    assert never.switches == [] and never.ledger.shapes == ["p8"]
    assert probe.ledger.total(phase="forward") == never.ledger.total(phase="forward")


def _eval_shape_probe(task, tmp_path, seed):
    """A static p8 run of 8 steps evaluated at p4 once, after step 1: (its config, the logged
    smoothed training loss of every step, the gap eval loss - smoothed loss at that eval)."""
    per_step = train_run(task, ShapeSchedule.static("p8"), config(max_steps=1), tmp_path / "one").compute
    cfg = config(max_steps=8, seed=seed, smooth_steps=3, eval_shape="p4", eval_points=(0.5 * per_step,))
    train_run(task, ShapeSchedule.static("p8"), cfg, tmp_path / "probe")
    smooth = [json.loads(r)["smoothed"] for r in (tmp_path / "probe" / "metrics.jsonl").read_text().splitlines()]
    (row,) = [json.loads(r) for r in (tmp_path / "probe" / "evals.jsonl").read_text().splitlines()]
    assert row["shape"] == "p4" and row["train_shape"] == "p8" and row["step"] == 1
    assert row["smoothed_train_loss"] == smooth[0]
    gap = row["loss"] - smooth[0]
    assert gap != 0
    return cfg, smooth, gap


def test_loss_trigger_with_an_eval_shape_reads_the_training_loss_in_eval_units(tmp_path, seed):
    """With evals at a fixed eval_shape (the LM's longest context), the plan's loss levels are
    eval losses: the trigger is the smoothed training loss plus its gap to the eval loss at the
    latest eval of the segment. Replayed step by step from a static run, with a level that only
    the shifted loss reaches (or only the unshifted one, when the gap is positive)."""
    task = vit_task(seed)
    cfg, smooth, gap = _eval_shape_probe(task, tmp_path, seed)
    level = min(smooth[:7]) + gap / 2  # reached by smooth + gap or by smooth (before step 8), never both

    def switch_step(shift):  # the first step (0-based) whose trigger reads <= level; the eval is after step 0
        return next((s for s in range(1, 8) if smooth[s - 1] + shift <= level), None)

    assert (switch_step(gap) is None) != (switch_step(0.0) is None)
    plain = config(**{**vars(cfg), "eval_shape": None})
    for name, run_config, shift in (("eval_shape", cfg, gap), ("plain", plain, 0.0)):
        run = train_run(task, ShapeSchedule((("p8", level), ("p4", None)), trigger="loss"), run_config, tmp_path / name)
        expected = switch_step(shift)
        assert [w["step"] for w in run.switches] == ([expected] if expected is not None else []), name


def test_dense_evals_read_the_training_loss_in_eval_units(tmp_path, seed):
    """dense_below is an eval loss (the demo derives it from the targets): with an eval_shape
    the check reads the smoothed training loss shifted by its gap to the latest eval, as the
    loss trigger does (an LM trained at a short context has a training loss far above its
    eval at the longest context, so the raw loss started the dense evals late). Replayed from
    a static run with a level that only the shifted loss reaches, or only the unshifted one."""
    task = vit_task(seed)
    cfg, smooth, gap = _eval_shape_probe(task, tmp_path, seed)
    level = min(smooth[1:8]) + gap / 2

    def first_dense(shift):  # the check after step s (1-based) reads smooth[s - 1] + the gap of the eval at step 1
        return next((s for s in range(2, 9) if smooth[s - 1] + shift <= level), None)

    assert (first_dense(gap) is None) != (first_dense(0.0) is None)
    plain = config(**{**vars(cfg), "eval_shape": None})
    for name, run_config, shift in (("eval_shape", cfg, gap), ("plain", plain, 0.0)):
        run_config = RunConfig(**{**vars(run_config), "dense_below": level, "dense_ratio": 1.0001})
        steps = [e["step"] for e in train_run(task, ShapeSchedule.static("p8"), run_config, tmp_path / name).evals]
        assert steps[0] == 1 and (steps[1] if len(steps) > 1 else None) == first_dense(shift), name


def test_dense_evals_are_at_most_dense_ratio_apart(tmp_path, seed):
    """Once dense, each eval is at the last step before the compute passes dense_ratio times the
    last eval's: consecutive evals at most dense_ratio apart where a step is a smaller part of
    the compute (the earlier rule, eval once past it, let gaps reach the ratio plus a step)."""
    task = vit_task(seed)
    ratio = 1.3
    run = train_run(task, ShapeSchedule.static("p8"), config(max_steps=14, seed=seed, dense_below=1e9,
                                                               dense_ratio=ratio), tmp_path / "run")
    per_step = run.compute / 14
    steps = [e["step"] for e in run.evals]
    assert [e["compute"] for e in run.evals] == pytest.approx([s * per_step for s in steps], rel=1e-12)
    assert steps[0] == 1 and len(steps) >= 8
    for a, b in zip(steps, steps[1:]):
        assert b + 1 > ratio * a  # not one step later than it had to be
        assert b == a + 1 or b <= ratio * a  # and never more than the ratio apart, unless one step is more


def test_warmup_evals_measure_the_curve_before_late_log_spaced_points(tmp_path, seed):
    """Log-spaced points that begin after the warmup (a large budget, small steps) leave the
    curve unmeasured from the warmup to the first point: the run then evaluates at the first
    step after the warmup and every time the compute has grown by the points' ratio, until
    the first point. Points that begin inside the warmup add nothing."""
    task = vit_task(seed)
    per_step = train_run(task, ShapeSchedule.static("p8"), config(max_steps=1), tmp_path / "one").compute
    budget, fraction, n_evals, warmup = 24 * per_step, 0.5, 3, 2
    ratio = (1 / fraction) ** (1 / (n_evals - 1))
    late = config(budget=budget, n_evals=n_evals, first_eval_fraction=fraction, warmup_steps=warmup, seed=seed)
    assert late.warmup_ratio() == pytest.approx(ratio)
    points = late.points()  # 12, ~17 and 24 steps' compute
    expected, last = [], 0.0
    for step in range(1, 25):
        compute = step * per_step
        crossed = any(compute >= p > (step - 1) * per_step for p in points)
        bridge = step > warmup and compute < points[0] and compute >= last * ratio
        if crossed or bridge:
            expected.append(step)
            last = compute
    assert expected[:3] == [3, 5, 8] and 12 in expected  # the warmup's end, then x ratio
    run = train_run(task, ShapeSchedule.static("p8"), late, tmp_path / "late")
    assert [e["step"] for e in run.evals] == expected
    off = train_run(task, ShapeSchedule.static("p8"), RunConfig(**{**vars(late), "warmup_evals": False}),
                    tmp_path / "off")
    assert [e["step"] for e in off.evals] == [s for s in expected if s >= 12]
    assert [e["loss"] for e in off.evals] == [e["loss"] for e in run.evals if e["step"] >= 12]  # evals change nothing
    early = RunConfig(**{**vars(late), "warmup_steps": 20})  # the first point comes inside the warmup
    assert [e["step"] for e in train_run(task, ShapeSchedule.static("p8"), early, tmp_path / "early").evals] == \
        [s for s in expected if s >= 12]
    assert RunConfig(budget=1, first_eval_fraction=1.0, n_evals=3).warmup_ratio() is None  # not every step
    with pytest.raises(TypeError, match="warmup_evals must be a bool"):
        RunConfig(budget=1, warmup_evals=1)


def test_budget_and_target_stop(tmp_path, seed):
    task = vit_task(seed)
    per_step = train_run(task, ShapeSchedule.static("p8"), config(max_steps=1), tmp_path / "probe").compute
    run = train_run(task, ShapeSchedule.static("p8"), config(budget=int(3.5 * per_step)), tmp_path / "budget")
    assert run.stopped == "budget" and run.steps == 4 and run.compute == 4 * per_step
    assert (tmp_path / "budget" / "summary.json").exists() and (tmp_path / "budget" / "ledger.json").exists()
    assert FlopLedger.load(tmp_path / "budget" / "ledger.json") == run.ledger
    stop = train_run(task, ShapeSchedule.static("p8"), config(budget=10**15, eval_points=(per_step,),
                                                              stop_at_loss=1e9), tmp_path / "target")
    assert stop.stopped == "target" and stop.steps == 1


def test_resume_from_a_checkpoint_with_one_flop_cache(tmp_path, seed):
    """Checkpoints written before the per-rank FLOP caches (one cache in run_state) resume."""
    task = vit_task(seed)
    full = train_run(task, ShapeSchedule.static("p8"), config(max_steps=4, seed=seed), tmp_path / "full")
    train_run(task, ShapeSchedule.static("p8"), config(max_steps=2, seed=seed), tmp_path / "old")
    path = tmp_path / "old" / "checkpoint.pt"
    ckpt = torch.load(path, weights_only=False)
    (cache,) = ckpt.pop("flop_caches")
    assert cache  # the signature measured at step 0
    ckpt["run_state"]["flop_cache"] = cache
    torch.save(ckpt, path)
    resumed = train_run(task, ShapeSchedule.static("p8"), config(max_steps=4, seed=seed), tmp_path / "old")
    assert resumed.steps == 4 and resumed.ledger == full.ledger and resumed.compute == full.compute


def test_the_loop_skips_host_value_checks_and_restores_the_setting(tmp_path, monkeypatch, seed):
    """The models build cu_seqlens from Python ints, so the loop turns the value checks (one
    host sync per attention call on a GPU) off, and restores the caller's setting after."""
    calls = []
    original = _checks._check_cu_values
    monkeypatch.setattr(_checks, "_check_cu_values", lambda *a: calls.append(a[0]) or original(*a))
    for task, shape in ((vit_task(seed), "p8"), (lm_task(seed), "ctx8")):
        batch = task.train_batch(0, shape, 0, 1, "cpu")
        task.loss(task.build_model(seed), batch, shape)
        assert calls  # outside the loop the checks are on
        calls.clear()
        run = train_run(task, ShapeSchedule.static(shape), config(max_steps=2, eval_points=(1,)), tmp_path / shape)
        assert run.steps == 2 and len(run.evals) == 1 and calls == []
        assert _checks._validate_override is None
        _checks.set_validation(True)
        try:
            train_run(task, ShapeSchedule.static(shape), config(max_steps=1), tmp_path / f"{shape}-on")
            assert _checks._validate_override is True and calls == []
        finally:
            _checks.set_validation(None)


# -- sweep ---------------------------------------------------------------------------------


class _Crash(Exception):
    pass


class _CrashingTask:
    """A task that raises in the middle of one shape's run (a crash), and counts steps."""

    def __init__(self, task, crash_shape=None, crash_step=None):
        self._task, self.crash_shape, self.crash_step, self.steps = task, crash_shape, crash_step, []

    def __getattr__(self, name):
        return getattr(self._task, name)

    def train_batch(self, step, shape, *args):
        if shape == self.crash_shape and step == self.crash_step:
            raise _Crash(f"crash in {shape} at step {step}")
        self.steps.append((shape, step))
        return self._task.train_batch(step, shape, *args)


def test_sweep_survives_a_crash_without_redoing_or_losing_runs(tmp_path, seed):
    shapes = ["p8", "p4"]
    per_step = train_run(vit_task(seed), ShapeSchedule.static("p4"), config(max_steps=1), tmp_path / "probe").compute
    cfg = config(budget=int(5.5 * per_step), n_evals=3, first_eval_fraction=0.2, checkpoint_every=2, seed=seed)
    reference = run_sweep(vit_task(seed), shapes, cfg, tmp_path / "clean")

    crashing = _CrashingTask(vit_task(seed), crash_shape="p4", crash_step=3)
    with pytest.raises(_Crash):
        run_sweep(crashing, shapes, cfg, tmp_path / "crashy")
    first = tmp_path / "crashy" / "p8.json"
    assert first.exists() and not (tmp_path / "crashy" / "p4.json").exists()
    stamp, content = first.stat().st_mtime_ns, first.read_bytes()
    saved = torch.load(tmp_path / "crashy" / "p4" / "checkpoint.pt", weights_only=False)["run_state"]["step"]
    assert 0 < saved <= 3

    again = _CrashingTask(vit_task(seed))
    records = run_sweep(again, shapes, cfg, tmp_path / "crashy")
    assert first.stat().st_mtime_ns == stamp and first.read_bytes() == content  # not redone, not rewritten
    assert all(shape == "p4" for shape, _ in again.steps)  # p8 not retrained
    assert min(step for _, step in again.steps) == saved  # p4 resumed from its checkpoint, not from 0
    for shape in shapes:
        got, want = records[shape], reference[shape]
        assert [(e["compute"], e["loss"]) for e in got["evals"]] == [(e["compute"], e["loss"]) for e in want["evals"]]
        assert got["ledger"] == want["ledger"] and got["steps"] == want["steps"]


def test_resolution_is_part_of_the_shape(tmp_path, seed):
    task = vit_task(seed)
    assert task.short_name("p4@16") == "p4" and task.short_name("4@8") == "p4@8"
    with pytest.raises(ValueError, match="divide"):
        task.shape("p3")
    per_step = train_run(task, ShapeSchedule.static("p4@8"), config(max_steps=1), tmp_path / "probe").compute
    run = train_run(task, ShapeSchedule(((task.short_name("p4@8"), 1.5 * per_step), ("p4", float("inf")))),
                    config(max_steps=4), tmp_path / "run")
    low, full = run.ledger.counts("p4@8"), run.ledger.counts("p4")
    assert low["steps"] == 2 and full["steps"] == 2
    assert low["tokens"] == 2 * 8 * 4 and full["tokens"] == 2 * 8 * 16  # 2x2 vs 4x4 patch grids
    assert run.ledger.total(shape="p4") > 3 * run.ledger.total(shape="p4@8")
