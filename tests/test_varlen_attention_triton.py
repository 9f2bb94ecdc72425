"""Triton varlen attention (forward, lse, dq/dk/dv) against the float64 reference, under
the interpreter on CPU: per-dtype bounds and flash-attn's "at most 2x PyTorch's own error
in the same dtype" criterion; a hypothesis fuzz of lengths and flags; GPU codegen checks."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import adaptkern as ak
from adaptkern import _backend
from adaptkern.ops import varlen_attention as varlen_ops
from adaptkern.kernels import varlen_attention as fwd_kernels
from adaptkern.kernels import varlen_attention_bwd as bwd_kernels
from adaptkern.flops.varlen_attention import allowed_pairs
from adaptkern.reference.varlen_attention import allowed_mask, varlen_attention_backward, varlen_attention_forward

from helpers import REL_TOL, assert_as_accurate_as_torch, assert_rel_close, compile_launches, rel_error
from test_pack import record_launch_devices
from test_varlen_attention import MASKS, make_batch, random_lengths

pytestmark = pytest.mark.interpret

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
INT32_MAX = 2**31 - 1  # what callers pass as a window meaning "unbounded"


def _run(backend, q, k, v, cu_q, cu_k, max_q, max_k, dout, dlse, **mask):
    """out, lse and (dq, dk, dv) of sum(out * dout) [+ sum(finite lse * dlse) unless dlse is None]."""
    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
    out, lse = ak.varlen_attention(q, k, v, cu_q, cu_k, max_q, max_k, return_lse=True, backend=backend, **mask)
    loss = (out * dout).sum()
    if dlse is not None:
        loss = loss + (torch.where(torch.isfinite(lse), lse, 0) * dlse).sum()
    return out, lse, torch.autograd.grad(loss, (q, k, v))


def _plain_torch(q, k, v, cu_q, cu_k, dout, causal, window_size):
    """Attention computed in the inputs' own dtype by plain PyTorch ops, differentiated by autograd."""
    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
    out, _ = varlen_attention_forward(q, k, v, cu_q, cu_k, q.shape[2] ** -0.5, causal, *window_size, upcast=False)
    return out, torch.autograd.grad((out * dout).sum(), (q, k, v))


def check_against_reference(lengths_q, lengths_k, heads, head_dim, dtype, causal, window_size, device,
                            *, lse_grad=False):
    """Triton out, lse, dq, dk, dv against the float64 reference within the dtype's bound; with
    lse_grad the loss also weighs lse, else the errors must also be within 2x (+ floor) those
    of plain PyTorch in the same dtype (3x for gradients, as flash-attn's tests)."""
    q, k, v, cu_q, cu_k, max_q, max_k = make_batch(lengths_q, lengths_k, *heads, head_dim, dtype, device)
    dout = torch.randn_like(q)
    dlse = torch.randn(heads[0], q.shape[0], device=device) if lse_grad else None
    mask = dict(causal=causal, window_size=window_size)
    out, lse, got = _run("triton", q, k, v, cu_q, cu_k, max_q, max_k, dout, dlse, **mask)
    out_ref, lse_ref, expected = _run("reference", q.double(), k.double(), v.double(), cu_q, cu_k, max_q, max_k,
                                      dout.double(), None if dlse is None else dlse.double(), **mask)
    assert out.dtype == dtype and lse.dtype == torch.float32 and lse.shape == (heads[0], q.shape[0])
    assert torch.equal(torch.isinf(lse), torch.isinf(lse_ref)), "rows without keys must have lse -inf"
    finite = torch.isfinite(lse_ref)
    assert_rel_close(lse[finite], lse_ref[finite], torch.float32, name="lse")
    assert_rel_close(out, out_ref, dtype, name="out")
    if lse_grad:
        for name, g, g_ref in zip(("dq", "dk", "dv"), got, expected):
            assert_rel_close(g, g_ref, dtype, name=name)
        return
    torch_out, torch_grads = _plain_torch(q, k, v, cu_q, cu_k, dout, causal, window_size)
    assert_as_accurate_as_torch(out, out_ref, torch_out, name="out")
    for name, g, g_ref, g_torch in zip(("dq", "dk", "dv"), got, expected, torch_grads):
        # flash-attn's tests (tests/test_flash_attn.py) hold gradients to 3x PyTorch's error and
        # the output to 2x. At 2x these failed about 1 draw in 40: bf16 dk at head dim 8 was
        # 9.3e-3 against PyTorch's 3.0e-3 (seed 131), fp32 dq 3.5e-6 against 6.7e-7 (seed 229).
        assert_as_accurate_as_torch(g, g_ref, g_torch, name=name, factor=3.0)
        # The dtype's bound as well, unless plain PyTorch in the same dtype is itself near or
        # past it: a gradient summed over one or two keys in bf16 can be off by 3-4% in
        # PyTorch too (seen at head dim 8, lengths [2, 0, 1]); there 2x PyTorch is the bound.
        if rel_error(g_torch, g_ref) <= REL_TOL[dtype] / 2:
            assert_rel_close(g, g_ref, dtype, name=name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal,window_size", MASKS)
def test_matches_reference_across_masks(dtype, causal, window_size, device):
    lengths_q = random_lengths(5, 40)
    lengths_k = random_lengths(5, 40) if causal else lengths_q
    heads = [(2, 2), (4, 2), (3, 1)][torch.randint(0, 3, ()).item()]
    check_against_reference(lengths_q, lengths_k, heads, 32, dtype, causal, window_size, device)


@pytest.mark.parametrize("head_dim", [8, 40, 80, 96])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_head_dims_not_powers_of_two(head_dim, dtype, device):
    lengths = random_lengths(3, 24)
    check_against_reference(lengths, lengths, (2, 1), head_dim, dtype, True, (-1, -1), device)


@pytest.mark.parametrize("head_dim", [160, 256])
def test_large_head_dims(head_dim, device):
    check_against_reference([9, 0, 17], [20, 3, 17], (2, 2), head_dim, torch.bfloat16, False, (6, -1), device)


def test_queries_longer_than_keys_and_empty_sides(device):
    # Causal with Lq > Lk leaves rows that see no key; sequences with no keys or no queries.
    check_against_reference([20, 6, 0, 4, 1], [5, 0, 7, 4, 1], (4, 2), 16, torch.float16, True, (-1, -1), device)
    check_against_reference([20, 6, 0, 4, 1], [5, 0, 7, 4, 1], (4, 2), 16, torch.float32, False, (2, 0), device,
                            lse_grad=True)


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_empty_batches(backend, device):
    # No tokens at all (two empty sequences, or no sequence), and keys without any query.
    for lengths_q, lengths_k in [([0, 0], [0, 0]), ([], []), ([0, 0], [3, 2])]:
        q, k, v, cu_q, cu_k, max_q, max_k = make_batch(lengths_q, lengths_k, 2, 1, 16, torch.bfloat16, device)
        out, lse, (dq, dk, dv) = _run(backend, q, k, v, cu_q, cu_k, max_q, max_k, torch.randn_like(q), None)
        assert out.shape == q.shape and lse.shape == (2, 0) and dq.shape == q.shape
        assert dk.shape == k.shape and (dk == 0).all() and (dv == 0).all()


def test_gpu_tile_sizes(device):
    """The GPU tiles (BLOCK_M 128 / BLOCK_N 64, dK/dV 32 x 128) on lengths crossing block edges."""
    lengths_q, lengths_k = [130, 1, 0, 64, 77], [150, 3, 9, 64, 20]
    q, k, v, cu_q, cu_k, max_q, max_k = make_batch(lengths_q, lengths_k, 2, 1, 64, torch.bfloat16, device)
    fwd_cfg = dict(BLOCK_M=128, BLOCK_N=64, NUM_STAGES=3, num_warps=4)
    bwd_cfg = dict(dkdv=dict(BLOCK_M=32, BLOCK_N=128, NUM_STAGES=2, num_warps=4),
                   dq=dict(BLOCK_M=128, BLOCK_N=32, NUM_STAGES=2, num_warps=4))
    scale = 64 ** -0.5
    for left, right in [(-1, 0), (40, 5)]:
        out, lse = fwd_kernels.forward(q, k, v, cu_q, cu_k, max_q, max_k, scale, left, right, config=fwd_cfg)
        wide = [x.double() for x in (q, k, v)]
        out_ref, lse_ref = varlen_attention_forward(*wide, cu_q, cu_k, scale, False, left, right)
        assert_rel_close(out, out_ref, torch.bfloat16, name="out")
        finite = torch.isfinite(lse_ref)
        assert torch.equal(finite, torch.isfinite(lse))
        assert_rel_close(lse[finite], lse_ref[finite], torch.float32, name="lse")
        dout = torch.randn_like(out)
        grads = bwd_kernels.backward(dout, q, k, v, out, lse, None, cu_q, cu_k, max_q, max_k, scale, left, right,
                                     config=bwd_cfg)
        expected = varlen_attention_backward(dout.double(), *wide, out_ref, lse_ref, None, cu_q, cu_k, scale, False,
                                             left, right)
        for name, g, g_ref in zip(("dq", "dk", "dv"), grads, expected):
            assert_rel_close(g, g_ref, torch.bfloat16, name=name)


@pytest.mark.parametrize("use_tma", [True, False])
def test_forward_full_block_paths(use_tma, device):
    """The forward's mask-free path over full key blocks, with sm_90's TMA descriptor loads
    (forced on: launches pick them only on sm_90) and with pointer loads, next to the masked
    path; GQA; positive, negative and zero scales (the scale folds into max(s) * scale)."""
    lengths_q, lengths_k = [40, 1, 0, 33], [50, 3, 9, 33]
    q, k, v, cu_q, cu_k, max_q, max_k = make_batch(lengths_q, lengths_k, 4, 2, 32, torch.bfloat16, device)
    cfg = dict(BLOCK_M=16, BLOCK_N=16, NUM_STAGES=1, num_warps=4, USE_TMA=use_tma)
    wide = [x.double() for x in (q, k, v)]
    for scale, (left, right) in [(0.2, (-1, -1)), (-0.3, (-1, 0)), (0.0, (20, 5))]:
        out, lse = fwd_kernels.forward(q, k, v, cu_q, cu_k, max_q, max_k, scale, left, right, config=cfg)
        out_ref, lse_ref = varlen_attention_forward(*wide, cu_q, cu_k, scale, False, left, right)
        assert_rel_close(out, out_ref, torch.bfloat16, name="out")
        finite = torch.isfinite(lse_ref)
        assert torch.equal(finite, torch.isfinite(lse))
        assert_rel_close(lse[finite], lse_ref[finite], torch.float32, name="lse")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_stays_finite_at_a_huge_softmax_scale(dtype, device):
    """At scale 1e10 the softmax is one-hot and the float64 reference's gradients are finite;
    the backward's recomputed P = exp2(s * scale - lse) must not overflow (it gave inf P and
    NaN dq / dk, as s * scale and lse agree to fewer bits than the exponent needs)."""
    q, k, v, cu_q, cu_k, max_q, max_k = make_batch([20, 7], [20, 7], 2, 1, 16, dtype, device)
    for causal in (False, True):
        inputs = [x.detach().requires_grad_() for x in (q, k, v)]
        out = ak.varlen_attention(*inputs, cu_q, cu_k, max_q, max_k, softmax_scale=1e10, causal=causal,
                                  backend="triton")
        grads = torch.autograd.grad(out.float().sum(), inputs)
        wide = [x.detach().double().requires_grad_() for x in (q, k, v)]
        out_ref = ak.varlen_attention(*wide, cu_q, cu_k, max_q, max_k, softmax_scale=1e10, causal=causal,
                                      backend="reference")
        expected = torch.autograd.grad(out_ref.sum(), wide)
        assert_rel_close(out, out_ref, dtype, name="out")
        for name, g, g_ref in zip(("dq", "dk", "dv"), grads, expected):
            assert torch.isfinite(g_ref).all()
            assert torch.isfinite(g).all(), f"{name} (causal={causal}) is not finite"


def test_tile_schedule_launches_real_tiles_heaviest_first():
    """The launch schedule: sequences by the other side's length, longest first, those with no
    tile last; tile_end the running tile count; the sync-free grid bound covers every tile and,
    for a long-tailed mix (one 8192 and 63 of 64-512), wastes a small fraction where the
    batch x cdiv(max_seqlen, block) grid wasted 94%."""
    lengths = [8192] + torch.randint(64, 513, (63,)).tolist()
    lengths[5] = 0
    other = torch.randint(1, 1000, (64,)).tolist()
    cu, cu_other = (torch.tensor([0] + x).cumsum(0).to(torch.int32) for x in (lengths, other))
    for block in (64, 128):
        order, tile_end, bound = fwd_kernels.tile_schedule(cu, cu_other, block, max(lengths), sum(lengths))
        tiles = [-(-n // block) for n in lengths]
        expected = sorted(range(64), key=lambda i: -other[i] if tiles[i] else 1)
        assert order.tolist() == expected
        assert tile_end.tolist() == torch.tensor([tiles[i] for i in expected]).cumsum(0).tolist()
        real = sum(tiles)
        assert real <= bound <= 64 * -(-8192 // block)
        assert bound - real < 64 and 1 - real / bound < 0.2, (bound, real)


def test_persistent_grid_leaves_no_program_without_work():
    """For the long-tailed mix (one 8192 and 63 of 64-512, 16 heads) on a 132-SM GPU, the
    persistent grid launches at most PROGRAMS_PER_SM programs per SM, each with at least one
    (tile, head) pair to do; a grid of the sync-free bound launched 6-14% of programs that
    exited at once. Under the interpreter the kernels run with a few such looping programs,
    so every kernel test exercises the loop."""
    lengths = [8192] + torch.randint(64, 513, (63,)).tolist()
    cu = torch.tensor([0] + lengths).cumsum(0).to(torch.int32)
    for block in (64, 128):
        _, tile_end, bound = fwd_kernels.tile_schedule(cu, cu, block, max(lengths), sum(lengths))
        items = int(tile_end[-1]) * 16
        programs = fwd_kernels.persistent_programs(bound * 16, 132)
        assert programs <= fwd_kernels.PROGRAMS_PER_SM * 132 and programs <= items, (programs, items)
    assert fwd_kernels.persistent_programs(10, 132) == 10  # few pairs: one program each
    assert fwd_kernels.persistent_programs(0, 132) == 1


def test_backward_is_deterministic_and_handles_strided_inputs(device):
    """Two backward runs agree bit for bit. Under the interpreter that holds by construction
    (programs run one after another), so the determinism half tests something only on a GPU."""
    lengths = [33, 0, 18]
    q, k, v, cu_q, cu_k, max_q, max_k = make_batch(lengths, lengths, 2, 1, 24, torch.bfloat16, device)
    # Non-contiguous views: q from a wider buffer, k / v interleaved in one (total, 2, Hkv, D) tensor.
    q = torch.cat([q, torch.randn_like(q)], 2)[..., :24]
    kv = torch.stack([k, v], 1)
    k, v = kv[:, 0], kv[:, 1]
    assert not q.is_contiguous() and not k.is_contiguous()
    dout, dlse = torch.randn_like(q), torch.randn(2, q.shape[0], device=device)
    first = _run("triton", q, k, v, cu_q, cu_k, max_q, max_k, dout, dlse, causal=True)
    second = _run("triton", q, k, v, cu_q, cu_k, max_q, max_k, dout, dlse, causal=True)
    for a, b in zip(first[2], second[2]):
        assert torch.equal(a, b)
    expected = _run("reference", q.double(), k.double(), v.double(), cu_q, cu_k, max_q, max_k, dout.double(),
                    dlse.double(), causal=True)
    assert_rel_close(first[0], expected[0], torch.bfloat16, name="out")
    for name, g, g_ref in zip(("dq", "dk", "dv"), first[2], expected[2]):
        assert_rel_close(g, g_ref, torch.bfloat16, name=name)


def test_inputs_whose_last_dim_is_strided(device):
    """q / k / v with stride(-1) != 1 (views of a (total, D, H) buffer): the launchers copy
    them, in the forward and again in the backward, which gets the saved views."""
    lengths_q, lengths_k = [17, 0, 9, 1], [12, 5, 9, 0]
    q, k, v, cu_q, cu_k, max_q, max_k = make_batch(lengths_q, lengths_k, 4, 2, 24, torch.float32, device)
    q, k, v = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v))
    assert all(x.stride(-1) != 1 for x in (q, k, v))
    dout, dlse = torch.randn(q.shape, device=device), torch.randn(4, q.shape[0], device=device)
    mask = dict(causal=True, window_size=(5, -1))
    out, lse, got = _run("triton", q, k, v, cu_q, cu_k, max_q, max_k, dout, dlse, **mask)
    out_ref, lse_ref, expected = _run("reference", q.double(), k.double(), v.double(), cu_q, cu_k, max_q, max_k,
                                      dout.double(), dlse.double(), **mask)
    finite = torch.isfinite(lse_ref)
    assert torch.equal(finite, torch.isfinite(lse))
    assert_rel_close(lse[finite], lse_ref[finite], torch.float32, name="lse")
    assert_rel_close(out, out_ref, torch.float32, name="out")
    for name, g, g_ref in zip(("dq", "dk", "dv"), got, expected):
        assert_rel_close(g, g_ref, torch.float32, name=name)


@pytest.mark.parametrize("causal,window_size", [
    (False, (INT32_MAX, INT32_MAX)), (False, (-1, INT32_MAX)), (False, (INT32_MAX, -1)), (True, (INT32_MAX, -1)),
    (True, (INT32_MAX, INT32_MAX)), (False, (3, INT32_MAX)), (False, (INT32_MAX, 2)),
])
def test_huge_windows_mean_unbounded(causal, window_size, device):
    # int32 row + diag +- window would wrap in the kernels and blank whole rows.
    check_against_reference([20, 7, 0, 13], [10, 16, 3, 13], (2, 1), 16, torch.float32, causal, window_size, device,
                            lse_grad=True)


def test_reachable_window_drops_only_sides_that_cut_nothing():
    """The launchers' normalisation leaves every sequence's mask as it was, for every length
    up to max_seqlen, and turns a huge window into an unbounded one."""
    for max_q in range(5):
        for max_k in range(5):
            for left in range(-1, max_k + 2):
                for right in range(-1, max_q + 2):
                    new_left, new_right = fwd_kernels.reachable_window(left, right, max_q, max_k)
                    for len_q in range(max_q + 1):
                        for len_k in range(max_k + 1):
                            assert torch.equal(allowed_mask(len_q, len_k, new_left, new_right),
                                               allowed_mask(len_q, len_k, left, right)), \
                                (left, right, max_q, max_k, len_q, len_k)
    assert fwd_kernels.reachable_window(INT32_MAX, INT32_MAX, 20, 10) == (-1, -1)
    assert fwd_kernels.reachable_window(8, 18, 20, 10) == (8, 18)  # both still cut a key
    # The FLOP count is of the allowed pairs, which a huge window leaves as an unbounded one does.
    lengths_q, lengths_k = [20, 7, 0, 13], [10, 16, 3, 13]
    assert allowed_pairs(lengths_q, lengths_k, window_size=(INT32_MAX, INT32_MAX)) == \
        allowed_pairs(lengths_q, lengths_k)


def test_launches_run_under_the_device_guard(monkeypatch, device):
    """The forward and backward launches enter the guard for q's device; results unchanged."""
    devices = record_launch_devices(monkeypatch, varlen_ops)
    check_against_reference([7, 0, 12], [7, 0, 12], (2, 1), 16, torch.float32, True, (-1, -1), device,
                            lse_grad=True)
    assert devices == [torch.device(device)] * 2


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lengths=st.lists(st.tuples(st.integers(0, 33), st.integers(0, 33)), min_size=1, max_size=3),
    causal=st.booleans(),
    left=st.integers(-1, 20),
    right=st.integers(-1, 20),
    group=st.sampled_from([1, 2, 3]),
)
def test_fuzz_lengths_and_flags(lengths, causal, left, right, group, device):
    lengths_q, lengths_k = [a for a, _ in lengths], [b for _, b in lengths]
    check_against_reference(lengths_q, lengths_k, (group, 1), 16, torch.float32, causal, (left, right), device,
                            lse_grad=True)


def test_triton_refuses_float64_and_needs_the_interpreter_on_cpu(monkeypatch, device):
    q, k, v, cu_q, cu_k, max_q, max_k = make_batch([3], [3], 1, 1, 8, torch.float64, device)
    with pytest.raises(TypeError, match="backend='triton' supports float16, bfloat16 and float32"):
        ak.varlen_attention(q, k, v, cu_q, cu_k, max_q, max_k, backend="triton")
    q, k, v, cu_q, cu_k, max_q, max_k = make_batch([3], [3], 1, 1, 8, torch.float32, "cpu")
    monkeypatch.setattr(_backend, "_triton_state", lambda: (True, False, ""))
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        ak.varlen_attention(q, k, v, cu_q, cu_k, max_q, max_k, backend="triton")


# ------------------------------------------------------------------------- GPU codegen

SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}

# Launches of every attention kernel on CPU tensors, compiled by compile_launches as on a GPU:
# 16 heads and strides divisible by 16 as in real use, so Triton specialises them alike.
_LAUNCHES = """
import torch
from adaptkern.kernels import varlen_attention as fwd, varlen_attention_bwd as bwd
cu = torch.tensor([0, 512, 640], dtype=torch.int32)
for dtype, head_dim, window in {cases}:
    q = torch.randn(640, 16, head_dim).to(dtype)
    k, v = torch.randn_like(q), torch.randn_like(q)
    out, lse = fwd.forward(q, k, v, cu, cu, 512, 512, head_dim ** -0.5, *window)
    bwd.backward(torch.randn_like(q), q, k, v, out, lse, None, cu, cu, 512, 512, head_dim ** -0.5, *window)
"""


def _launch_code(cases):
    return _LAUNCHES.format(cases="[" + ", ".join(f"(torch.{dtype}, {d}, {w})" for dtype, d, w in cases) + "]")


@pytest.mark.slow
def test_kernels_compile_for_gpu():
    """Every attention kernel compiled exactly as its launch builds it (compile_launches): bf16
    at head dims 64 / 128 / 256 with a window on both sides and without (the default call), on
    sm_80 and sm_90; float32 and fp16 (bf16's twin) on sm_80 only, the tighter limit. Shared
    memory fits, each launch's num_warps is the one compiled, 16-bit matmuls use tensor cores,
    and the sm_90 bf16 forward at D=64 / 128 loads full blocks by TMA and spills nothing."""
    bf16 = [("bfloat16", d, w) for d in (64, 128, 256) for w in ((5, 3), (-1, -1))]
    sm80_only = [("float32", d, (5, 3)) for d in (64, 128, 256)] + [("float32", 128, (-1, -1)),
                                                                      ("float16", 128, (-1, -1))]
    with ThreadPoolExecutor(max_workers=2) as pool:
        jobs = [pool.submit(compile_launches, _launch_code(bf16), archs=(90,)),
                pool.submit(compile_launches, _launch_code(bf16 + sm80_only), archs=(80,))]
        sm90, sm80 = (job.result() for job in jobs)
    kernels = ["_fwd_kernel", "_preprocess_kernel", "_dkdv_kernel", "_dq_kernel"]
    assert [r["kernel"] for r in sm90] == kernels * len(bf16)
    assert [r["kernel"] for r in sm80] == kernels * (len(bf16) + len(sm80_only))
    for results, cases in ((sm90, bf16), (sm80, bf16 + sm80_only)):
        for i, result in enumerate(results):
            dtype, head_dim, window = cases[i // len(kernels)]
            assert result["shared"] <= SHARED_LIMIT[result["arch"]], result
            assert result["num_warps"] == result["constexprs"].get("num_warps", 4), result
            if dtype != "float32" and result["kernel"] != "_preprocess_kernel":
                assert result["mma"] or result["wgmma"], f"{dtype} {result}: matmuls must use tensor cores"
            if result["arch"] == 90 and result["kernel"] == "_fwd_kernel" and head_dim <= 128:
                assert result["tma"] and result["wgmma"] and result["local"] == 0, result


# Hot-loop warp-instructions per (query, key) pair on sm_90 (a static proxy for speed, not a
# speed): the forward's budget is the Triton tutorial's fused attention forward at the same
# shapes (0.255 at D=64 and 128, measured with the shared sass_audit tool); the backward's
# (dK/dV + dQ loops) is the tutorial's fused backward at D=64 (its dK/dV and dQ loops at its
# 32 x 128 / 128 x 32 tiles, 4 warps, 5 stages: 0.599 under Triton 3.9, 0.594 under 3.6).
FWD_PER_PAIR_BUDGET = 0.255
BWD_PER_PAIR_BUDGET = {64: 0.599}


@pytest.mark.slow
def test_hot_loops_stay_within_budget_and_do_not_spill():
    """bf16, 8 x 2048 tokens, 16 heads, no mask, compiled for sm_90 exactly as launched: the
    forward's hot loop (and at D=64 the backward's) within its instruction budget per pair,
    with no local-memory traffic in it."""
    code = """
import torch
from adaptkern.kernels import varlen_attention as fwd, varlen_attention_bwd as bwd
cu = torch.arange(0, 8 * 2048 + 1, 2048, dtype=torch.int32)
for d in (64, 128):
    q = torch.empty(8 * 2048, 16, d, dtype=torch.bfloat16)
    out, lse = fwd.forward(q, q, q, cu, cu, 2048, 2048, d ** -0.5, -1, -1)
    if d == 64:
        bwd.backward(q, q, q, q, out, lse, None, cu, cu, 2048, 2048, d ** -0.5, -1, -1)
"""
    results = compile_launches(code, archs=(90,))
    assert [r["kernel"] for r in results] == ["_fwd_kernel", "_preprocess_kernel", "_dkdv_kernel", "_dq_kernel",
                                              "_fwd_kernel"]
    bwd_per_pair = 0.0
    for r in results:
        if r["kernel"] == "_preprocess_kernel":
            continue
        c = r["constexprs"]
        per_pair = r["hot_loop"] * r["num_warps"] / (c["BLOCK_M"] * c["BLOCK_N"])
        assert r["hot_loop"] > 0 and r["hot_loop_spills"] == 0, r
        if r["kernel"] == "_fwd_kernel":
            assert per_pair <= FWD_PER_PAIR_BUDGET, (per_pair, r)
        else:
            bwd_per_pair += per_pair
    assert bwd_per_pair <= BWD_PER_PAIR_BUDGET[64], bwd_per_pair
