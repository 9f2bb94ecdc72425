"""The demo's bookkeeping: first crossing of the target on an eval curve, the target rule,
the verdict (its claim follows its numbers), shape schedules from plans, and the CLI's
schedule parser."""

import math
import random
import warnings
from types import SimpleNamespace

import numpy as np
import pytest

from adaptkern.cli.train import parse_schedule
from adaptkern.train import adaptive
from adaptkern.train.adaptive import choose_target, first_crossing, fit_laws
from adaptkern.train.report import compare
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


def test_target_rule(seed):
    rng = np.random.default_rng(seed)
    records = {f"s{i}": {"evals": _evals(np.geomspace(1, 100, 6), np.sort(rng.uniform(0.1, 3, 6))[::-1])}
               for i in range(3)}
    finals = {s: min(e["loss"] for e in r["evals"]) for s, r in records.items()}
    best = min(finals, key=finals.get)
    last_two = sorted(records[best]["evals"], key=lambda e: e["compute"])[-2:]
    assert choose_target(records) == max(e["loss"] for e in last_two)
    with pytest.raises(ValueError, match="two evals"):
        choose_target({"s": {"evals": [{"compute": 1.0, "loss": 1.0}]}})


@pytest.mark.parametrize("adaptive_factor", [0.5, 1.0, 1.5, None])
def test_verdict_claim_follows_the_numbers(seed, adaptive_factor):
    rng = np.random.default_rng(seed)
    static = {"a": float(rng.uniform(1, 2)) * 1e10, "b": float(rng.uniform(1, 2)) * 1e10, "c": None}
    best = min(v for v in static.values() if v)
    adaptive = None if adaptive_factor is None else best * adaptive_factor
    v = compare(static, adaptive)
    assert v["best_static_flops"] == best and static[v["best_static_shape"]] == best
    if adaptive is None:
        assert v["adaptive_wins"] is False and "did NOT reach" in v["claim"]
    else:
        assert v["adaptive_wins"] == (adaptive < best)
        assert math.isclose(v["savings"], 1 - adaptive / best)
        assert ("did NOT" in v["claim"]) == (adaptive >= best)
    assert compare({"a": None}, None)["claim"].startswith("neither")
    assert compare({"a": None}, 1e9)["adaptive_wins"] is True


def test_verdict_claims_nothing_from_a_first_eval_upper_bound():
    """Both runs already below the target at their first eval: their FLOPs to target are
    only upper bounds (the eval spacing), so no saving and no winner are claimed."""
    target = 2.0
    static, static_how = first_crossing(_evals([1.25e9, 1e10], [1.9, 1.2]), target)
    ours, ours_how = first_crossing(_evals([1.02e9, 1e10], [1.95, 1.1]), target)
    assert static_how == ours_how == "at first eval"
    v = compare({"p4": static, "p8": None}, ours, static_how={"p4": static_how, "p8": "not reached"},
                adaptive_how=ours_how)
    assert v["savings"] is None and v["adaptive_wins"] is None
    assert "first eval" in v["claim"] and "no comparison" in v["claim"] and "fewer" not in v["claim"]
    # one side an upper bound is enough
    for how in ({"static_how": {"p4": "at first eval"}, "adaptive_how": "interpolated"},
                {"static_how": {"p4": "interpolated"}, "adaptive_how": "at first eval"}):
        v = compare({"p4": 1.25e9}, 1.02e9, **how)
        assert v["savings"] is None and v["adaptive_wins"] is None and "first eval" in v["claim"]
    # interpolated on both sides: the comparison stands
    v = compare({"p4": 1.25e9}, 1.02e9, static_how={"p4": "interpolated"}, adaptive_how="interpolated")
    assert v["adaptive_wins"] is True and math.isclose(v["savings"], 1 - 1.02 / 1.25)
    # an upper bound beside a run that never reached the target still decides it
    assert compare({"p4": 1.25e9}, None, static_how={"p4": "at first eval"})["adaptive_wins"] is False
    assert compare({"p4": None}, 1e9, adaptive_how="at first eval")["adaptive_wins"] is True


def test_verdict_without_an_adaptive_run():
    v = compare({"a": 1e10, "b": None}, None, no_adaptive_run="no law could be fitted")
    assert v["adaptive_wins"] is None and v["savings"] is None
    assert v["claim"] == "no adaptive run: no law could be fitted"
    assert v["best_static_shape"] == "a" and v["best_static_flops"] == 1e10


def test_fit_laws_plans_only_with_clean_fits(monkeypatch):
    """A fit that did not converge or warned is reported under fit errors and is not a law."""
    def fake_fit(compute, loss):
        kind = {3.0: "clean", 2.0: "unconverged", 1.0: "warned"}[float(loss[0])]
        if kind == "warned":
            warnings.warn("covariance of the parameters could not be estimated")
        return SimpleNamespace(kind=kind, fit_info={"converged": kind != "unconverged", "message": "max iter"})

    monkeypatch.setattr(adaptive, "fit_shape_law", fake_fit)
    records = {s: {"evals": _evals([1e9, 1e10, 1e11], [loss, 0.5, 0.4])}
               for s, loss in (("clean", 3.0), ("unconverged", 2.0), ("warned", 1.0))}
    laws, errors = fit_laws(records)
    assert list(laws) == ["clean"] and laws["clean"].kind == "clean"
    assert set(errors) == {"unconverged", "warned"}
    assert "did not converge" in errors["unconverged"] and "warned" in errors["warned"]


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
