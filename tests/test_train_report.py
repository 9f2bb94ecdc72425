"""The demo's bookkeeping: first crossing of a target on an eval curve, the target rule,
the measured switch jumps (raw, and effective from switch probes), savings per target and seed, the laws' bound check and
fallback, shape schedules from plans, and the CLI's schedule parser."""

import math
import random
import warnings
from types import SimpleNamespace

import numpy as np
import pytest

from adaptkern.cli.train import parse_schedule
from adaptkern.train.adaptive import (JumpCurve, choose_targets, crossings, effective_jump, first_crossing,
                                     free_switch, probe_switches, switch_jumps, target_entry)
from adaptkern import schedule as ak_schedule
from adaptkern.train.laws import EmpiricalCurve, JoinedCurve, fit_laws
from adaptkern.train.schedule import ShapeSchedule


def _evals(compute, loss):
    rows = [{"compute": float(c), "loss": float(l)} for c, l in zip(compute, loss)]
    random.shuffle(rows)  # order of the rows must not matter
    return rows


def test_first_crossing_interpolates_in_log_compute(seed):
    rng = np.random.default_rng(seed)
    compute = np.geomspace(1e9, 1e12, int(rng.integers(5, 12)))
    loss = 0.5 + 3.0 * (compute / 1e9) ** -rng.uniform(0.2, 0.6)
    k = int(rng.integers(1, len(compute)))
    target = loss[k] + rng.uniform(0, 1) * (loss[k - 1] - loss[k])
    got, how = first_crossing(_evals(compute, loss), target)
    t = (loss[k - 1] - target) / (loss[k - 1] - loss[k])
    want = math.exp(math.log(compute[k - 1]) + t * (math.log(compute[k]) - math.log(compute[k - 1])))
    assert how == "interpolated" and math.isclose(got, want, rel_tol=1e-12)
    assert compute[k - 1] <= got <= compute[k]
    assert first_crossing(_evals(compute, loss), loss.min() - 1e-3) == (None, "not reached")
    assert first_crossing(_evals(compute, loss), loss.max() + 1) == (compute[0], "at first eval")


def test_first_crossing_takes_the_first_of_several():
    compute, loss = [1, 10, 100, 1000], [3.0, 1.0, 2.0, 0.5]
    got, _ = first_crossing(_evals(compute, loss), 1.5)
    assert 1 < got < 10


def _record(compute, loss, initial, stderr=0.0, cross=None):
    evals = [{"compute": float(c), "loss": float(l), "stderr": stderr, "step": 100 + i}
             for i, (c, l) in enumerate(zip(compute, loss))]
    for row in evals if cross else []:
        row["cross"] = {s: row["loss"] + j for s, j in cross.items()}
    return {"evals": evals, "initial": {"loss": initial}}


def test_target_rule(seed):
    rng = np.random.default_rng(seed)
    records = {f"s{i}": _record(np.geomspace(1, 100, 6), np.sort(rng.uniform(0.5, 2, 6))[::-1], 2.3)
               for i in range(3)}
    end = min(np.mean([e["loss"] for e in sorted(r["evals"], key=lambda e: e["compute"])[-2:]])
              for r in records.values())
    targets = choose_targets(records)
    want = [end + f * (2.3 - end) for f in (0.30, 0.25, 0.20, 0.15, 0.10)]
    np.testing.assert_allclose(targets, want, rtol=1e-12)
    # a noisy held-out set lifts the lowest targets to 3 standard errors above the end point
    noisy = {s: _record([e["compute"] for e in r["evals"]], [e["loss"] for e in r["evals"]], 2.3, stderr=0.05)
             for s, r in records.items()}
    assert min(choose_targets(noisy)) >= min(end + 0.15, want[0]) - 1e-12
    with pytest.raises(ValueError, match="two evals"):
        choose_targets({"s": _record([1.0], [1.0], 2.3)})
    with pytest.raises(ValueError, match="learned"):
        choose_targets({"s": _record([1.0, 2.0], [2.5, 2.4], 2.3)})


def test_switch_jumps_are_the_median_rise_forward_only():
    records = {"p16": _record([1, 2, 3], [2.0, 1.9, 1.8], 2.3, cross={"p8": 0.1, "p4": -0.2}),
               "p8": _record([1, 2, 3], [2.0, 1.9, 1.8], 2.3, cross={"p16": 0.3, "p4": 0.05}),
               "p4": _record([1, 2], [2.0, 1.9], 2.3)}
    records["p16"]["evals"][0]["cross"]["p8"] = 2.5  # an outlier: the median ignores it
    jumps = switch_jumps(records, ["p16", "p8", "p4"])
    assert jumps[("p16", "p8")] == pytest.approx(0.1) and jumps[("p16", "p4")] == 0.0  # a fall is no jump
    assert jumps[("p8", "p4")] == pytest.approx(0.05) and ("p8", "p16") not in jumps


class _Law:
    """E(C) = c + (L0 - c)(1 + C/d)^-b, the demo's anchored form, written out here."""

    def __init__(self, c, L0, b, d):
        self.c, self.L0, self.b, self.d = c, L0, b, d

    def predict(self, compute):
        return self.c + (self.L0 - self.c) * (1 + np.asarray(compute, dtype=float) / self.d) ** -self.b

    def inverse(self, loss):
        loss = np.asarray(loss, dtype=float)
        with np.errstate(all="ignore"):
            return np.where(loss > self.c, self.d * (((self.L0 - self.c) / (loss - self.c)) ** (1 / self.b) - 1), np.inf)


def test_effective_jump_makes_the_laws_predict_the_probe(seed):
    """A probe switched a -> b at C_s and reached the target at C_x: the effective jump J is
    the one for which b's law, started from a's loss at C_s plus J, needs C_x - C_s more, so
    a plan switching there predicts what the probe measured. Probes built from a known jump
    (either sign) give it back; a probe no better than a fresh start, or one that never got
    there, is charged a restart (the jump back to b's fresh loss); one that reached the target
    before it switched measured no jump."""
    rng = np.random.default_rng(seed)
    coarse = _Law(0.9, 2.3, rng.uniform(0.8, 1.5), rng.uniform(1e9, 5e9))
    fine = _Law(0.4, 2.3, rng.uniform(0.8, 1.5), rng.uniform(1e10, 5e10))
    switch = rng.uniform(2e9, 2e10)
    loss = float(coarse.predict(switch))
    target = fine.c + rng.uniform(0.3, 0.7) * (loss - 0.1 - fine.c)  # below any landing loss E + J, J >= -0.1
    for true_jump in (rng.uniform(0.05, 0.5), -rng.uniform(0.01, 0.1)):
        crossing = switch + float(fine.inverse(target) - fine.inverse(loss + true_jump))
        got_loss, jump, how = effective_jump(coarse, fine, switch, crossing, target)
        assert got_loss == pytest.approx(loss, rel=1e-12) and how == "measured"
        assert jump == pytest.approx(true_jump, rel=1e-6, abs=1e-9)
    for crossing in (None, switch + 1.01 * float(fine.inverse(target))):
        _, jump, how = effective_jump(coarse, fine, switch, crossing, target)
        assert jump == pytest.approx(2.3 - loss, rel=1e-12) and "restart" in how
    _, jump, how = effective_jump(coarse, fine, switch, 0.9 * switch, target)  # there before it switched
    assert jump is None and "before the switch" in how


def test_jump_curve_between_and_beyond_the_probes(seed):
    rng = np.random.default_rng(seed)
    losses, jumps = np.array([1.2, 1.8, 1.5]), rng.uniform(-0.1, 0.5, 3)  # unsorted, as probes come
    curve = JumpCurve(losses, jumps, fresh=2.3)
    inside = rng.uniform(1.2, 1.8, 5)
    order = np.argsort(losses)
    assert np.allclose(curve(inside), np.interp(inside, losses[order], jumps[order]), rtol=0, atol=1e-15)
    assert curve(np.array([2.1]))[0] == jumps[1]             # an earlier switch: the earliest probe's jump
    assert curve(np.array([1.0]))[0] == pytest.approx(1.3)   # later than any probe: a restart, 2.3 - 1.0
    assert JumpCurve(losses, jumps, fresh=2.3, later=0.7)(np.array([1.0, 1.5]))[0] == 0.7  # or the raw jump
    with pytest.raises(ValueError, match="at least one probe"):
        JumpCurve([], [], fresh=2.3)


def test_probe_switches_are_log_spaced_from_2_to_50_percent():
    assert probe_switches(1e11, 4) == pytest.approx([2e9, 1e11 * 0.02 * 25 ** (1 / 3), 1e11 * 0.02 * 25 ** (2 / 3),
                                                     5e10], rel=1e-12)
    assert probe_switches(1e11, 1) == pytest.approx([1e10], rel=1e-12)
    assert probe_switches(1e11, 0) == []


def test_target_entry_savings_and_upper_bounds():
    compute = np.geomspace(1e9, 1e11, 12)

    def run(scale):
        return _record(compute, 0.5 + 2.0 * (compute / (1e9 * scale)) ** -0.3, 3.0)

    static = {"a": [run(1.0), run(1.2)], "b": [run(0.5), run(0.6)]}  # smaller scale: learns faster
    adaptive = [run(0.3), run(0.4)]
    target = 1.2
    entry = target_entry(target, True, static, adaptive)
    assert entry["best_static_shape"] == "b"
    for a, s, saving in zip(adaptive, static["b"], entry["savings_per_seed"]):
        assert saving == pytest.approx(1 - first_crossing(a["evals"], target)[0] /
                                       first_crossing(s["evals"], target)[0], rel=1e-12)
        assert saving > 0
    assert entry["savings"]["min"] == min(entry["savings_per_seed"]) and entry["savings"]["n"] == 2
    free = entry["free_switch"]
    for i, (switch, saving) in enumerate(zip(free["per_seed"], free["savings_per_seed"])):
        assert switch == free_switch({s: runs[i]["evals"] for s, runs in static.items()}, target)
        assert saving == pytest.approx(1 - switch["flops"] / first_crossing(static["b"][i]["evals"], target)[0])
        assert saving >= -1e-12  # staying on the best static shape is one of the switches
    # a run already below the target at its first eval gives no number (only an upper bound)
    early = target_entry(2.4, False, static, adaptive)
    assert all(v is None for v in early["adaptive_flops"]) and early["savings"]["mean"] is None


def test_crossings_are_first_crossing_at_every_level(seed):
    rng = np.random.default_rng(seed)
    for _ in range(20):
        n = int(rng.integers(1, 15))
        compute, loss = np.sort(rng.uniform(1e6, 1e12, n)), rng.uniform(0.5, 3.0, n)  # noisy, not monotone
        evals = _evals(compute, loss)
        levels = np.concatenate([rng.uniform(0.0, 3.5, 40), loss])  # exact eval losses: the edge cases
        for level, got in zip(levels, crossings(evals, levels)):
            want, how = first_crossing(evals, level)
            if how == "interpolated":
                assert got == pytest.approx(want, rel=1e-12)
            else:
                assert math.isnan(got)


def _log_linear(compute, start, slope):
    """Loss start - slope * ln C: linear in log-compute, which the crossings interpolate exactly."""
    return start - slope * np.log(compute)


def test_free_switch_finds_the_analytic_best_switch(seed):
    """Two curves linear in log-compute: C_a(E) = exp((A - E) / alpha), C_b likewise; the cost
    C_a(E) + C_b(T) - C_b(E) is least where C_a(E) / alpha = C_b(E) / beta. The coarse shape a
    starts lower and flattens, the fine shape b starts higher and falls faster."""
    rng = np.random.default_rng(seed)
    compute = np.geomspace(1e6, 1e12, 61)
    alpha, beta = rng.uniform(0.08, 0.12), rng.uniform(0.18, 0.25)
    switch, c_a = rng.uniform(1.0, 2.0), math.exp(rng.uniform(16.0, 20.0))  # the optimum, placed inside
    start_a = switch + alpha * math.log(c_a)
    start_b = switch + beta * math.log(c_a * beta / alpha)  # C_b(switch) = C_a(switch) * beta / alpha
    runs = {"a": _evals(compute, _log_linear(compute, start_a, alpha)),
            "b": _evals(compute, _log_linear(compute, start_b, beta))}
    assert switch == pytest.approx((start_b / beta - start_a / alpha - math.log(beta) + math.log(alpha))
                                   / (1 / beta - 1 / alpha))
    target = switch - rng.uniform(0.3, 0.6)
    c_b_target = math.exp((start_b - target) / beta)
    want = c_a + c_b_target - math.exp((start_b - switch) / beta)
    assert want < min(c_b_target, math.exp((start_a - target) / alpha))  # the switch pays
    got = free_switch(runs, target)
    assert (got["from"], got["to"]) == ("a", "b")
    assert got["flops"] == pytest.approx(want, rel=1e-4) and got["flops"] >= want * (1 - 1e-12)
    assert got["switch_loss"] == pytest.approx(switch, abs=(start_a - target) / 512 * 2)


def test_free_switch_brute_force_and_edge_cases(seed):
    """Against a scan of first_crossing over a fine grid and every eval loss (and just below
    it: a noisy curve's crossing jumps there), on noisy curves; a static run when no switch
    pays; None when no run reaches the target."""
    rng = np.random.default_rng(seed)
    compute = np.geomspace(1e8, 1e11, 16)
    runs = {s: _evals(compute, 0.5 + rng.uniform(1.5, 3.0) * (compute / 1e8) ** -rng.uniform(0.1, 0.6)
                      + rng.normal(0, 0.02, len(compute))) for s in ("p16", "p8", "p4")}
    target = float(np.median([min(r["loss"] for r in ev) for ev in runs.values()])) + 0.05
    got = free_switch(runs, target)
    best = min((c for c in (first_crossing(ev, target) for ev in runs.values()) if c[1] == "interpolated"),
               default=(math.inf, None))[0]
    for a, ev_a in runs.items():
        for b, ev_b in runs.items():
            c_bt, how = first_crossing(ev_b, target)
            if a == b or how != "interpolated":
                continue
            top = min(min(ev_a, key=lambda r: r["compute"])["loss"], min(ev_b, key=lambda r: r["compute"])["loss"])
            losses = np.array([r["loss"] for r in ev_a + ev_b])
            for level in np.concatenate([np.linspace(target, top, 4001)[1:-1], losses, losses - 1e-9]):
                if not target < level < top:
                    continue
                (c_a, how_a), (c_b, how_b) = first_crossing(ev_a, level), first_crossing(ev_b, level)
                if how_a == how_b == "interpolated":
                    best = min(best, c_a + c_bt - c_b)
    assert got["flops"] == pytest.approx(best, rel=2e-3) and got["flops"] >= best * (1 - 2e-3)
    # a shape that is fastest at every loss: staying on it is the best "switch"
    fast = {name: _evals(compute, _log_linear(compute, start, 0.3)) for name, start in (("fast", 9.0), ("slow", 9.5))}
    got = free_switch(fast, 2.0)
    assert (got["from"], got["to"]) == ("fast", "fast")
    assert got["flops"] == pytest.approx(first_crossing(fast["fast"], 2.0)[0], rel=1e-12)
    assert free_switch(fast, 1.0) is None  # below both curves


def test_a_shape_below_the_target_at_its_first_eval_still_counts_as_the_faster_one(seed):
    """A static run already below the target at its first eval reached it no later than that
    eval: its shape must not lose the 'best static' rank to a slower shape that merely has an
    interpolated number on every seed (that would report a saving against the slow shape)."""
    rng = np.random.default_rng(seed)
    compute = np.geomspace(1e9, 1e11, 12)

    def run(scale, start=0):
        return _record(compute[start:], 0.5 + 2.0 * (compute[start:] / (1e9 * scale)) ** -0.3, 3.0)

    fast = [run(0.5 * rng.uniform(0.9, 1.1)) for _ in range(2)] + [run(0.5, start=6)]  # late first eval
    slow = [run(2.0 * rng.uniform(0.9, 1.1)) for _ in range(3)]
    target = 1.3
    assert first_crossing(fast[2]["evals"], target)[1] == "at first eval"
    entry = target_entry(target, True, {"fast": fast, "slow": slow}, [run(0.5), run(0.5), run(0.5)])
    assert entry["best_static_shape"] == "fast"
    assert entry["static_flops"]["fast"][2] is None and entry["savings_per_seed"][2] is None
    assert entry["savings"]["n"] == 2 and abs(entry["savings"]["mean"]) < 0.15


def test_fit_laws_flags_bounds_and_falls_back_to_the_measured_curve(seed):
    rng = np.random.default_rng(seed)
    compute = np.geomspace(1e9, 1e12, 12)
    L0 = 2.3
    good = 0.4 + (L0 - 0.4) * (1 + compute / 3e9) ** -0.5 * np.exp(rng.normal(0, 1e-3, 12))
    cliff = 0.4 + 1.3 / (1 + np.exp(4 * (np.log(compute) - np.log(1e11)))) + 0.6 * np.exp(-compute / 3e9)
    records = {"good": _record(compute, good, L0), "cliff": _record(compute, cliff, L0)}
    records["good"]["evals"][0]["step"] = 5  # inside the warmup: not fitted
    laws, report = fit_laws(records, warmup_steps=10)
    assert report["good"]["used"] == "anchored power law" and not report["good"]["at_bound"]
    assert report["good"]["n_points"] == 11 and report["good"]["transient_points"] == 1
    assert float(laws["good"].predict(0.0)) == pytest.approx(L0)
    assert report["cliff"]["used"] == "measured curve (fallback)" and report["cliff"]["problem"]
    curve = laws["cliff"]
    assert isinstance(curve, EmpiricalCurve)
    levels = np.array([2.0, 1.5, 1.0])
    np.testing.assert_allclose(curve.predict(curve.inverse(levels)), levels, rtol=1e-9)
    assert float(curve.inverse(L0)) == 0.0 and float(curve.inverse(curve.c)) == np.inf


def test_the_planner_follows_the_measured_transient_then_the_law(seed):
    """Evals inside the warmup are not fitted, and a law extrapolated back to the anchor
    over them can be far off (a warmup holds the loss up): the planner's curve is the
    measured evals up to the first fitted point, then the law, continuous at the joint."""
    rng = np.random.default_rng(seed)
    L0, c, d, b = 5.8, 2.0, 2e9 * rng.uniform(0.8, 1.2), 0.5

    def law(C):
        return c + (L0 - c) * (1 + C / d) ** -b

    late = np.geomspace(1e10, 1e12, 10)
    early = np.array([2e9, 4e9, 7e9])
    held_up = L0 - (L0 - law(early)) * np.array([0.15, 0.4, 0.8])  # the warmup holds the loss up
    record = _record(np.concatenate([early, late]), np.concatenate([held_up, law(late)]), L0)
    for i, row in enumerate(record["evals"]):
        row["step"] = 5 * (i + 1)  # steps 5, 10, 15 are inside a warmup of 15 steps
    laws, report = fit_laws({"s": record}, warmup_steps=15)
    curve = laws["s"]
    assert isinstance(curve, JoinedCurve) and report["s"]["transient_points"] == 3
    assert report["s"]["params"]["b"] == pytest.approx(b, rel=1e-3)  # fitted on the late evals only
    np.testing.assert_allclose(curve.predict(early), held_up, rtol=1e-12)  # the measured evals, not the law
    assert np.all(law(early) < held_up - 0.1)
    np.testing.assert_allclose(curve.predict(late), law(late), rtol=1e-6)
    assert float(curve.predict(0.0)) == pytest.approx(L0)
    joint = float(law(late[0]))
    for level in (float(held_up[1]), joint + 1e-6, joint, joint - 1e-3, 3.0):
        assert float(curve.predict(curve.inverse(level))) == pytest.approx(level, rel=1e-6)
    grid = np.linspace(L0 - 1e-3, c + 0.05, 500)
    assert np.all(np.diff(curve.inverse(grid)) > 0) and np.all(curve.d_inverse(grid) < 0)
    # the plan charges the transient as measured: to a loss inside it, the compute the run spent
    plan = ak_schedule.optimal_schedule(laws, float(held_up[2]), start_loss=L0)
    assert plan.total_compute == pytest.approx(early[2], rel=1e-9)
    # no eval inside the warmup: nothing measured to follow, the law itself
    record["evals"] = record["evals"][3:]
    laws, report = fit_laws({"s": record}, warmup_steps=15)
    assert not isinstance(laws["s"], JoinedCurve) and report["s"]["transient_points"] == 0

def test_schedule_from_plan_and_shape_at():
    seg = lambda shape, compute, end, loss: SimpleNamespace(shape=shape, compute=compute, compute_end=end,
                                                            loss_end=loss)
    plan = SimpleNamespace(segments=[seg("p16", 0.0, 0.0, 2.3), seg("p8", 1e11, 1e11, 1.5),
                                     seg("p4", 5e10, 1.5e11, 1.2)], total_compute=1.5e11)
    schedule = ShapeSchedule.from_plan(plan, trigger="compute")
    assert schedule.shapes == ["p8", "p4"]  # a segment given no compute is dropped
    assert schedule.shape_at(0) == "p8" and schedule.shape_at(1e11 - 1) == "p8"
    assert schedule.shape_at(1e11) == "p4" and schedule.shape_at(1e20) == "p4"  # the last runs to the end
    with pytest.raises(ValueError, match="increase"):
        ShapeSchedule((("a", 5.0), ("b", 3.0)))
    by_loss = ShapeSchedule.from_plan(plan)  # default: the plan's loss levels
    assert by_loss.trigger == "loss" and by_loss.segments == (("p8", 1.5), ("p4", -math.inf))
    assert by_loss.index_at(0.0, None) == 0 and by_loss.index_at(0.0, 1.6) == 0
    assert by_loss.index_at(0.0, 1.5) == 1 and by_loss.index_at(1e30, 9.0, current=1) == 1  # never back
    with pytest.raises(ValueError, match="decrease"):
        ShapeSchedule((("a", 1.0), ("b", 2.0), ("c", 0)), trigger="loss")


def test_parse_schedule():
    s = parse_schedule("p16:2e10, p8:8e10, p4")
    assert s.segments == (("p16", 2e10), ("p8", 8e10), ("p4", math.inf))
    with pytest.raises(ValueError, match="SHAPE:FLOPS"):
        parse_schedule("p16,p8")
    with pytest.raises(ValueError, match="not a number"):
        parse_schedule("p16:lots,p8")
    with pytest.raises(ValueError, match="^--schedule: .*increase"):
        parse_schedule("p16:2e10,p8:1e10,p4")
