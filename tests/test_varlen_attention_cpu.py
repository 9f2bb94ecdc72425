"""The "cpu" backend of adaptkern.varlen_attention against the reference backend, on both of
its paths: the compiled tiled kernel (adaptkern.cpu.native, float32 / float64) and the
composition of PyTorch's CPU flash kernel per length bucket (float16 / bfloat16, and
wherever the kernel cannot be built): every mask kind, GQA, zero-length sequences, sequences
spanning several tiles, lse and its gradient, float64 and float32, NaN confinement, the
custom-op checks and torch.compile(fullgraph=True) on every backend."""

import os
import shutil
import warnings

import pytest
import torch

import adaptkern as ak
from adaptkern.cpu import native
from adaptkern.cpu import varlen_attention as cpu_attention

from helpers import assert_rel_close
from test_varlen_attention import MASKS, grads, make_batch, random_lengths

# Masks the cpu backend treats specially: causal with Lq == Lk is the kernel's is_causal;
# bottom-right causal with Lq < Lk and Lq > Lk (rows that see nothing) go through a mask.
CPU_MASKS = MASKS + [(True, (2, 3)), (False, (7, 7)), (False, (0, 0))]


def _require_compiled(monkeypatch):
    """The compiled kernel, which must build wherever a C++ compiler is (CI, the dev
    machine); a machine without one (the lent GPU box, perhaps) skips its tests."""
    monkeypatch.delenv(native.ENV_VAR, raising=False)
    if native.extension() is None:
        if shutil.which(os.environ.get("CXX", "c++")):
            pytest.fail(f"a C++ compiler is here but the CPU attention kernel did not build: {native.status()}")
        pytest.skip(f"no C++ compiler to build the CPU attention kernel: {native.status()}")


@pytest.fixture(params=["compiled", "composed"])
def cpu_path(request, monkeypatch):
    """Runs a test on each path of the cpu backend."""
    if request.param == "composed":
        monkeypatch.setenv(native.ENV_VAR, "0")
    else:
        _require_compiled(monkeypatch)
    return request.param


@pytest.fixture
def compiled(monkeypatch):
    _require_compiled(monkeypatch)


@pytest.fixture
def composed(monkeypatch):
    """The composition of PyTorch's flash kernel, for tests of its bucketing."""
    monkeypatch.setenv(native.ENV_VAR, "0")


def _run(backend, q, k, v, cu_q, cu_k, max_q, max_k, **mask):
    def fn(q, k, v):
        return ak.varlen_attention(q, k, v, cu_q, cu_k, max_q, max_k, return_lse=True, backend=backend, **mask)
    return fn


def _compare(q, k, v, cu_q, cu_k, max_q, max_k, dtype, **mask):
    """cpu backend in ``dtype`` against the float64 reference: out, lse, dq, dk, dv, with a
    loss that uses lse too (so its gradient path is covered)."""
    weights = (torch.randn(q.shape, dtype=torch.float64), torch.randn(q.shape[1], q.shape[0], dtype=torch.float64))
    (out, lse), got = grads(_run("cpu", q.to(dtype), k.to(dtype), v.to(dtype), cu_q, cu_k, max_q, max_k, **mask),
                            (q.to(dtype), k.to(dtype), v.to(dtype)), [w.to(dtype) for w in weights])
    (out_ref, lse_ref), expected = grads(_run("reference", q, k, v, cu_q, cu_k, max_q, max_k, **mask), (q, k, v),
                                         weights)
    assert out.dtype == dtype and lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert torch.equal(torch.isinf(lse), torch.isinf(lse_ref)) and not torch.isnan(lse).any()
    finite = torch.isfinite(lse_ref)
    assert_rel_close(lse[finite], lse_ref[finite], dtype, name="lse")
    assert_rel_close(out, out_ref, dtype, name="out")
    assert (out[~finite.any(0)] == 0).all()
    for name, g, g_ref in zip(("dq", "dk", "dv"), got, expected):
        assert_rel_close(g, g_ref, dtype, name=name)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("causal,window_size", CPU_MASKS)
@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (3, 1)])
@pytest.mark.usefixtures("cpu_path")
def test_cpu_matches_reference(dtype, causal, window_size, heads):
    lengths_q = random_lengths(7, 13)
    # Equal lengths (is_causal path), and independent ones (Lq != Lk, empty sides).
    lengths_k = lengths_q if heads[1] == 2 else random_lengths(7, 15)
    # Repeated lengths at non-adjacent positions exercise the gathered (non-view) buckets.
    lengths_q, lengths_k = lengths_q + lengths_q[2:4], lengths_k + lengths_k[2:4]
    batch = make_batch(lengths_q, lengths_k, *heads, 16, torch.float64)
    _compare(*batch, dtype, causal=causal, window_size=window_size)


@pytest.mark.usefixtures("composed")
def test_cpu_equal_lengths_are_one_bucket_and_match():
    # One bucket covering every row: the kernel's outputs are returned without a copy.
    lengths = [9] * 5
    batch = make_batch(lengths, lengths, 4, 1, 32, torch.float64)
    assert list(cpu_attention.buckets(batch[3], batch[4])) == [(9, 9)]
    _compare(*batch, torch.float32, causal=True)
    _compare(*make_batch([6] * 3, [4] * 3, 2, 2, 16, torch.float64), torch.float64, causal=True)  # blind rows


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("causal,window_size", CPU_MASKS)
@pytest.mark.parametrize("lengths_q,lengths_k,heads", [([9] * 5, [9] * 5, (4, 2)), ([5] * 3, [11] * 3, (3, 1)),
                                                       ([7] * 2, [4] * 2, (2, 2)), ([13], [13], (3, 3))])
@pytest.mark.usefixtures("composed")
def test_cpu_uniform_lengths_take_the_direct_path_and_match(monkeypatch, dtype, causal, window_size, lengths_q,
                                                            lengths_k, heads):
    # Every sequence with the same (Lq, Lk): one kernel call on views, no bucketing at all.
    def no_buckets(*args):
        raise AssertionError("uniform lengths must not be bucketed")

    monkeypatch.setattr(cpu_attention, "buckets", no_buckets)
    batch = make_batch(lengths_q, lengths_k, *heads, 24, torch.float64)
    assert cpu_attention.uniform_lengths(*batch[3:5], batch[0].shape[0], batch[1].shape[0]) == (
        len(lengths_q), lengths_q[0], lengths_k[0])
    _compare(*batch, dtype, causal=causal, window_size=window_size)


@pytest.mark.usefixtures("cpu_path")
def test_cpu_uniform_lengths_on_strided_inputs():
    # q, k, v as slices of one (T, 3, H, D) projection: the direct path reads them in place.
    lengths = [6] * 4
    q, k, v, cu, _, max_len, _ = make_batch(lengths, lengths, 2, 2, 16, torch.float64)
    qkv = torch.stack([q, k, v], 1)
    _compare(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu, cu, max_len, max_len, torch.float32, causal=True)


@pytest.mark.usefixtures("composed")
def test_cpu_uniform_lengths_only_when_every_sequence_matches():
    def cu(lengths):
        return torch.tensor([0] + lengths, dtype=torch.int32).cumsum(0, dtype=torch.int32)

    assert cpu_attention.uniform_lengths(cu([4, 4, 4]), cu([2, 2, 2]), 12, 6) == (3, 4, 2)
    for lengths_q, lengths_k in [([4, 4, 0, 8], [1] * 4), ([4] * 3, [0] * 3), ([0, 0], [0, 0]), ([6, 2], [4, 4]),
                                 ([3] * 4, [2, 2, 3, 1])]:
        assert cpu_attention.uniform_lengths(cu(lengths_q), cu(lengths_k), sum(lengths_q), sum(lengths_k)) is None
    # Not uniform, so bucketed: zero-length sides and rows without keys stay exact.
    _compare(*make_batch([4, 4, 0, 8], [3, 0, 5, 3], 2, 1, 8, torch.float64), torch.float64, causal=True)
    _compare(*make_batch([4] * 3, [0] * 3, 2, 2, 8, torch.float64), torch.float64)


@pytest.mark.usefixtures("cpu_path")
def test_cpu_rows_without_keys_and_empty_batches():
    # Lq > Lk causal: the first rows see nothing; sequences without keys or without queries.
    batch = make_batch([5, 3, 0, 4], [2, 0, 4, 4], 2, 1, 8, torch.float64)
    _compare(*batch, torch.float64, causal=True)
    empty = make_batch([0, 0], [0, 3], 2, 2, 8, torch.float64)
    (out, lse), (dq, dk, dv) = grads(_run("cpu", *empty), empty[:3], (torch.zeros(0, 2, 8), torch.zeros(2, 0)))
    assert out.shape == (0, 2, 8) and lse.shape == (2, 0) and (dk == 0).all() and (dv == 0).all()


@pytest.mark.usefixtures("cpu_path")
def test_cpu_nan_stays_in_its_sequence():
    lengths = [6, 4, 6, 5]
    q, k, v, cu, _, max_len, _ = make_batch(lengths, lengths, 2, 2, 8, torch.float32)
    q[7, 1, 3] = float("nan")  # sequence 1 (rows 6..9), which has the same length as no other
    k[0, 0, 0] = float("nan")  # sequence 0, bucketed with sequence 2
    (out, lse), (dq, dk, dv) = grads(_run("cpu", q, k, v, cu, cu, max_len, max_len, causal=True), (q, k, v),
                                     (torch.ones_like(q), torch.zeros(2, q.shape[0])))
    clean = torch.zeros(q.shape[0], dtype=torch.bool)
    clean[16:] = True  # sequences 2 and 3
    for t in (out, dq, dk, dv):
        assert torch.isfinite(t[clean]).all() and not torch.isfinite(t[~clean]).all()
    assert torch.isfinite(lse[:, clean]).all()


def test_cpu_is_the_default_for_cpu_tensors_and_float64(monkeypatch):
    monkeypatch.delenv("ADAPTKERN_BACKEND", raising=False)
    calls = []
    original = cpu_attention.varlen_attention_forward

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(cpu_attention, "varlen_attention_forward", counted)
    batch = make_batch([3, 5], [3, 5], 2, 2, 8, torch.float64)
    ak.varlen_attention(*batch)
    assert calls == [1]


@pytest.mark.usefixtures("composed")
def test_cpu_repeats_kv_heads_where_the_kernel_has_no_gqa(monkeypatch):
    batch = make_batch([4, 7, 0], [6, 7, 2], 4, 2, 16, torch.float64)
    monkeypatch.setitem(cpu_attention._PROBED, "gqa", False)
    _compare(*batch, torch.float64, causal=True, window_size=(3, -1))


@pytest.mark.parametrize("lengths_q,lengths_k", [([3, 0, 5, 3], [4, 2, 5, 4]), ([5] * 3, [5] * 3)])
@pytest.mark.usefixtures("cpu_path")
def test_cpu_custom_ops_pass_opcheck(lengths_q, lengths_k):
    # Bucketed, and uniform lengths (outputs that are views of the kernel's, never of inputs).
    q, k, v, cu_q, cu_k, max_q, max_k = make_batch(lengths_q, lengths_k, 4, 2, 8, torch.float64)
    for t in (q, k, v):
        t.requires_grad_()
    for mask in ((True, 2, -1), (False, -1, -1), (True, -1, -1)):
        args = (q, k, v, cu_q, cu_k, max_q, max_k, 0.3, *mask, "cpu")
        torch.library.opcheck(torch.ops.adaptkern.varlen_attn_fwd.default, args)
        out, lse = torch.ops.adaptkern.varlen_attn_fwd(*args)
        bwd_args = (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out.detach(), lse.detach(),
                    torch.randn_like(lse), cu_q, cu_k, max_q, max_k, 0.3, *mask, "cpu")
        torch.library.opcheck(torch.ops.adaptkern.varlen_attn_bwd.default, bwd_args)


@pytest.mark.usefixtures("cpu_path")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("causal,window_size", CPU_MASKS + [(False, (70, 5)), (True, (100, -1)), (False, (-1, 65))])
@pytest.mark.parametrize("heads", [(4, 4), (3, 1)])
def test_cpu_sequences_over_several_tiles(dtype, causal, window_size, heads):
    # The compiled kernel cuts sequences in tiles of 64 rows and skips tiles the mask hides:
    # lengths at, just past and well past tile edges, Lq != Lk both ways, windows wider and
    # narrower than a tile.
    extra = torch.randint(1, 200, (2,)).tolist()
    lengths_q = [64, 65, 0, 130, 1, extra[0], 7]
    lengths_k = [64, 127, 5, 66, 1, extra[1], 0]
    _compare(*make_batch(lengths_q, lengths_k, *heads, 16, torch.float64), dtype, causal=causal,
             window_size=window_size)


@pytest.mark.usefixtures("compiled")
def test_cpu_compiled_kernel_runs_float32_and_float64_only(monkeypatch):
    calls = []
    for name in ("_native_forward", "_native_backward"):
        original = getattr(cpu_attention, name)
        monkeypatch.setattr(cpu_attention, name, lambda *a, _f=original, _n=name: calls.append(_n) or _f(*a))
    for dtype, expected in ((torch.float32, 2), (torch.float64, 2), (torch.bfloat16, 0)):
        calls.clear()
        q, k, v, cu, _, max_len, _ = make_batch([5, 9], [5, 9], 2, 1, 16, dtype)
        q.requires_grad_()
        ak.varlen_attention(q, k, v, cu, cu, max_len, max_len, causal=True).sum().backward()
        assert len(calls) == expected, (dtype, calls)


@pytest.mark.usefixtures("compiled")
def test_cpu_compiled_kernel_gives_the_same_bits_on_any_thread_count():
    # Each (sequence, head) is one task, computed in a fixed order by whichever thread takes it.
    q, k, v, cu_q, cu_k, max_q, max_k = make_batch([70, 3, 0, 150, 64], [70, 9, 4, 150, 1], 4, 2, 32, torch.float32)
    weights = (torch.randn(q.shape), torch.randn(q.shape[1], q.shape[0]))
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            (out, lse), got = grads(_run("cpu", q, k, v, cu_q, cu_k, max_q, max_k, causal=True), (q, k, v), weights)
            results.append([out, lse, *got])
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


@pytest.mark.usefixtures("compiled")
def test_cpu_compiled_kernel_can_be_switched_off(monkeypatch):
    monkeypatch.setenv(native.ENV_VAR, "0")
    assert native.extension() is None and "disabled" in native.status()
    monkeypatch.delenv(native.ENV_VAR)
    assert native.extension() is not None and native.status() == "built"


@pytest.mark.usefixtures("compiled")
def test_cpu_compiled_kernel_refuses_offsets_outside_the_tensors():
    # With adaptkern's checks off, the kernel still checks the offsets it indexes memory by.
    q, k, v, cu, _, max_len, _ = make_batch([4, 6], [4, 6], 2, 2, 8, torch.float32)
    for bad in ([0, 4, 11], [0, 11, 10], [1, 4, 10]):  # past the end, decreasing, not from 0
        with ak.validation(False), pytest.raises(ValueError, match="cu_seqlens_q must start at 0"):
            ak.varlen_attention(q, k, v, torch.tensor(bad, dtype=torch.int32), cu, max_len, max_len)
        with ak.validation(False), pytest.raises(ValueError, match="cu_seqlens_k must start at 0"):
            ak.varlen_attention(q, k, v, cu, torch.tensor(bad, dtype=torch.int32), max_len, max_len)


def test_cpu_kernel_that_cannot_build_warns_once_and_falls_back(monkeypatch):
    def no_compiler():
        raise RuntimeError("no C++ compiler (simulated)")

    monkeypatch.setattr(native, "_STATE", {})
    monkeypatch.setattr(native, "_build", no_compiler)
    monkeypatch.delenv(native.ENV_VAR, raising=False)
    assert native.status() == "not built yet (compiled on first use)"
    batch = make_batch([5, 9], [5, 9], 2, 1, 16, torch.float32)
    with pytest.warns(RuntimeWarning, match="simulated.*PyTorch's CPU flash kernel instead"):
        out = ak.varlen_attention(*batch, causal=True)
    assert "simulated" in native.status()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once only
        assert torch.equal(ak.varlen_attention(*batch, causal=True), out)
    expected = ak.varlen_attention(*batch, causal=True, backend="reference")
    assert_rel_close(out, expected, torch.float32, name="out")
    monkeypatch.setattr(native, "_STATE", {})
    monkeypatch.setenv(native.ENV_VAR, "1")
    with pytest.raises(RuntimeError, match="ADAPTKERN_CPU_NATIVE=1 but the CPU attention kernel did not build"):
        native.extension()


@pytest.mark.usefixtures("cpu_path")
@pytest.mark.parametrize("head_dim", [8, 40, 100, 256])
def test_cpu_head_dims_and_random_masks(head_dim):
    # Head dims the tiles do not divide evenly and the largest supported, on random lengths
    # (some over a tile) and a random mask kind per call.
    lengths_q = random_lengths(5, 150)
    lengths_k = lengths_q if torch.rand(()) < 0.5 else random_lengths(5, 150)
    causal, window_size = CPU_MASKS[int(torch.randint(len(CPU_MASKS), ()))]
    batch = make_batch(lengths_q, lengths_k, 4, 2, head_dim, torch.float64)
    _compare(*batch, torch.float32, causal=causal, window_size=window_size)
