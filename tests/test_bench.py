"""`adaptkern bench` on CPU: the quick run writes a valid results file, the result check
catches wrong implementations, peers that cannot run are skipped with a note, the
ratio and peak arithmetic, and the markdown table from a hand-built results file. Speed is
never asserted."""

import json
import os
import re

import pytest
import torch

from adaptkern.bench import interp_pos_embed as ip
from adaptkern.bench import patch_embed as pe
from adaptkern.bench import runner, suite, table
from adaptkern.bench.peaks import fractions, measure_peaks
from adaptkern.cli import main

ROW_KEYS = {"op": str, "case": str, "impl": str, "ours": bool, "mode": str, "dtype": str, "params": dict,
            "flops": int, "bytes": int}
NUMBERS = ("ms", "p20", "p80", "tflops", "gbps", "frac_peak_flops", "frac_peak_bw", "max_rel_error")
# A smaller position-embedding case than the op module's CPU case (its reference is slow on CPU).
TINY_INTERP = ("tiny", 3, 16, (4, 4), 8, 1, torch.float32)


def test_cpu_quick_run_writes_a_valid_results_file(tmp_path, capsys):
    assert main(["bench", "--quick", "--rep-ms", "2", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "GPU figures need a GPU" in out
    (path,) = tmp_path.glob("*.json")
    assert path.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    data = json.loads(path.read_text())
    # The schema, checked here independently of runner.validate.
    assert data["format"] == "adaptkern.bench" and data["version"] == 1 and data["errors"] == []
    meta = data["meta"]
    for key in ("device", "device_type", "torch", "triton", "python", "adaptkern", "command", "date", "git_commit"):
        assert key in meta
    assert meta["device_type"] == "cpu" and meta["quick"] is True and "--quick" in meta["command"]
    assert path.name.startswith(runner.slug(meta["device"])) and meta["date"][:10] in path.name
    assert data["peaks"]["copy_gbps"] > 0 and data["peaks"]["matmul_tflops"]["float32"] > 0
    assert any("GPU figures need a GPU" in note for note in data["notes"])
    assert {r["op"] for r in data["rows"]} == set(suite.OPS)
    for row in data["rows"]:
        for key, kind in ROW_KEYS.items():
            assert isinstance(row[key], kind), (key, row)
        for key in NUMBERS:
            assert row[key] is None or isinstance(row[key], (int, float))
        if row["ms"] is None:
            assert row["note"], row  # every untimed row says why
        else:
            assert row["max_rel_error"] <= runner.CHECK_TOL[row["dtype"]]
            assert row["tflops"] == pytest.approx(row["flops"] / row["ms"] / 1e9)
            assert row["gbps"] == pytest.approx(row["bytes"] / row["ms"] / 1e6)
        if row["ours"] and row["ms"]:
            assert row["speedup_vs"], row
    skipped = {r["impl"] for r in data["rows"] if r["ms"] is None}
    assert skipped == {"torch varlen (FA2)", "FlexAttention (document mask)"}
    assert runner.validate(data) is data


def test_a_wrong_peer_fails_loudly(monkeypatch):
    right = pe.conv_path
    monkeypatch.setattr(pe, "conv_path", lambda *args: right(*args) * 1.001)  # 1e-3 off: far above float32's tol
    case = suite.patch_embed_case(pe.CPU_CASES[0], torch.float32, torch.device("cpu"))
    with pytest.raises(runner.ResultMismatch, match=r"resample \+ conv2d out relative error"):
        runner.run_case(case, "cpu", rep_ms=1)


def test_a_wrong_gradient_fails_loudly(monkeypatch):
    class Wrong(torch.autograd.Function):  # right forward, gradient off by 10%
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            return 1.1 * grad

    right = ip.per_grid_interpolate_add
    monkeypatch.setattr(ip, "per_grid_interpolate_add", lambda t, p, rows, **kw: right(Wrong.apply(t), p, rows, **kw))
    case = suite.interp_case(TINY_INTERP, torch.device("cpu"))
    with pytest.raises(runner.ResultMismatch, match="dtokens"):
        runner.run_case(case, "cpu", rep_ms=1)


def _wrong_ours(case):
    """The case with adaptkern's implementation replaced by one whose output is off by 1."""
    ours = next(i for i in case.impls if i.ours)
    right = ours.make

    def make(mode):
        run, result = right(mode)
        return run, lambda: {k: v + 1.0 if k == "out" else v for k, v in result().items()}
    ours.make = make
    return case


def test_wrong_ours_stops_the_op_and_the_cli_exits_nonzero(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(ip, "CPU_CASES", [TINY_INTERP])
    right = suite.interp_case
    monkeypatch.setattr(suite, "interp_case", lambda *a, **k: _wrong_ours(right(*a, **k)))
    assert main(["bench", "--op", "interp_pos_embed", "--quick", "--rep-ms", "1", "--out", str(tmp_path),
                 "--no-progress", "--no-plot"]) == 1
    err = capsys.readouterr().err
    assert "FAILED" in err and "interp_pos_embed tiny fwd float32: fused (cpu) out relative error" in err
    (path,) = tmp_path.glob("*.json")
    data = runner.validate(json.loads(path.read_text()))
    assert data["rows"] == [] and len(data["errors"]) == 1


def test_a_peer_that_cannot_run_is_skipped_with_a_note():
    case = suite.patch_embed_case(pe.CPU_CASES[0], torch.float32, torch.device("cpu"))

    def broken(mode):
        raise ImportError("peer library is not installed")

    case.impls.append(runner.Impl("missing peer", broken))
    rows = runner.run_case(case, "cpu", rep_ms=1)
    missing = [r for r in rows if r["impl"] == "missing peer"]
    assert len(missing) == 2 and all(r["ms"] is None and "not installed" in r["note"] for r in missing)
    assert all(r["ms"] for r in rows if r["impl"] != "missing peer")


def _row(impl, ms, ours=False, dtype="bfloat16", flops=None, nbytes=None):
    return dict(op="varlen_attention", case="c", impl=impl, ours=ours, mode="fwd", dtype=dtype, ms=ms, flops=flops,
                bytes=nbytes,
                tflops=None if flops is None or ms is None else flops / ms / 1e9,
                gbps=None if nbytes is None or ms is None else nbytes / ms / 1e6, note=None if ms else "n/a")


def test_ratio_and_peak_arithmetic():
    group = [_row("ours", 2.0, ours=True), _row("ours (cuda)", 1.0, ours=True), _row("sdpa", 5.0),
             _row("flex", None)]
    runner.add_ratios(group)
    assert group[0]["speedup_vs"] == {"ours (cuda)": 0.5, "sdpa": 2.5}
    assert group[1]["speedup_vs"] == {"ours": 2.0, "sdpa": 5.0}
    assert group[2]["adaptkern_speedup"] == 2.5  # against the first adaptkern row
    assert group[3]["adaptkern_speedup"] is None
    row = _row("ours", 4.0, ours=True, flops=2 * 10 ** 12, nbytes=6 * 10 ** 9)  # 500 TFLOP/s, 1500 GB/s
    assert row["tflops"] == pytest.approx(500.0) and row["gbps"] == pytest.approx(1500.0)
    peaks = {"matmul_tflops": {"bfloat16": 800.0}, "copy_gbps": 3000.0}
    assert fractions(row, peaks) == {"frac_peak_flops": pytest.approx(0.625), "frac_peak_bw": pytest.approx(0.5)}
    assert fractions(dict(row, dtype="float32"), peaks)["frac_peak_flops"] is None  # no float32 peak measured


def test_measured_cpu_peaks_are_positive():
    peaks = measure_peaks("cpu", ["float32", "bfloat16"], rep_ms=2)
    assert set(peaks["matmul_tflops"]) == {"float32"}  # no low-precision peak on CPU
    assert peaks["matmul_tflops"]["float32"] > 0 and peaks["copy_gbps"] > 0
    assert peaks["copy_bytes"] == 2 * 64 * 2 ** 20


def _fixture(device="NVIDIA H100 80GB HBM3", device_type="cuda", date="2026-11-20T10:00:00Z"):
    rows = [dict(_row("adaptkern", 1.25, ours=True, flops=10 ** 12, nbytes=4 * 10 ** 9),
                 speedup_vs={"padded SDPA": 2.0}, params={"head_dim": 128}),
            dict(_row("padded SDPA", 2.5, flops=10 ** 12, nbytes=4 * 10 ** 9), adaptkern_speedup=2.0,
                 params={"head_dim": 128}),
            dict(_row("FlexAttention (document mask)", None), note="FlexAttention unavailable: no module",
                 adaptkern_speedup=None, params={"head_dim": 128})]
    for r in rows:
        r.update(fractions(r, {"matmul_tflops": {"bfloat16": 800.0}, "copy_gbps": 3200.0}))
    meta = dict(device=device, device_type=device_type, torch="2.11.0", triton="3.6.0", cuda="12.8", driver="570.1",
                python="3.11", adaptkern="0.1.0", git_commit="0123456789abcdef", git_dirty=False,
                command="adaptkern bench --quick", date=date, quick=True)
    return dict(format="adaptkern.bench", version=1, meta=meta, rows=rows, errors=[], notes=[],
                peaks={"matmul_tflops": {"bfloat16": 800.0}, "copy_gbps": 3200.0})


def test_markdown_table_from_a_fixture(tmp_path, capsys):
    data = runner.validate(_fixture())
    text = table.markdown(data)
    lines = text.splitlines()
    assert "**NVIDIA H100 80GB HBM3**" in lines[0] and "torch 2.11.0, triton 3.6.0, cuda 12.8, driver 570.1" in text
    assert "`adaptkern bench --quick`" in text and "`0123456789`" in text and "bfloat16 matmul 800 TFLOP/s" in text
    body = [line for line in lines if line.startswith("| op ")]
    assert len(body) == 1
    rows = lines[lines.index(body[0]) + 2:]
    lead = "| varlen_attention | c (D=128) | fwd | bfloat16 | "
    assert rows[0] == lead + "**adaptkern** | 1.250 | 800 | 3200 | 100% FLOP / 100% BW |  |  |"
    assert rows[1].startswith(lead + "padded SDPA | 2.500 | 400 | 1600 | 50% FLOP / 50% BW | 2.00x |")
    assert rows[2].endswith("| - | - | - | - | - | FlexAttention unavailable: no module |")
    assert "CPU run" not in text and "CPU run" in table.markdown(_fixture("AMD EPYC", "cpu"))

    # --table FILE prints it; --table alone picks the newest GPU file and ignores the rest.
    results = tmp_path / "results"
    results.mkdir()
    (results / "gpu-check-1").mkdir()
    for name, data in (("old.json", _fixture(date="2026-01-01T00:00:00Z")),
                       ("gpu-check-1/new.json", _fixture(device="B200")),
                       ("cpu.json", _fixture("AMD EPYC", "cpu", date="2027-01-01T00:00:00Z")),
                       ("other.json", {"meta": {}, "rows": []})):
        (results / name).write_text(json.dumps(data))
    assert table.latest(str(results))[0] == os.path.join(str(results), "gpu-check-1", "new.json")
    assert main(["bench", "--table", str(results / "old.json")]) == 0
    assert "NVIDIA H100" in capsys.readouterr().out
    assert main(["bench", "--table", "--out", str(results)]) == 0
    assert "**B200**" in capsys.readouterr().out
    assert main(["bench", "--table", "--out", str(tmp_path / "empty")]) == 0
    assert "No GPU benchmark results" in capsys.readouterr().out
    assert main(["bench", "--table", str(results / "other.json")]) == 2
    assert "'format' missing" in capsys.readouterr().err


def test_validate_names_what_is_wrong():
    data = _fixture()
    del data["meta"]["command"]
    with pytest.raises(ValueError, match="command"):
        runner.validate(data)
    data = _fixture()
    data["rows"][2]["note"] = None
    with pytest.raises(ValueError, match=r"rows\[2\] has no time and no note"):
        runner.validate(data)


def test_partial_results_are_checkpointed_after_every_case(monkeypatch):
    monkeypatch.setattr(ip, "CPU_CASES", [TINY_INTERP, TINY_INTERP])
    seen = []
    data = suite.run_suite("cpu", ops=["interp_pos_embed"], quick=True, rep_ms=1, progress=False,
                           checkpoint=lambda d: seen.append(len(d["rows"])))
    assert seen == [len(data["rows"]) // 2, len(data["rows"])] and seen[0] > 0


def test_timed_calls_skip_host_value_checks(monkeypatch):
    """Timing runs with value checks off (a host sync the peers do not pay); the result
    check before it keeps them, and the setting is restored afterwards."""
    from adaptkern import _checks
    from adaptkern.bench.timing import time_ms

    monkeypatch.delenv("ADAPTKERN_VALIDATE", raising=False)
    cu = torch.tensor([0, 2], dtype=torch.int32)
    seen = []
    time_ms(lambda: seen.append(_checks.value_checks_enabled(cu)), device="cpu", rep_ms=1)
    assert len(seen) >= 4 and not any(seen)
    assert _checks.value_checks_enabled(cu) and _checks._validate_override is None
    calls = []
    original = _checks._check_cu_values
    monkeypatch.setattr(_checks, "_check_cu_values", lambda *a: calls.append(a[0]) or original(*a))
    monkeypatch.setattr(ip, "CPU_CASES", [TINY_INTERP])
    during = []  # value checks made while each implementation was timed

    def counting_time_ms(*args, **kwargs):
        before = len(calls)
        timing = time_ms(*args, **kwargs)
        during.append(len(calls) - before)
        return timing

    monkeypatch.setattr(runner, "time_ms", counting_time_ms)
    rows = runner.run_case(suite.case_factories("interp_pos_embed", "cpu")[0][1](), "cpu", rep_ms=1)
    assert any(r["ours"] and r["ms"] for r in rows)
    assert calls and during and not any(during)  # checked before timing, never while timing


def test_results_that_fail_validation_leave_no_file(tmp_path):
    path = runner.write_results(_fixture(), tmp_path)
    with open(path) as f:
        before = f.read()
    bad = _fixture()
    del bad["meta"]["command"]
    with pytest.raises(ValueError, match="command"):
        runner.write_results(bad, tmp_path, path)
    assert os.listdir(tmp_path) == [os.path.basename(path)]  # no temp file left behind
    with open(path) as f:
        assert f.read() == before


def test_cpu_clock_leaves_out_time_without_the_cpu():
    """Inside cpu_clock() a call that sleeps costs (almost) no CPU time; outside, its wall time."""
    import time

    from adaptkern.bench.timing import cpu_clock, time_ms

    def nap():
        time.sleep(0.05)

    assert time_ms(nap, device="cpu", rep_ms=1)["median"] >= 50
    with cpu_clock():
        assert time_ms(nap, device="cpu", rep_ms=1)["median"] < 25
    assert time_ms(nap, device="cpu", rep_ms=1)["median"] >= 50  # restored


def test_static_audit_counts_per_unit_of_work():
    """`adaptkern bench --static`'s table: hot-loop warp-instructions per unit of work from a
    launch's loop length, warps and work tile; no unit for a loop-less or unknown kernel."""
    from adaptkern.bench import static

    launch = dict(kernel="_fwd_kernel", arch=90, shared=66560, num_warps=4, num_stages=3, regs=255, local=0,
                  hot_loop=512, hot_loop_spills=0, constexprs={"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_D": 64},
                  wgmma=True, mma=False, tma=True)
    assert static.per_unit(launch) == 512 * 4 / (128 * 64)
    weight = {**launch, "kernel": "_grad_weight_kernel", "constexprs": {"BLOCK_D": 128, "BLOCK_K": 128}}
    assert static.per_unit(weight) == 512 * 4 / (128 * 128)
    assert static.per_unit({**launch, "hot_loop": 0}) is None
    assert static.per_unit({**launch, "kernel": "_preprocess_kernel"}) is None
    table = static.audit_table([launch, {**launch, "kernel": "_preprocess_kernel", "hot_loop": 0}])
    row = table.splitlines()[2].split()
    assert row[:2] == ["_fwd_kernel", "90"] and "wgmma+tma" in row and row[-1] == "0.250"
    assert table.splitlines()[3].split()[-1] == "-"
    with pytest.raises(ValueError, match="unknown op"):
        static.run_audit(["conv"])


def test_static_audit_cli_names_a_bad_arch(capsys):
    from adaptkern.cli import main

    assert main(["bench", "--static", "--arch", "75"]) == 2
    assert "argument --arch: invalid choice: 75" in capsys.readouterr().err


@pytest.mark.parametrize("has_gqa", [True, False])
def test_torch_varlen_peer_follows_the_signature_of_this_torchs_varlen_attn(monkeypatch, has_gqa):
    """torch 2.13's varlen_attn takes enable_gqa, 2.11's does not: without it the peer runs the
    other cases with the arguments that torch takes and skips GQA with a note, rather than
    failing on an unknown keyword."""
    varlen = pytest.importorskip("torch.nn.attention.varlen")
    from adaptkern.bench import varlen_attention as va

    calls = []

    def torch_2_11(q, k, v, cu_q, cu_k, max_q, max_k, *, window_size=(-1, -1)):
        calls.append({"window_size": window_size})
        return q

    def torch_2_13(q, k, v, cu_q, cu_k, max_q, max_k, *, window_size=(-1, -1), enable_gqa=None):
        calls.append({"window_size": window_size} | ({} if enable_gqa is None else {"enable_gqa": enable_gqa}))
        return q
    monkeypatch.setattr(varlen, "varlen_attn", torch_2_13 if has_gqa else torch_2_11)
    cu, x = torch.tensor([0, 3], dtype=torch.int32), torch.zeros(3, 2, 8)
    fn, note = va._torch_varlen(cu, 3, True, False)
    assert note is None and fn(x, x, x) is x and calls == [{"window_size": (-1, 0)}]
    fn, note = va._torch_varlen(cu, 3, False, True)
    if has_gqa:
        assert note is None and fn(x, x, x) is x and calls[-1] == {"window_size": (-1, -1), "enable_gqa": True}
    else:
        assert fn is None and "no enable_gqa" in note and len(calls) == 1


def test_gpu_check_test_shards_run_every_collected_test_once(tmp_path):
    """benchmarks/gpu_test_shards.sh (the GPU check's test stage): the selected tests cut into
    contiguous shards run at once, every shard's summary printed, exit 0 when all pass; a
    selection pytest refuses is reported with pytest's exit status, not run as 'every test'."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = os.path.join(root, "benchmarks", "gpu_test_shards.sh")
    env = dict(os.environ, PYTHON=sys.executable)
    pick = ["-k", "test_ratio_and_peak_arithmetic or test_validate_names_what_is_wrong or "
                  "test_static_audit_cli_names_a_bad_arch"]
    done = subprocess.run(["bash", script, str(tmp_path), "120", "2", "not gpu", *pick], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "collected 3 tests" in done.stdout
    summaries = [line for line in done.stdout.splitlines() if line.startswith("shard ")]
    assert [s.split(":")[0] for s in summaries] == ["shard 0", "shard 1"]
    passed = [int(re.search(r"(\d+) passed", s).group(1)) for s in summaries]
    assert sum(passed) == 3 and min(passed) >= 1  # each test once, both shards used
    refused = subprocess.run(["bash", script, str(tmp_path), "120", "2", "no_such_marker"], cwd=root, env=env,
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 4 and "collecting the tests failed (exit 4)" in refused.stderr
