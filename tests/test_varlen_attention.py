"""adaptkern.varlen_attention: the reference path against per-sequence SDPA, the FLOP
formula, the custom ops (opcheck, torch.compile, FlopCounterMode), the flash-attn drop-in
and input validation. Triton kernels: tests/test_varlen_attention_triton.py."""

import inspect
import os

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import adaptkern as ak
from adaptkern import _backend, _checks
from adaptkern.flops.varlen_attention import allowed_pairs, attention_backward_flops, attention_flops

from helpers import REL_TOL, assert_rel_close

# (causal, window_size) combinations every accuracy test walks through.
MASKS = [(False, (-1, -1)), (True, (-1, -1)), (False, (3, 2)), (True, (4, -1)), (False, (-1, 0)), (False, (0, 5))]


def random_lengths(count, high, *, with_empty=True):
    """``count`` lengths in [0, high], always including a 0 and a 1 when ``with_empty``, and
    one of at least 2 when ``count >= 3`` (with only lengths 0 and 1 every query row sees one
    key, its softmax is constant and dq is exactly 0: a relative error would mean nothing)."""
    lengths = torch.randint(0, high + 1, (count,)).tolist()
    if count >= 3 and high >= 2:
        lengths[2] = int(torch.randint(2, high + 1, ()))
    if with_empty and count >= 2:
        lengths[0], lengths[1] = 0, 1
        lengths = [lengths[i] for i in torch.randperm(count).tolist()]
    return lengths


def make_batch(lengths_q, lengths_k, num_heads, num_kv_heads, head_dim, dtype, device="cpu"):
    """Packed q, k, v (std-normal, then cast) with their cu_seqlens and max lengths."""
    q = torch.randn(sum(lengths_q), num_heads, head_dim, dtype=torch.float64, device=device).to(dtype)
    k = torch.randn(sum(lengths_k), num_kv_heads, head_dim, dtype=torch.float64, device=device).to(dtype)
    v = torch.randn(sum(lengths_k), num_kv_heads, head_dim, dtype=torch.float64, device=device).to(dtype)
    cu_q = ak.cu_seqlens_from_lengths(lengths_q, device)
    cu_k = ak.cu_seqlens_from_lengths(lengths_k, device)
    return q, k, v, cu_q, cu_k, max(lengths_q, default=0), max(lengths_k, default=0)


def brute_mask(len_q, len_k, causal, window_size):
    """The DESIGN.md mask, element by element."""
    left, right = window_size
    mask = torch.zeros(len_q, len_k, dtype=torch.bool)
    for i in range(len_q):
        for j in range(len_k):
            centre = i + len_k - len_q
            ok = not causal or j <= centre
            ok = ok and (left < 0 or j >= centre - left) and (right < 0 or j <= centre + right)
            mask[i, j] = ok
    return mask


def sdpa_oracle(q, k, v, lengths_q, lengths_k, scale, causal, window_size):
    """Per-sequence F.scaled_dot_product_attention with an explicit mask (float64), and lse
    from torch.logsumexp; rows that see no key: out 0, lse -inf."""
    group = q.shape[1] // k.shape[1]
    outs, lses, q0, k0 = [], [], 0, 0
    for len_q, len_k in zip(lengths_q, lengths_k):
        qs = q[q0:q0 + len_q].transpose(0, 1)
        ks = k[k0:k0 + len_k].transpose(0, 1).repeat_interleave(group, 0)
        vs = v[k0:k0 + len_k].transpose(0, 1).repeat_interleave(group, 0)
        mask = brute_mask(len_q, len_k, causal, window_size)
        if len_k:
            out = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, scale=scale)
            scores = (qs @ ks.transpose(1, 2) * scale).masked_fill(~mask, float("-inf"))
            lse = torch.logsumexp(scores, -1)
        else:
            out = qs * 0
            lse = torch.full(qs.shape[:2], float("-inf"), dtype=q.dtype)
        out = torch.where(mask.any(1)[None, :, None], out, 0)
        outs.append(out.transpose(0, 1))
        lses.append(lse)
        q0, k0 = q0 + len_q, k0 + len_k
    return torch.cat(outs), torch.cat(lses, 1)


def grads(fn, inputs, weights):
    """d(sum(out * w_out) + sum(finite lse * w_lse)) / d(inputs) for fn(*inputs) -> (out, lse)."""
    inputs = [x.detach().requires_grad_() for x in inputs]
    out, lse = fn(*inputs)
    loss = (out * weights[0]).sum() + (torch.where(torch.isfinite(lse), lse, 0) * weights[1]).sum()
    return (out, lse), torch.autograd.grad(loss, inputs)


@pytest.mark.parametrize("causal,window_size", MASKS)
@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (3, 1)])
def test_reference_matches_sdpa_per_sequence(causal, window_size, heads):
    lengths_q = random_lengths(6, 9)
    lengths_k = lengths_q if heads[1] == 2 else random_lengths(6, 11)
    q, k, v, cu_q, cu_k, max_q, max_k = make_batch(lengths_q, lengths_k, *heads, 12, torch.float64)
    scale = float(torch.empty(()).uniform_(0.1, 0.6))
    weights = (torch.randn_like(q), torch.randn(heads[0], q.shape[0], dtype=torch.float64))

    def ours(q, k, v):
        return ak.varlen_attention(q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale=scale, causal=causal,
                                   window_size=window_size, return_lse=True, backend="reference")

    def oracle(q, k, v):
        return sdpa_oracle(q, k, v, lengths_q, lengths_k, scale, causal, window_size)

    (out, lse), got = grads(ours, (q, k, v), weights)
    (out_ref, lse_ref), expected = grads(oracle, (q, k, v), weights)
    assert lse.dtype == torch.float64 and lse.shape == (heads[0], q.shape[0])
    assert torch.equal(torch.isinf(lse), torch.isinf(lse_ref))
    finite = torch.isfinite(lse_ref)
    assert_rel_close(lse[finite], lse_ref[finite], name="lse")
    assert_rel_close(out, out_ref, name="out")
    for name, g, g_ref in zip(("dq", "dk", "dv"), got, expected):
        assert_rel_close(g, g_ref, name=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_reference_low_precision_returns_input_dtype(dtype):
    lengths = random_lengths(4, 10)
    q, k, v, cu_q, cu_k, max_q, max_k = make_batch(lengths, lengths, 4, 2, 16, dtype)
    out, lse = ak.varlen_attention(q, k, v, cu_q, cu_k, max_q, max_k, causal=True, return_lse=True)
    exact, exact_lse = ak.varlen_attention(q.double(), k.double(), v.double(), cu_q, cu_k, max_q, max_k,
                                           causal=True, return_lse=True)
    assert out.dtype == dtype and lse.dtype == torch.float32
    assert_rel_close(out, exact, dtype, name="out")
    finite = torch.isfinite(exact_lse)
    # float32 lse; from 16-bit inputs PyTorch's CPU flash kernel (the default cpu backend)
    # computes it to about 2e-5 (max over 300 draws; float32 inputs: 1e-7), at float32's bound
    tol = REL_TOL[torch.float32] if dtype == torch.float32 else 1e-4
    assert_rel_close(lse[finite], exact_lse[finite], tol=tol, name="lse")


def test_rows_without_keys_give_zero_out_minus_inf_lse_zero_grads():
    # Lq > Lk with causal: the first Lq - Lk rows see nothing; a sequence with no keys at all.
    lengths_q, lengths_k = [5, 3, 0], [2, 0, 4]
    q, k, v, cu_q, cu_k, max_q, max_k = make_batch(lengths_q, lengths_k, 2, 1, 8, torch.float64)
    weights = (torch.randn_like(q), torch.randn(2, 8, dtype=torch.float64))

    def run(q, k, v):
        return ak.varlen_attention(q, k, v, cu_q, cu_k, max_q, max_k, causal=True, return_lse=True)

    (out, lse), (dq, dk, dv) = grads(run, (q, k, v), weights)
    blind = torch.tensor([True, True, True, False, False, True, True, True])
    assert torch.equal(torch.isinf(lse), blind[None].expand(2, -1)) and (lse[:, blind] < 0).all()
    assert (out[blind] == 0).all() and (dq[blind] == 0).all()
    assert all(torch.isfinite(t).all() for t in (out, dq, dk, dv))
    assert (dk[2:] == 0).all() and (dv[2:] == 0).all()  # keys of the sequence without queries


def test_default_scale_and_noncontiguous_inputs():
    lengths = [7, 0, 4]
    q, k, v, cu_q, cu_k, max_q, max_k = make_batch(lengths, lengths, 3, 3, 16, torch.float64)
    expected = ak.varlen_attention(q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale=16 ** -0.5)
    strided = [torch.randn(x.shape[0], x.shape[2], x.shape[1], dtype=x.dtype).transpose(1, 2) for x in (q, k, v)]
    for dst, src in zip(strided, (q, k, v)):
        dst.copy_(src)
    assert not strided[0].is_contiguous()
    torch.testing.assert_close(ak.varlen_attention(q, k, v, cu_q, cu_k, max_q, max_k), expected, rtol=0, atol=0)
    torch.testing.assert_close(ak.varlen_attention(*strided, cu_q, cu_k, max_q, max_k), expected, rtol=0, atol=0)


# ---------------------------------------------------------------------------------- FLOPs


@pytest.mark.parametrize("causal,window_size", MASKS + [(True, (2, 3)), (False, (7, 7))])
def test_attention_flops_counts_allowed_pairs(causal, window_size):
    lengths_q, lengths_k = random_lengths(7, 12), random_lengths(7, 12)
    pairs = sum(int(brute_mask(a, b, causal, window_size).sum()) for a, b in zip(lengths_q, lengths_k))
    cu_q, cu_k = ak.cu_seqlens_from_lengths(lengths_q), ak.cu_seqlens_from_lengths(lengths_k)
    assert allowed_pairs(lengths_q, lengths_k, causal=causal, window_size=window_size) == pairs
    flops = attention_flops(cu_q, cu_k, 6, 40, causal=causal, window_size=window_size)
    assert flops == 4 * 6 * 40 * pairs
    assert attention_flops(cu_q.tolist(), cu_k.tolist(), 6, 40, causal=causal, window_size=window_size) == flops
    assert attention_backward_flops(cu_q, cu_k, 6, 40, causal=causal, window_size=window_size) * 2 == 5 * flops


def test_attention_flops_closed_forms_for_long_sequences():
    # Causal square attention sees L (L + 1) / 2 pairs; a window (w, 0) sees
    # (w + 1) L - w (w + 1) / 2. Millions of tokens must not build an L x L mask.
    lengths = [1_000_000, 4096, 1]
    cu = ak.cu_seqlens_from_lengths(lengths)
    assert attention_flops(cu, cu, 2, 64, causal=True) == 4 * 2 * 64 * sum(n * (n + 1) // 2 for n in lengths)
    w = 128
    expected = sum((w + 1) * n - w * (w + 1) // 2 if n > w else n * (n + 1) // 2 for n in lengths)
    assert attention_flops(cu, cu, 1, 8, window_size=(w, 0)) == 4 * 8 * expected
    assert attention_flops(cu, cu, 1, 8) == 4 * 8 * sum(n * n for n in lengths)


def test_flop_counter_matches_formula_and_sdpa():
    lengths_q, lengths_k = [9, 0, 4, 1], [5, 3, 0, 7]
    q, k, v, cu_q, cu_k, max_q, max_k = make_batch(lengths_q, lengths_k, 4, 2, 24, torch.float32)
    q.requires_grad_()
    for causal, window_size in MASKS:
        with FlopCounterMode(display=False) as counter:
            out = ak.varlen_attention(q, k, v, cu_q, cu_k, max_q, max_k, causal=causal, window_size=window_size)
            out.sum().backward()
        counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
        forward = attention_flops(cu_q, cu_k, 4, 24, causal=causal, window_size=window_size)
        assert counts["adaptkern.varlen_attn_fwd"] == forward
        assert counts["adaptkern.varlen_attn_bwd"] == attention_backward_flops(
            cu_q, cu_k, 4, 24, causal=causal, window_size=window_size)
    # Non-causal, no window: the sum of what FlopCounterMode reports for SDPA per sequence.
    sdpa_total, bounds_q, bounds_k = 0, cu_q.tolist(), cu_k.tolist()
    for q0, q1, k0, k1 in zip(bounds_q[:-1], bounds_q[1:], bounds_k[:-1], bounds_k[1:]):
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            F.scaled_dot_product_attention(q[q0:q1].detach().transpose(0, 1)[None], k[k0:k1].transpose(0, 1)[None],
                                           v[k0:k1].transpose(0, 1)[None], enable_gqa=True)
        sdpa_total += counter.get_total_flops()
    assert sdpa_total > 0 and attention_flops(cu_q, cu_k, 4, 24) == sdpa_total


def test_flop_counter_on_meta_tensors_uses_the_max_seqlen_bound():
    # Unreadable (meta / fake) cu_seqlens: every sequence counts as max_seqlen long, the
    # upper bound torch's own flash-attention formula uses while tracing.
    q, k = torch.empty(10, 4, 16, device="meta"), torch.empty(7, 2, 16, device="meta")
    cu_q, cu_k = torch.empty(4, dtype=torch.int32, device="meta"), torch.empty(4, dtype=torch.int32, device="meta")
    with FlopCounterMode(display=False) as counter:
        out = ak.varlen_attention(q, k, k, cu_q, cu_k, 5, 4)
    assert out.shape == q.shape and out.device.type == "meta"
    assert counter.get_total_flops() == 4 * 4 * 16 * 3 * (5 * 4)


def test_attention_flops_rejects_bad_input():
    cu = torch.tensor([0, 3], dtype=torch.int32)
    with pytest.raises(ValueError, match="window_size left must be >= -1"):
        attention_flops(cu, cu, 1, 8, window_size=(-2, 0))
    with pytest.raises(TypeError, match="window_size right must be an int, got float"):
        attention_flops(cu, cu, 1, 8, window_size=(1, 2.0))
    with pytest.raises(ValueError, match="same batch"):
        attention_flops(cu, torch.tensor([0, 1, 2], dtype=torch.int32), 1, 8)
    with pytest.raises(ValueError, match="non-decreasing"):
        attention_flops([0, 3, 2], [0, 1, 2], 1, 8)
    with pytest.raises(ValueError, match="num_heads"):
        attention_flops(cu, cu, -1, 8)


# ------------------------------------------------------------------- custom op machinery


def test_custom_ops_pass_opcheck():
    lengths_q, lengths_k = [3, 0, 5], [4, 2, 5]
    q, k, v, cu_q, cu_k, max_q, max_k = make_batch(lengths_q, lengths_k, 4, 2, 8, torch.float64)
    for t in (q, k, v):
        t.requires_grad_()
    args = (q, k, v, cu_q, cu_k, max_q, max_k, 0.3, True, 2, -1, "reference")
    torch.library.opcheck(torch.ops.adaptkern.varlen_attn_fwd.default, args)
    out, lse = torch.ops.adaptkern.varlen_attn_fwd(*args)
    bwd_args = (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out.detach(), lse.detach(),
                torch.randn_like(lse), cu_q, cu_k, max_q, max_k, 0.3, True, 2, -1, "reference")
    torch.library.opcheck(torch.ops.adaptkern.varlen_attn_bwd.default, bwd_args)


class _TinyAttention(torch.nn.Module):
    def __init__(self, dim=32, heads=4, kv_heads=2):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        self.qkv = torch.nn.Linear(dim, (heads + 2 * kv_heads) * self.head_dim)
        self.proj = torch.nn.Linear(dim, dim)

    def forward(self, x, cu_seqlens, max_seqlen):
        q, k, v = self.qkv(x).split([self.heads * self.head_dim, self.kv_heads * self.head_dim,
                                     self.kv_heads * self.head_dim], -1)
        q, k, v = (t.unflatten(-1, (-1, self.head_dim)) for t in (q, k, v))
        out = ak.varlen_attention(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, causal=True,
                                  backend="reference")
        return self.proj(out.flatten(1))


def test_compiles_fullgraph_with_autograd():
    model = _TinyAttention()
    lengths = [5, 0, 3, 8]
    cu = ak.cu_seqlens_from_lengths(lengths)
    x = torch.randn(sum(lengths), 32)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x, cu, 8)
    out.square().sum().backward()
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    expected = model(x, cu, 8)
    expected.square().sum().backward()
    torch.testing.assert_close(out, expected)
    for g, p in zip(got, model.parameters()):
        torch.testing.assert_close(g, p.grad)


# ---------------------------------------------------------------------- flash-attn drop-in


def test_flash_attn_varlen_func_signature_matches_flash_attn():
    expected = ["q", "k", "v", "cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k", "dropout_p",
                "softmax_scale", "causal", "window_size", "softcap", "alibi_slopes", "deterministic",
                "return_attn_probs", "block_table"]
    params = inspect.signature(ak.flash_attn_varlen_func).parameters
    positional = [n for n, p in params.items() if p.kind == p.POSITIONAL_OR_KEYWORD]
    assert positional == expected
    assert params["dropout_p"].default == 0.0 and params["window_size"].default == (-1, -1)


def test_flash_attn_varlen_func_matches_varlen_attention():
    lengths_q, lengths_k = [4, 6, 1], [6, 6, 3]
    q, k, v, cu_q, cu_k, max_q, max_k = make_batch(lengths_q, lengths_k, 2, 2, 8, torch.float32)
    expected, lse = ak.varlen_attention(q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale=0.2, causal=True,
                                        window_size=(2, 1), return_lse=True)
    out = ak.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, 0.0, 0.2, True, (2, 1))
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    out, lse2, probs = ak.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale=0.2, causal=True,
                                                 window_size=(2, 1), deterministic=True, return_attn_probs=True)
    torch.testing.assert_close(lse2, lse, rtol=0, atol=0)
    assert probs is None
    for kwargs, name in [({"dropout_p": 0.1}, "dropout_p"), ({"softcap": 30.0}, "softcap"),
                         ({"alibi_slopes": torch.ones(2)}, "alibi_slopes"),
                         ({"block_table": torch.zeros(3, 1, dtype=torch.int32)}, "block_table")]:
        with pytest.raises(NotImplementedError, match=name):
            ak.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, **kwargs)


# ----------------------------------------------------------------------------- bad input


def test_bad_input_names_the_argument():
    q, k, v, cu_q, cu_k, max_q, max_k = make_batch([3, 4], [2, 5], 4, 2, 16, torch.float32)
    run = ak.varlen_attention

    def raises(exc, match, *args, **kwargs):
        with pytest.raises(exc, match=match):
            run(*args, **kwargs)

    raises(ValueError, "q must have 3 dimensions", q[None], k, v, cu_q, cu_k, max_q, max_k)
    raises(ValueError, "k must have 3 dimensions", q, k[0], v, cu_q, cu_k, max_q, max_k)
    raises(TypeError, r"v must have dtype in \(float32\)", q, k, v.half(), cu_q, cu_k, max_q, max_k)
    raises(TypeError, "q must have dtype", q.int(), k, v, cu_q, cu_k, max_q, max_k)
    raises(ValueError, "k and v must have the same shape", q, k, v[:, :1], cu_q, cu_k, max_q, max_k)
    raises(ValueError, "k has head dim 8 but q has 16", q, k[..., :8], v[..., :8], cu_q, cu_k, max_q, max_k)
    raises(ValueError, "must divide that of q", q[:, :3], k, v, cu_q, cu_k, max_q, max_k)
    big = torch.randn(7, 1, 264)
    raises(ValueError, "head dim D=264; supported head dims are 8 to 256", big, big, big, cu_q, cu_q, max_q, max_q)
    raises(ValueError, "head dim D=4; supported", q[..., :4], k[..., :4], v[..., :4], cu_q, cu_k, max_q, max_k)
    raises(TypeError, r"cu_seqlens_q must have dtype in \(int32\)", q, k, v, cu_q.long(), cu_k, max_q, max_k)
    raises(ValueError, r"cu_seqlens_k\[0\] must be 0", q, k, v, cu_q, cu_k + 1, max_q, max_k)
    raises(ValueError, "cu_seqlens_q must be non-decreasing", q, k, v, torch.tensor([0, 4, 3, 7], dtype=torch.int32),
           torch.tensor([0, 2, 2, 7], dtype=torch.int32), max_q, max_k)
    raises(ValueError, r"cu_seqlens_q\[-1\]=6 must equal q.shape\[0\]=7", q, k, v,
           torch.tensor([0, 3, 6], dtype=torch.int32), cu_k, max_q, max_k)
    raises(ValueError, "cu_seqlens_q describes 2 sequences but cu_seqlens_k describes 1", q, k, v, cu_q,
           torch.tensor([0, 7], dtype=torch.int32), max_q, 7)
    raises(ValueError, "max_seqlen_k=4 is smaller than the longest sequence in cu_seqlens_k", q, k, v, cu_q, cu_k,
           max_q, 4)
    raises(ValueError, "max_seqlen_q must be >= 0", q, k, v, cu_q, cu_k, -1, max_k)
    raises(TypeError, "max_seqlen_q must be an int", q, k, v, cu_q, cu_k, 4.0, max_k)
    raises(ValueError, "window_size left must be >= -1", q, k, v, cu_q, cu_k, max_q, max_k, window_size=(-2, 0))
    raises(ValueError, "window_size right must be >= -1", q, k, v, cu_q, cu_k, max_q, max_k, window_size=(1, -5))
    raises(ValueError, "window_size must be a pair", q, k, v, cu_q, cu_k, max_q, max_k, window_size=3)
    raises(TypeError, "window_size right must be an int, got float", q, k, v, cu_q, cu_k, max_q, max_k,
           window_size=(1, 2.0))
    raises(TypeError, "softmax_scale must be a float", q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale="x")
    raises(ValueError, "softmax_scale must be finite", q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale=float("nan"))
    raises(TypeError, "causal must be a bool", q, k, v, cu_q, cu_k, max_q, max_k, causal=1)
    raises(ValueError, "backend must be one of", q, k, v, cu_q, cu_k, max_q, max_k, backend="flash")


@pytest.fixture
def value_checks(monkeypatch):
    """Value checks on; the names of the cu_seqlens arguments whose values each call reads."""
    monkeypatch.setenv("ADAPTKERN_VALIDATE", "1")
    checked = []
    check_values = _checks._check_cu_values
    monkeypatch.setattr(_checks, "_check_cu_values",
                        lambda op, name, *args: checked.append(name) or check_values(op, name, *args))
    return checked


def test_self_attention_reads_cu_seqlens_once(value_checks):
    # cu_seqlens_k is cu_seqlens_q: one value check (one host sync), not two.
    checked = value_checks
    q, k, v, cu, _, max_seqlen, _ = make_batch([3, 0, 5], [3, 0, 5], 2, 1, 8, torch.float32)
    ak.varlen_attention(q, k, v, cu, cu, max_seqlen, max_seqlen)
    assert checked == ["cu_seqlens_q"]
    checked.clear()
    other = cu.clone()
    ak.varlen_attention(q, k, v, other, other.clone(), max_seqlen, max_seqlen)
    assert checked == ["cu_seqlens_q", "cu_seqlens_k"]
    # The same tensor against other totals or bounds is still checked as cu_seqlens_k.
    with pytest.raises(ValueError, match=r"cu_seqlens_k\[-1\]=8 must equal k.shape\[0\]=7"):
        ak.varlen_attention(q, k[:7], v[:7], cu, cu, max_seqlen, max_seqlen)
    with pytest.raises(ValueError, match="max_seqlen_k=4 is smaller than the longest sequence in cu_seqlens_k"):
        ak.varlen_attention(q, k, v, cu, cu, max_seqlen, 4)


def test_cu_seqlens_values_are_read_once_per_tensor_while_it_is_unchanged(value_checks):
    # A model passes the same cu_seqlens to every layer: only the first call reads its values
    # (a host sync on a GPU); an in-place change, other bounds or another tensor read them again.
    checked = value_checks
    q, k, v, cu, _, max_seqlen, _ = make_batch([3, 0, 5], [3, 0, 5], 2, 1, 8, torch.float32)
    for _ in range(3):
        ak.varlen_attention(q, k, v, cu, cu, max_seqlen, max_seqlen)
    assert checked == ["cu_seqlens_q"]
    ak.varlen_attention(q, k, v, cu, cu, max_seqlen + 1, max_seqlen + 1)  # other bounds: read again
    ak.varlen_attention(q, k, v, cu, cu, max_seqlen, max_seqlen)  # both bounds now known
    assert checked == ["cu_seqlens_q"] * 2
    cu[1] = 4  # in place: the version counter moves, the values are read again and refused
    with pytest.raises(ValueError, match=r"cu_seqlens_q must be non-decreasing, but cu_seqlens_q\[2\]=3 < "):
        ak.varlen_attention(q, k, v, cu, cu, max_seqlen, max_seqlen)
    with pytest.raises(ValueError, match="must be non-decreasing"):  # a refused tensor is not remembered
        ak.varlen_attention(q, k, v, cu, cu, max_seqlen, max_seqlen)
    cu[1] = 3
    checked.clear()
    ak.varlen_attention(q, k, v, cu, cu, max_seqlen, max_seqlen)
    assert checked == ["cu_seqlens_q"]
    entries = len(_checks._VALIDATED.entries)
    del cu
    assert len(_checks._VALIDATED.entries) == entries - 1  # forgotten with the tensor
    with torch.inference_mode():  # no version counter: read on every call
        cu = torch.tensor([0, 3, 3, 8], dtype=torch.int32)
        checked.clear()
        ak.varlen_attention(q, k, v, cu, cu, max_seqlen, max_seqlen)
        ak.varlen_attention(q, k, v, cu, cu, max_seqlen, max_seqlen)
    assert checked == ["cu_seqlens_q"] * 2


def test_the_validated_index_is_bounded_and_keeps_the_newest():
    index = _checks._ValidatedIndex(size=3)
    tensors = [torch.tensor([0, i], dtype=torch.int32) for i in range(5)]
    for t in tensors:
        index.add(t, (None, None))
    assert len(index.entries) == 3
    assert [index.holds(t, (None, None)) for t in tensors] == [False, False, True, True, True]
    assert not index.holds(tensors[-1], (2, None))  # other bounds


def test_default_backend_runs_float64_on_the_reference(monkeypatch):
    # On CUDA tensors the default is triton, which has no float64 kernels: float64 goes to the
    # reference unless triton was asked for (backend= or ADAPTKERN_BACKEND), which raises.
    def resolve_as_on_cuda(backend, device, *, op, **kwargs):
        return backend if backend is not None else (os.environ.get(_backend.ENV_VAR) or "triton")

    monkeypatch.setattr(_backend, "resolve_backend", resolve_as_on_cuda)
    monkeypatch.delenv(_backend.ENV_VAR, raising=False)
    q, k, v, cu_q, cu_k, max_q, max_k = make_batch([3, 4], [2, 5], 2, 1, 8, torch.float64)
    expected = ak.varlen_attention(q, k, v, cu_q, cu_k, max_q, max_k, backend="reference")
    torch.testing.assert_close(ak.varlen_attention(q, k, v, cu_q, cu_k, max_q, max_k), expected, rtol=0, atol=0)
    with pytest.raises(TypeError, match="backend='triton' supports float16, bfloat16 and float32"):
        ak.varlen_attention(q, k, v, cu_q, cu_k, max_q, max_k, backend="triton")
    monkeypatch.setenv(_backend.ENV_VAR, "triton")
    with pytest.raises(TypeError, match="backend='triton' supports float16, bfloat16 and float32"):
        ak.varlen_attention(q, k, v, cu_q, cu_k, max_q, max_k)
