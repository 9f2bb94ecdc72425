"""adaptkern.schedule.optimal_schedule: hand-solved cases, brute force over switch points,
unreachable targets, switch charges, plan invariants, bad input, the plot."""

import itertools
import json
import math

import numpy as np
import pytest

import adaptkern as ak
from adaptkern.scaling.shape_law import ShapeLaw
from adaptkern.schedule import Plan, optimal_schedule, plot_plan


class PowerLaw:
    """E(C) = c + a (C + d)^-b, written out for the tests (independent of adaptkern.scaling)."""

    def __init__(self, c, a, b, d=0.0):
        self.c, self.a, self.b, self.d = c, a, b, d

    def predict(self, compute):
        with np.errstate(divide="ignore"):
            return self.c + self.a * (np.asarray(compute, dtype=float) + self.d) ** -self.b

    def inverse(self, loss):
        loss = np.asarray(loss, dtype=float)
        with np.errstate(all="ignore"):
            return np.where(loss > self.c, (self.a / (loss - self.c)) ** (1 / self.b) - self.d, np.inf)

    def d_inverse(self, loss):
        loss = np.asarray(loss, dtype=float)
        with np.errstate(all="ignore"):
            slope = -(self.a ** (1 / self.b)) / self.b * (loss - self.c) ** (-1 / self.b - 1)
        return np.where(loss > self.c, slope, -np.inf)


class ScalarLaw(PowerLaw):
    """The same law through math on Python floats only (no arrays accepted)."""

    def predict(self, compute):
        return self.c + self.a * (float(compute) + self.d) ** -self.b if compute + self.d > 0 else math.inf

    def inverse(self, loss):
        return (self.a / (float(loss) - self.c)) ** (1 / self.b) - self.d

    def d_inverse(self, loss):
        return -(self.a ** (1 / self.b)) / self.b * (float(loss) - self.c) ** (-1 / self.b - 1)


def _compute(law, loss):
    """Compute a shape needs to reach ``loss`` from scratch: never negative, inf at/below c."""
    return np.where(np.asarray(loss) > law.c, np.maximum(law.inverse(loss), 0.0), np.inf)


def _fresh(law):
    with np.errstate(all="ignore"):
        return float(law.predict(0.0))


def _anchored(c, b, d, fresh):
    """E(C) = c + a (C + d)^-b with a set so that E(0) = ``fresh`` (a law anchored at its fresh loss)."""
    return PowerLaw(c, (fresh - c) * d ** b, b, d)


def _patch_laws(rng, n, start=6.0):
    """Shapes like ViT patch sizes: larger patches learn cheaply early but plateau higher.
    Anchored: every law predicts ``start`` at C = 0 (one fresh model)."""
    laws = {}
    for k in range(n):
        c = 2.0 + 0.25 * k + rng.uniform(-0.05, 0.05)
        b = rng.uniform(0.25, 0.45)
        loss_at_1e12 = 4.0 + rng.uniform(-0.2, 0.2) - 0.3 * k  # cheaper shapes are ahead early on
        d = 1e12 / (((start - c) / (loss_at_1e12 - c)) ** (1 / b) - 1)
        laws[f"p{8 * 2 ** k}"] = _anchored(c, b, d, start)
    return laws


def _brute_force(laws, target, start, switch_cost, grid, max_segments=4, jumps=None, order=None):
    """Least cost over every sequence of up to ``max_segments`` shapes (a shape may come back,
    unless ``order`` is given: then only forward in it) with switch losses on ``grid``. A
    shape is usable only at or below its loss at C = 0; a switch from a to b at loss E
    costs ``switch_cost`` plus climbing back from E + jumps[(a, b)] to E along b."""
    levels = np.concatenate([[start], np.sort(grid)[::-1], [target]])
    # an anchored law gives the start back at C=0 only to round-off: usable from the start
    table = {s: np.where(levels > _fresh(law) * (1 + 1e-9), np.inf, _compute(law, levels)) for s, law in laws.items()}
    best = math.inf
    for n_seg in range(1, max_segments + 1):
        cuts = list(itertools.combinations(range(1, len(levels) - 1), n_seg - 1))
        cuts = np.array(cuts, dtype=int).reshape(len(cuts), n_seg - 1)
        bounds = np.hstack([np.zeros((len(cuts), 1), int), cuts, np.full((len(cuts), 1), len(levels) - 1)])
        orders = [o for o in itertools.product(laws, repeat=n_seg) if all(a != b for a, b in zip(o, o[1:]))]
        if order is not None:
            orders = [o for o in orders if all(order.index(a) < order.index(b) for a, b in zip(o, o[1:]))]
        for shapes in orders:
            cost = np.full(len(cuts), switch_cost * (n_seg - 1))
            for i, shape in enumerate(shapes):
                hi, lo = table[shape][bounds[:, i]], table[shape][bounds[:, i + 1]]
                if i and jumps:
                    law = laws[shape]
                    top = np.minimum(levels[bounds[:, i]] + jumps.get((shapes[i - 1], shape), 0.0), _fresh(law))
                    hi = np.where(np.isfinite(hi), _compute(law, top), np.inf)
                with np.errstate(invalid="ignore"):
                    cost = cost + np.where(np.isfinite(lo) & np.isfinite(hi), lo - hi, np.inf)
            best = min(best, float(cost.min()))
    return best


def _brute_grid(target, start, n=70):
    # Geometric towards the target, where the slopes (and so the cost of a misplaced switch) grow.
    return target + (start - target) * np.geomspace(1e-3, 1.0, n)[:-1]


def _check_invariants(plan, laws):
    segs = plan.segments
    tiny = 1e-12 * plan.total_compute  # inverse(predict(0)) is 0 only up to rounding
    assert segs[0].loss_start == plan.start_loss and segs[-1].loss_end == plan.target_loss
    assert segs[0].compute_start == 0.0
    for prev, nxt in zip(segs, segs[1:]):
        assert prev.loss_end == nxt.loss_start and prev.shape != nxt.shape
        assert nxt.compute_start == pytest.approx(prev.compute_end + plan.switch_cost, rel=1e-12)
    for n, seg in enumerate(segs):
        assert seg.loss_start > seg.loss_end > laws[seg.shape].c
        assert seg.loss_start <= _fresh(laws[seg.shape]) * (1 + 1e-12)  # no free descent
        top = min(seg.loss_start + seg.loss_jump, _fresh(laws[seg.shape]))
        if top <= plan.target_loss:  # a negative jump that reached the target at the switch: nothing after
            assert n == len(segs) - 1 and n > 0 and seg.compute == 0.0
            continue
        assert seg.compute > 0  # every segment costs compute
        along = _compute(laws[seg.shape], np.array([top, seg.loss_end]))
        assert seg.compute == pytest.approx(along[1] - along[0], rel=1e-12, abs=tiny)
        assert seg.compute_end == pytest.approx(seg.compute_start + seg.compute, rel=1e-12)
    expected_total = sum(s.compute for s in segs) + plan.switch_cost * plan.num_switches
    assert plan.total_compute == pytest.approx(expected_total, rel=1e-12)
    assert plan.total_compute == segs[-1].compute_end
    for shape, law in laws.items():
        ends = _compute(law, np.array([plan.start_loss, plan.target_loss]))
        assert plan.static_compute[shape] == pytest.approx(ends[1] - ends[0], rel=1e-12, abs=tiny)
    assert plan.best_static_compute == min(plan.static_compute.values())
    assert plan.static_compute[plan.best_static_shape] == plan.best_static_compute
    assert plan.savings == pytest.approx(1 - plan.total_compute / plan.best_static_compute, rel=1e-12)


def test_hand_solved_two_laws():
    # A: E = 2 + 1/C, B: E = 1 + 4/C (b = 1, d = 0), so C_A(E) = 1/(E-2), C_B(E) = 4/(E-1) and
    # |dC/dE| is 1/(E-2)^2 vs 4/(E-1)^2: equal where E-1 = 2(E-2), i.e. E = 3; A is cheaper above.
    # From 11 to 1.5: A 11 -> 3 costs 1/1 - 1/9 = 8/9, B 3 -> 1.5 costs 4/0.5 - 4/2 = 6.
    # A never reaches 1.5 (c = 2); B alone costs 4/0.5 - 4/10 = 7.6.
    laws = {"A": PowerLaw(2.0, 1.0, 1.0), "B": PowerLaw(1.0, 4.0, 1.0)}
    plan = optimal_schedule(laws, 1.5, start_loss=11.0)
    assert [s.shape for s in plan.segments] == ["A", "B"]
    assert plan.segments[0].loss_end == pytest.approx(3.0, rel=1e-13)
    assert plan.segments[0].compute == pytest.approx(8 / 9, rel=1e-12)
    assert plan.segments[1].compute == pytest.approx(6.0, rel=1e-12)
    assert plan.total_compute == pytest.approx(6 + 8 / 9, rel=1e-12)
    assert plan.best_static_shape == "B" and plan.best_static_compute == pytest.approx(7.6, rel=1e-12)
    assert plan.static_compute["A"] == math.inf and plan.to_dict()["static_compute"]["A"] is None
    assert plan.savings == pytest.approx(1 - (62 / 9) / 7.6, rel=1e-12)
    _check_invariants(plan, laws)


def test_crossover_matches_closed_form(seed):
    # Same exponent b: |dC/dE| equal where (E - c1)/(E - c2) = (a1/a2)^(1/(1+b)) =: rho.
    rng = np.random.default_rng(seed)
    b, c2 = rng.uniform(0.2, 0.8), rng.uniform(1.0, 2.0)
    c1, rho, a2 = c2 + rng.uniform(0.2, 1.0), rng.uniform(0.2, 0.8), 10 ** rng.uniform(2, 6)
    a1 = a2 * rho ** (1 + b)
    cross = (c1 - rho * c2) / (1 - rho)
    start, target = cross + rng.uniform(0.5, 3.0), rng.uniform(c2 + 0.05, c1)
    laws = {"coarse": PowerLaw(c1, a1, b), "fine": PowerLaw(c2, a2, b)}
    plan = optimal_schedule(laws, target, start_loss=start)
    assert [s.shape for s in plan.segments] == ["coarse", "fine"]
    assert plan.segments[0].loss_end == pytest.approx(cross, rel=1e-12)

    def inv(a, c, e):
        return (a / (e - c)) ** (1 / b)

    expected = inv(a1, c1, cross) - inv(a1, c1, start) + inv(a2, c2, target) - inv(a2, c2, cross)
    assert plan.total_compute == pytest.approx(expected, rel=1e-11)
    _check_invariants(plan, laws)


@pytest.mark.parametrize("n_shapes", [2, 3])
def test_greedy_plan_matches_brute_force(n_shapes, seed):
    rng = np.random.default_rng(seed)
    laws = _patch_laws(rng, n_shapes)
    target = max(law.c for law in laws.values()) - rng.uniform(0.05, 0.15)
    plan = optimal_schedule(laws, target)
    assert plan.start_loss == pytest.approx(max(float(law.predict(0.0)) for law in laws.values()))
    brute = _brute_force(laws, target, plan.start_loss, 0.0, _brute_grid(target, plan.start_loss))
    assert brute * (1 - 2e-3) <= plan.total_compute <= brute * (1 + 1e-9)
    assert 0.0 <= plan.savings < 1.0 and plan.total_compute <= min(plan.static_compute.values())
    _check_invariants(plan, laws)
    # Pointwise rule: inside every segment its shape has the least |dC/dE| of the usable shapes.
    for seg in plan.segments:
        losses = rng.uniform(seg.loss_end, seg.loss_start, 20)
        slopes = {s: np.where(losses > _fresh(law), np.inf, np.abs(law.d_inverse(losses))) for s, law in laws.items()}
        assert np.all(slopes[seg.shape] <= np.min(list(slopes.values()), axis=0) * (1 + 1e-9))


def test_switch_cost_dynamic_programme_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    laws = _patch_laws(rng, 3)
    target = max(law.c for law in laws.values()) - 0.1
    free = optimal_schedule(laws, target)
    kappa = (free.best_static_compute - free.total_compute) * rng.uniform(0.05, 0.4)
    plan = optimal_schedule(laws, target, switch_cost=kappa)
    brute = _brute_force(laws, target, plan.start_loss, kappa, _brute_grid(target, plan.start_loss))
    assert brute * (1 - 2e-3) <= plan.total_compute <= brute * (1 + 1e-9)
    _check_invariants(plan, laws)


def test_switch_cost_limits(seed):
    rng = np.random.default_rng(seed)
    laws = _patch_laws(rng, 4)
    target = max(law.c for law in laws.values()) - 0.1
    greedy = optimal_schedule(laws, target)
    assert greedy.num_switches >= 1 and greedy.savings > 0
    tiny = optimal_schedule(laws, target, switch_cost=greedy.total_compute * 1e-14)
    assert tiny.total_compute == pytest.approx(greedy.total_compute, rel=1e-9)
    assert [s.shape for s in tiny.segments] == [s.shape for s in greedy.segments]
    huge = optimal_schedule(laws, target, switch_cost=greedy.best_static_compute)
    assert len(huge.segments) == 1 and huge.segments[0].shape == greedy.best_static_shape
    assert huge.total_compute == pytest.approx(greedy.best_static_compute, rel=1e-12) and huge.savings == 0
    costs = np.sort(rng.uniform(0, greedy.best_static_compute - greedy.total_compute, 4))
    plans = [optimal_schedule(laws, target, switch_cost=k) for k in costs]
    for cheaper, dearer in zip(plans, plans[1:]):
        assert cheaper.total_compute <= dearer.total_compute * (1 + 1e-12)
        assert cheaper.num_switches >= dearer.num_switches
    for plan in plans + [tiny, huge]:
        assert greedy.total_compute <= plan.total_compute * (1 + 1e-9) <= plan.best_static_compute * (1 + 2e-9)
        _check_invariants(plan, laws)


def test_shape_that_cannot_reach_target_is_used_only_above_its_asymptote(seed):
    rng = np.random.default_rng(seed)
    for _ in range(100):  # draw until the coarse shape is the cheapest one at the start
        laws = _patch_laws(rng, 3)
        coarse = max(laws, key=lambda s: laws[s].c)
        start = min(float(law.predict(0.0)) for law in laws.values())  # no shape is free yet
        slopes = {s: np.abs(law.d_inverse(start)) for s, law in laws.items()}
        if min(slopes, key=slopes.get) == coarse:
            break
    target = rng.uniform(max(law.c for s, law in laws.items() if s != coarse), laws[coarse].c)
    plan = optimal_schedule(laws, target, start_loss=start)
    assert plan.static_compute[coarse] == math.inf and plan.best_static_shape != coarse
    assert plan.segments[0].shape == coarse and plan.segments[-1].shape != coarse
    _check_invariants(plan, laws)  # includes: every segment ends above its shape's asymptote
    brute = _brute_force(laws, target, plan.start_loss, 0.0, _brute_grid(target, plan.start_loss))
    assert brute * (1 - 2e-3) <= plan.total_compute <= brute * (1 + 1e-9)


def test_no_shape_reaches_target():
    laws = {"a": PowerLaw(2.0, 1.0, 0.5, 1.0), "b": PowerLaw(2.5, 1.0, 0.5, 1.0)}
    with pytest.raises(ValueError, match=r"no shape reaches target_loss.*asymptotes.*'a': 2.*'b': 2.5"):
        optimal_schedule(laws, 1.9)
    with pytest.raises(ValueError, match="no shape reaches"):
        optimal_schedule(laws, 2.0)  # reaching the asymptote itself takes infinite compute


def test_scalar_only_laws_give_the_same_plan(seed):
    rng = np.random.default_rng(seed)
    laws = _patch_laws(rng, 3)
    scalar = {s: ScalarLaw(law.c, law.a, law.b, law.d) for s, law in laws.items()}
    target = max(law.c for law in laws.values()) - 0.1
    for kappa in (0.0, 1e12):
        a, b = optimal_schedule(laws, target, switch_cost=kappa), optimal_schedule(scalar, target, switch_cost=kappa)
        assert [s.shape for s in a.segments] == [s.shape for s in b.segments]
        assert a.total_compute == pytest.approx(b.total_compute, rel=1e-9)


def test_bad_input():
    good = {"a": PowerLaw(1.0, 1.0, 0.5, 1.0)}

    class NoInverse:
        c = 1.0

        def predict(self, compute):
            return 2.0

    class NoAsymptote:
        predict = inverse = d_inverse = PowerLaw.predict

    cases = [
        (dict(laws={}, target_loss=1.5), ValueError, "laws"),
        (dict(laws=[good["a"]], target_loss=1.5), TypeError, r"^adaptkern\.schedule\.optimal_schedule: laws must be"),
        (dict(laws={"x": NoInverse()}, target_loss=1.5), ValueError, r"laws\['x'\] lacks inverse, d_inverse"),
        (dict(laws={"x": NoAsymptote()}, target_loss=1.5), ValueError, r"laws\['x'\] lacks c"),
        (dict(laws=good, target_loss=0.0), ValueError, "target_loss"),
        (dict(laws=good, target_loss=-1.0), ValueError, "target_loss"),
        (dict(laws=good, target_loss="1.5"), TypeError, "target_loss"),
        (dict(laws=good, target_loss=math.nan), ValueError, "target_loss"),
        (dict(laws=good, target_loss=1.5, start_loss=1.5), ValueError, "start_loss"),
        (dict(laws=good, target_loss=1.5, start_loss=1.2), ValueError, "start_loss"),
        (dict(laws=good, target_loss=5.0), ValueError, "target_loss.*nothing to train"),
        (dict(laws=good, target_loss=1.5, switch_cost=-1.0), ValueError, "switch_cost"),
        (dict(laws={"a": PowerLaw(1.0, 1.0, 0.5)}, target_loss=1.5), ValueError, "start_loss"),
        (dict(laws=good, target_loss=1.5, grid_size=100.0), TypeError, "grid_size must be an int >= 16, got float"),
        (dict(laws=good, target_loss=1.5, grid_size=8), ValueError,
         r"grid_size must be an int in \[16, 1048576\], got 8"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            optimal_schedule(**kwargs)


def test_public_name_and_plot(tmp_path, seed):
    assert ak.schedule.optimal_schedule is optimal_schedule
    rng = np.random.default_rng(seed)
    laws = _patch_laws(rng, 3)
    plan = optimal_schedule(laws, max(law.c for law in laws.values()) - 0.1)
    assert isinstance(plan, Plan) and "savings" in plan.summary()
    data = json.loads(json.dumps(plan.to_dict(), allow_nan=False))
    assert [seg["shape"] for seg in data["segments"]] == [seg.shape for seg in plan.segments]
    assert data["total_compute"] == plan.total_compute and data["num_switches"] == plan.num_switches
    path = plot_plan(plan, laws, tmp_path / "plan.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_real_shape_laws(seed):
    rng = np.random.default_rng(seed)
    laws = _patch_laws(rng, 3)
    target = max(law.c for law in laws.values()) - 0.1
    real = {s: ak.scaling.ShapeLaw(c=law.c, a=law.a, b=law.b, d=law.d) for s, law in laws.items()}
    for kappa in (0.0, 1e12):
        mine, theirs = optimal_schedule(laws, target, switch_cost=kappa), optimal_schedule(real, target, switch_cost=kappa)
        assert [s.shape for s in theirs.segments] == [s.shape for s in mine.segments]
        assert theirs.total_compute == pytest.approx(mine.total_compute, rel=1e-9)
        _check_invariants(theirs, laws)
    # Laws fitted to noiseless points of the true curves plan (nearly) the same schedule.
    compute = np.geomspace(1e11, 1e16, 12)
    fitted = {s: ak.scaling.fit_shape_law(compute, law.predict(compute)) for s, law in laws.items()}
    plan = optimal_schedule(fitted, target)
    assert plan.total_compute == pytest.approx(optimal_schedule(laws, target).total_compute, rel=1e-3)


def test_no_free_descent_above_a_laws_fresh_loss():
    """The old planner let a shape descend for 0 FLOPs from the plan's start down to its own
    loss at C = 0 (the issue-16 "free ride"); now a shape is used only at or below it."""
    # fine: fresh 3.0, slow; coarse: fresh 2.5 (a law fitted without the early points), fast.
    fine = PowerLaw(1.0, 2.0 * 1e10 ** 0.5, 0.5, 1e10)
    coarse = PowerLaw(1.5, 1.0 * 1e8 ** 0.5, 0.5, 1e8)
    laws = {"fine": fine, "coarse": coarse}
    plan = optimal_schedule(laws, 1.6)
    assert plan.start_loss == pytest.approx(3.0)
    assert plan.segments[0].shape == "fine" and plan.segments[0].compute > 0
    assert all(seg.compute > 0 for seg in plan.segments)
    for seg in plan.segments:
        assert seg.loss_start <= _fresh(laws[seg.shape]) * (1 + 1e-12)
    # brute force with the same rule agrees
    grid = np.append(_brute_grid(1.6, plan.start_loss), 2.5)  # with the kink where coarse becomes usable
    brute = _brute_force(laws, 1.6, plan.start_loss, 0.0, grid)
    assert brute * (1 - 2e-3) <= plan.total_compute <= brute * (1 + 1e-9)
    with pytest.raises(ValueError, match=r"start_loss=4 is above every law's loss at C=0"):
        optimal_schedule(laws, 1.6, start_loss=4.0)


@pytest.mark.parametrize("ordered", [False, True])
def test_switch_jumps_and_order_match_brute_force(seed, ordered):
    rng = np.random.default_rng(seed)
    laws = _patch_laws(rng, 3)
    target = max(law.c for law in laws.values()) - 0.1
    free = optimal_schedule(laws, target)
    names = list(laws)[::-1]  # coarse to fine: p32, p16, p8
    jumps = {(a, b): rng.uniform(0.02, 0.3) for a in laws for b in laws if a != b}
    order = names if ordered else None
    plan = optimal_schedule(laws, target, switch_jump=jumps, order=order)
    grid = _brute_grid(target, plan.start_loss, n=60)
    brute = _brute_force(laws, target, plan.start_loss, 0.0, grid, max_segments=3, jumps=jumps, order=order)
    # the programme switches on its own (finer) grid: it may beat the brute force's grid slightly
    # upper bound: round-off only (the DP and the brute force sum the same segments in another order)
    assert brute * (1 - 2e-2) <= plan.total_compute <= brute * (1 + 1e-6)
    assert plan.total_compute >= free.total_compute * (1 - 1e-9)  # jumps never make a plan cheaper
    _check_invariants(plan, laws)
    for prev, nxt in zip(plan.segments, plan.segments[1:]):
        assert nxt.loss_jump == jumps[(prev.shape, nxt.shape)]
        if ordered:
            assert names.index(prev.shape) < names.index(nxt.shape)
    data = json.loads(json.dumps(plan.to_dict(), allow_nan=False))
    assert len(data["switch_jumps"]) == 6 and (data["order"] == names if ordered else data["order"] is None)
    # the plan's compute at a loss along its segments: the target costs the total, the start 0
    assert plan.compute_at(plan.target_loss, laws) == pytest.approx(plan.total_compute, rel=1e-9)
    assert plan.compute_at(plan.start_loss, laws) == pytest.approx(0.0, abs=1e-9 * plan.total_compute)


def test_a_plan_begins_on_any_shape_from_the_lowest_fresh_loss(seed):
    """Laws anchored at their own fresh models' losses, as the demo fits them (each shape's
    measured step-0 loss; they differ by initialisation noise). Planned from the highest, the
    plan must begin on that shape, and where another shape is the best static run it pays for
    a segment the jump throws away; planned from the lowest, which the demo does, any shape
    may begin it, so it is never predicted worse than the best static shape."""
    rng = np.random.default_rng(seed)
    low, high = 2.29 + rng.uniform(-0.01, 0.01), 2.31 + rng.uniform(-0.01, 0.01)

    # coarse learns fast and plateaus high; fine is the best static shape to the target
    laws = {"coarse": _anchored(0.7, 2.5, 1e11 * rng.uniform(0.5, 2.0), high),
            "fine": _anchored(0.2, 1.0, 1e10 * rng.uniform(0.5, 2.0), low)}
    kwargs = dict(switch_jump={("coarse", "fine"): rng.uniform(2.0, 3.0)}, order=["coarse", "fine"])
    target = 0.8
    from_high = optimal_schedule(laws, target, start_loss=high, **kwargs)
    assert from_high.best_static_shape == "fine"
    assert [seg.shape for seg in from_high.segments] == ["coarse", "fine"] and from_high.savings < 0
    from_low = optimal_schedule(laws, target, start_loss=low, **kwargs)
    assert [seg.shape for seg in from_low.segments] == ["fine"]
    assert from_low.total_compute == pytest.approx(from_low.best_static_compute, rel=1e-12)
    _check_invariants(from_low, laws)


def test_a_jump_that_depends_on_the_switch_loss(seed):
    """An effective jump, measured by switch probes, is a function of the loss at the switch
    (the demo's step 4b): the planner charges it where it switches, and its plan is the best
    single switch of a dense scan; a constant function plans as the constant; a negative
    jump (a switched run that beat the new shape's law) makes switching cheaper; a switch
    that would land at or below the new shape's asymptote is not taken; a jump function
    giving NaN is an error naming its pair."""
    rng = np.random.default_rng(seed)
    laws = _patch_laws(rng, 2)  # p8 fine (lower c), p16 coarse
    order, pair = ["p16", "p8"], ("p16", "p8")
    target = laws["p16"].c - 0.1  # only p8 gets there
    start = _fresh(laws["p8"])
    levels = np.linspace(target, start, 200001)[1:-1]
    ahead = _compute(laws["p8"], levels) - _compute(laws["p16"], levels)  # > 0: p16 got there cheaper
    sweet = levels[np.argmax(ahead)]  # no jump there, a steep one elsewhere

    def jump(losses):
        return 1.5 * (1.0 - np.exp(-(((np.asarray(losses) - sweet) / 0.3) ** 2)))

    plan = optimal_schedule(laws, target, switch_jump={pair: jump}, order=order)
    top = np.minimum(levels + jump(levels), start)
    scan = _compute(laws["p16"], levels) + _compute(laws["p8"], target) - _compute(laws["p8"], top)
    best = min(float(scan.min()), float(_compute(laws["p8"], target)))
    assert best * (1 - 1e-9) <= plan.total_compute <= best * (1 + 1e-3)
    # a switch at the sweet spot pays exactly when p16 is ahead there
    assert [seg.shape for seg in plan.segments] == (order if ahead.max() > 0 else ["p8"])
    if len(plan.segments) == 2:
        assert plan.segments[1].loss_jump == pytest.approx(float(jump(plan.segments[1].loss_start)), rel=1e-12)
    assert plan.switch_jumps == {pair: "a function of the switch loss"}
    assert plan.compute_at(target, laws) == pytest.approx(plan.total_compute, rel=1e-9)
    _check_invariants(plan, laws)

    constant = optimal_schedule(laws, target, switch_jump={pair: 0.2}, order=order)
    as_function = optimal_schedule(laws, target, switch_jump={pair: lambda e: np.full(np.shape(e), 0.2)}, order=order)
    assert as_function.total_compute == constant.total_compute
    assert [vars(s) for s in as_function.segments] == [vars(s) for s in constant.segments]
    free = optimal_schedule(laws, target, switch_jump={pair: 0.0}, order=order)
    negative = optimal_schedule(laws, target, switch_jump={pair: lambda e: np.full(np.shape(e), -0.1)}, order=order)
    assert negative.total_compute < free.total_compute
    below = optimal_schedule(laws, target, order=order,
                             switch_jump={pair: lambda e: laws["p8"].c - np.asarray(e) - 0.01})
    assert [seg.shape for seg in below.segments] == ["p8"]
    with pytest.raises(ValueError, match=r"switch_jump\[\('p16', 'p8'\)\]\(.*\) is nan"):
        optimal_schedule(laws, target, switch_jump={pair: lambda e: np.full(np.shape(e), np.nan)}, order=order)


def test_a_negative_jump_that_lands_below_the_target_reaches_it_at_the_switch(seed):
    """A measured jump can be negative (the switched run beat the new shape's law); one that
    would land below the target lands at it: the switch reached the target, nothing is spent
    after it, and no segment has negative compute (it used to: the landing's compute was
    subtracted from the target's). Against a dense scan of single switch points."""
    rng = np.random.default_rng(seed)
    laws = _patch_laws(rng, 2)
    order, pair = ["p16", "p8"], ("p16", "p8")
    target = laws["p16"].c + rng.uniform(0.05, 0.3)  # both shapes get there
    start = _fresh(laws["p8"])
    drop = rng.uniform(0.2, 0.8) * (start - target)  # a gain large enough to overshoot the target
    plan = optimal_schedule(laws, target, switch_jump={pair: lambda e: np.full(np.shape(e), -drop)}, order=order,
                            grid_size=2 ** 14)  # the best switch is a kink (landing at the target): a finer scan
    levels = np.append(np.linspace(target, start, 200001)[1:-1], target + drop)  # and the kink itself
    landed = levels - drop
    after = np.where(landed > laws["p8"].c,
                     _compute(laws["p8"], target) - _compute(laws["p8"], np.maximum(landed, target)), np.inf)
    scan = _compute(laws["p16"], levels) + after
    best = min(float(scan.min()), float(_compute(laws["p8"], target)), float(_compute(laws["p16"], target)))
    assert best * (1 - 1e-9) <= plan.total_compute <= best * (1 + 1e-3)
    assert all(seg.compute >= 0 for seg in plan.segments)
    if len(plan.segments) == 2 and plan.segments[1].loss_start - drop <= target:
        assert plan.segments[1].compute == 0.0  # reached at the switch
    assert plan.compute_at(target, laws) == pytest.approx(plan.total_compute, rel=1e-9)
    _check_invariants(plan, laws)


def test_jumps_and_order_reject_bad_input():
    laws = {"a": PowerLaw(1.0, 1.0, 0.5, 1.0), "b": PowerLaw(1.2, 1.0, 0.5, 1.0)}
    with pytest.raises(ValueError, match="switch_jump must be >= 0"):
        optimal_schedule(laws, 1.5, switch_jump=-0.1)
    with pytest.raises(ValueError, match=r"switch_jump keys must be \(from_shape, to_shape\)"):
        optimal_schedule(laws, 1.5, switch_jump={("a", "z"): 0.1})
    with pytest.raises(ValueError, match="order must list every shape"):
        optimal_schedule(laws, 1.5, order=["a"])


def test_start_at_the_anchor_of_an_anchored_law(seed):
    """A law anchored at the measured step-0 loss L0 gives L0 back at C=0 only to round-off
    (c + a d^-b with a = (L0 - c) d^b): planning from start_loss=L0 must work. The first
    parameters are a demo fit whose predict(0) rounds 1 ulp below L0."""
    rng = np.random.default_rng(seed)
    cases = [(2.3087015259079635, 0.6912289103424166, 1.5378253397210306, 26607841559.116005)]
    cases += [(rng.uniform(2, 5), rng.uniform(0.1, 1.5), rng.uniform(0.2, 3), 10 ** rng.uniform(6, 12))
              for _ in range(20)]
    for L0, c, b, d in cases:
        law = ShapeLaw(c=c, a=(L0 - c) * d ** b, b=b, d=d)
        plan = optimal_schedule({"p16": law}, c + 0.5 * (L0 - c), start_loss=L0)
        assert plan.start_loss == pytest.approx(L0, rel=1e-9) and plan.total_compute > 0
