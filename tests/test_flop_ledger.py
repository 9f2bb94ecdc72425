"""ak.flops.FlopLedger: recording against plain dict arithmetic, exactness beyond 2^53,
JSON round trips, atomic saves, idempotent resume, merging, the distributed sum (2 gloo
processes), measure_step against FlopCounterMode, and compare_flops."""

import datetime
import json
import os
import random

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.flop_counter import FlopCounterMode

import adaptkern as ak
from adaptkern.flops import FlopLedger, compare_flops, measure_step

PHASES = ["forward", "backward", "optimizer"]


def _random_steps(rng, n, shapes, big=2**70):
    """[(step, shape, {phase: flops}, samples, tokens)], steps increasing with gaps."""
    steps, step = [], rng.randrange(0, 5)
    for _ in range(n):
        flops = {p: rng.randrange(0, big) for p in rng.sample(PHASES, rng.randint(1, 3))}
        steps.append((step, rng.choice(shapes), flops, rng.randrange(0, 100), rng.randrange(0, 10**6)))
        step += rng.randint(1, 3)
    return steps


def _record_all(ledger, steps, kind="train"):
    return [ledger.record(s, shape, f, samples=n, tokens=t, kind=kind) for s, shape, f, n, t in steps]


def _expected(steps):
    """Per-(shape, phase) FLOPs and per-shape [steps, samples, tokens] by plain dict arithmetic."""
    flops, counts = {}, {}
    for _, shape, f, n, t in steps:
        for phase, v in f.items():
            flops[(shape, phase)] = flops.get((shape, phase), 0) + v
        c = counts.setdefault(shape, [0, 0, 0])
        c[0], c[1], c[2] = c[0] + 1, c[1] + n, c[2] + t
    return flops, counts


def _assert_matches(ledger, flops, counts):
    assert ledger.total() == sum(flops.values())
    assert {(s, p): v for s, row in ledger.table().items() for p, v in row.items()} == flops
    for shape in {s for s, _ in flops}:
        assert ledger.total(shape=shape) == sum(v for (s, _), v in flops.items() if s == shape)
    for phase in {p for _, p in flops}:
        assert ledger.by_phase()[phase] == sum(v for (_, p), v in flops.items() if p == phase)
    for shape, (n_steps, samples, tokens) in counts.items():
        assert ledger.counts(shape) == {"steps": n_steps, "samples": samples, "tokens": tokens}
    assert ledger.counts()["samples"] == sum(c[1] for c in counts.values())


def test_record_matches_dict_arithmetic():
    rng = random.Random(torch.initial_seed())
    steps = _random_steps(rng, 40, ["p8", "p16", 32, (16, 24)])
    ledger = FlopLedger()
    assert all(_record_all(ledger, steps))
    flops, counts = _expected([(s, str(shape), f, n, t) for s, shape, f, n, t in steps])
    _assert_matches(ledger, flops, counts)
    assert ledger.last_step() == steps[-1][0] and ledger.last_step("eval") is None
    assert ledger.total(shape=["p8", "p16"], phase="forward") == sum(
        v for (s, p), v in flops.items() if s in ("p8", "p16") and p == "forward")
    assert ledger.total(shape=(16, 24)) == ledger.by_shape()["(16, 24)"]
    assert "all" in ledger.summary() and "p8" in repr(ledger)


def test_integers_beyond_2_53_stay_exact(tmp_path):
    values = [2**53 + 1, 2**64 + 3, 10**25 + 7, 2**63 - 1, 1]
    ledger = FlopLedger()
    for step, v in enumerate(values):
        ledger.record(step, "p16", {"forward": v, "backward": 2 * v + 1}, tokens=v)
    expected = sum(values) + sum(2 * v + 1 for v in values)
    assert float(expected) == float(expected + 1)  # a double could not hold it
    assert ledger.total() == expected and ledger.counts("p16")["tokens"] == sum(values)
    restored = FlopLedger.load(ledger.save(tmp_path / "ledger.json"))
    assert restored == ledger and restored.total() == expected
    assert FlopLedger.from_dict(json.loads(json.dumps(ledger.to_dict()))).total() == expected


def test_resume_ignores_replayed_steps(tmp_path):
    rng = random.Random(torch.initial_seed())
    steps = _random_steps(rng, 30, ["p8", "p16"])
    crash, checkpoint = rng.randrange(10, 30), rng.randrange(1, 10)
    path = tmp_path / "ledger.json"

    ledger = FlopLedger.load(path, missing_ok=True)  # first start: no file yet
    for i in range(crash):
        _record_all(ledger, steps[i:i + 1])
        ledger.save(path)  # the ledger is saved every step, the model only at `checkpoint`
    resumed = FlopLedger.load(path)
    accepted = _record_all(resumed, steps[checkpoint:])  # the run replays from its checkpoint
    assert accepted == [False] * (crash - checkpoint) + [True] * (len(steps) - crash)
    reference = FlopLedger()
    _record_all(reference, steps)
    assert resumed == reference
    _assert_matches(resumed, *_expected(steps))

    # Each kind of step has its own watermark: an eval at a committed train step counts.
    assert resumed.record(steps[-1][0], "p16", 123, samples=7, kind="eval")
    assert not resumed.record(steps[-1][0], "p16", 123, kind="eval")
    assert resumed.total(phase="eval") == 123 and resumed.counts("p16", kind="eval")["samples"] == 7
    assert not [name for name in os.listdir(tmp_path) if name != "ledger.json"]  # no temp files left


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ledger.json"
    old = FlopLedger()
    old.record(0, "p8", {"forward": 5})
    old.save(path)
    new = old.copy()
    new.record(1, "p8", {"forward": 7})

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(json, "dump", crash)
    with pytest.raises(OSError, match="disk full"):
        new.save(path)
    monkeypatch.undo()
    assert FlopLedger.load(path) == old and os.listdir(tmp_path) == ["ledger.json"]
    new.save(path)
    assert FlopLedger.load(path) == new


def test_merge_adds_runs():
    rng = random.Random(torch.initial_seed())
    a_steps, b_steps = _random_steps(rng, 12, ["p8", "p16"]), _random_steps(rng, 9, ["p16", "p32"])
    a, b = FlopLedger(), FlopLedger()
    _record_all(a, a_steps)
    _record_all(b, b_steps)
    a.add("p32", "pi_resize", 999)
    merged = a + b
    flops, counts = _expected(a_steps + b_steps)
    flops[("p32", "pi_resize")] = flops.get(("p32", "pi_resize"), 0) + 999
    _assert_matches(merged, flops, counts)
    assert merged.last_step() == max(a_steps[-1][0], b_steps[-1][0])
    assert a.total() == sum(v for (s, p), v in _expected(a_steps)[0].items()) + 999  # operands untouched


def test_bad_input():
    ledger = FlopLedger()
    with pytest.raises(TypeError, match=r"flops\['forward'\] must be an int"):
        ledger.record(0, "p8", {"forward": 1.5e9})
    with pytest.raises(TypeError, match="flops"):
        ledger.record(0, "p8", {"forward": True})
    with pytest.raises(ValueError, match=r"flops\['backward'\] must be >= 0"):
        ledger.record(0, "p8", {"backward": -1})
    with pytest.raises(ValueError, match="step must be >= 0"):
        ledger.record(-1, "p8", 10)
    with pytest.raises(ValueError, match="samples"):
        ledger.record(0, "p8", 10, samples=-2)
    with pytest.raises(ValueError, match="phase"):
        ledger.add("p8", "", 10)
    with pytest.raises(ValueError, match="kind"):
        ledger.record(0, "p8", 10, kind="")
    assert ledger == FlopLedger()  # nothing half-recorded
    with pytest.raises(ValueError, match="data"):
        FlopLedger.from_dict({"flops": {}})
    good = FlopLedger()
    good.record(3, "p8", 10)
    data = good.to_dict()
    data["flops"]["p8"]["train"] = -5
    with pytest.raises(ValueError, match=r"data\['flops'\]\['p8'\]\['train'\]"):
        FlopLedger.from_dict(data)
    data["flops"]["p8"]["train"] = 5
    del data["counts"]
    with pytest.raises(ValueError, match="counts"):
        FlopLedger.from_dict(data)
    with pytest.raises(TypeError, match="ledger"):
        measure_step({}, 0, "p8")
    with pytest.raises(ValueError, match="measure_step: step"):
        measure_step(ledger, -3, "p8")


def _rank_steps(seed, rank):
    rng = random.Random(seed * 7 + rank)
    return _random_steps(rng, 10 + 3 * rank, ["p8", f"only{rank}"], big=2**80)


def _distributed_worker(rank, world_size, init_file, out_dir, seed):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=60))  # fail, not hang, if a rank dies
    try:
        ledger = FlopLedger()
        _record_all(ledger, _rank_steps(seed, rank))
        if rank == 0:
            ledger.record(4, "p8", 2**75 + 1, kind="eval")
        reduced = ledger.sum_across_ranks()
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({"reduced": reduced.to_dict(), "local": ledger.to_dict()}, f)
    finally:
        dist.destroy_process_group()


def test_sum_across_ranks_with_two_gloo_processes(tmp_path, seed):
    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "init"), str(tmp_path), seed), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert results[0]["reduced"] == results[1]["reduced"]
    reduced = FlopLedger.from_dict(results[0]["reduced"])
    per_rank = [_rank_steps(seed, r) for r in range(2)]
    flops, _ = _expected(per_rank[0] + per_rank[1])
    flops[("p8", "eval")] = 2**75 + 1
    assert {(s, p): v for s, row in reduced.table().items() for p, v in row.items()} == flops
    for shape in ("p8", "only0", "only1"):
        counts = [_expected(steps)[1].get(shape, [0, 0, 0]) for steps in per_rank]
        assert reduced.counts(shape) == {"steps": max(c[0] for c in counts), "samples": counts[0][1] + counts[1][1],
                                         "tokens": counts[0][2] + counts[1][2]}
    assert reduced.last_step() == max(steps[-1][0] for steps in per_rank) and reduced.last_step("eval") == 4
    assert reduced.total() > 2**80  # beyond int64: only the limbs keep it exact
    assert FlopLedger().sum_across_ranks() == FlopLedger()  # no process group: a copy


def _mlp(sizes):
    layers = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers += [torch.nn.Linear(a, b)] + ([torch.nn.ReLU()] if i < len(sizes) - 2 else [])
    return torch.nn.Sequential(*layers)


def test_measure_step_matches_flop_counter_mode():
    sizes = [int(n) for n in torch.randint(3, 40, (4,))]
    batch = int(torch.randint(1, 17, ()))
    model = _mlp(sizes)
    x, y = torch.randn(batch, sizes[0]), torch.randn(batch, sizes[-1])
    ledger = FlopLedger()
    with FlopCounterMode(display=False) as outer:
        with measure_step(ledger, 0, "p16", samples=batch, tokens=batch) as m:
            loss = torch.nn.functional.mse_loss(model(x), y)
            m.backward(loss)
            with torch.no_grad():  # a plain SGD update (torch.optim costs seconds to import)
                for p in model.parameters():
                    p -= 0.1 * p.grad
    assert m.recorded and ledger.total() == outer.get_total_flops() > 0
    # By hand: a Linear(a, b) on B rows is 2*B*a*b forward; backward doubles it (input and
    # weight gradients) except for the first layer, whose input needs no gradient.
    pairs = list(zip(sizes, sizes[1:]))
    forward = sum(2 * batch * a * b for a, b in pairs)
    assert ledger.table() == {"p16": {"forward": forward, "backward": 2 * forward - 2 * batch * sizes[0] * sizes[1]}}
    assert m.flops["optimizer"] == 0 and ledger.counts("p16") == {"steps": 1, "samples": batch, "tokens": batch}

    with measure_step(ledger, 0, "p16") as replay:  # a replayed step is measured, not recorded
        replay.backward(model(x).sum())
    assert not replay.recorded and replay.flops["forward"] == forward and ledger.counts("p16")["steps"] == 1
    with pytest.raises(RuntimeError, match="boom"):
        with measure_step(ledger, 1, "p16"):
            model(x)
            raise RuntimeError("boom")
    assert ledger.last_step() == 0 and ledger.counts("p16")["steps"] == 1
    with measure_step(ledger, 1, "p8") as manual:
        manual.phase("eval")
        model(x)
    assert ledger.table()["p8"] == {"eval": forward}


def test_compare_flops():
    n_params, tokens = int(torch.randint(10**6, 10**9, ())), int(torch.randint(10**3, 10**6, ()))
    ledger = FlopLedger()
    ledger.record(0, "p16", {"forward": 2 * n_params * tokens, "backward": 4 * n_params * tokens + 2**60,
                             "optimizer": 17}, tokens=tokens)
    ledger.record(0, "p16", {"eval": 5}, kind="eval")
    exact = 6 * n_params * tokens + 2**60
    cmp = compare_flops(ledger, num_params=n_params, padded_flops=3 * exact)
    assert cmp.exact == exact and cmp.six_nd == 6 * n_params * tokens and cmp.padded == 3 * exact
    assert cmp.exact_over_six_nd == pytest.approx(exact / (6 * n_params * tokens), rel=1e-15)
    assert cmp.padded_over_exact == 3.0 and "6*N*D" in cmp.summary()
    assert compare_flops(ledger, phase="optimizer").exact == 17
    plain = compare_flops(exact, num_params=2, num_tokens=5)
    assert plain.to_dict() == {"exact": exact, "six_nd": 60, "padded": None,
                               "exact_over_six_nd": exact / 60, "padded_over_exact": None}
    with pytest.raises(ValueError, match="num_tokens"):
        compare_flops(FlopLedger(), num_params=10)
    with pytest.raises(TypeError, match="padded_flops"):
        compare_flops(ledger, padded_flops=1.5)


def test_public_names():
    assert ak.flops.FlopLedger is FlopLedger and ak.flops.measure_step is measure_step
