"""ak.varlen_attn: torch.nn.attention.varlen.varlen_attn's signature and return convention,
against per-sequence float64 attention written out here (causal = window (-1, 0), sliding
windows, GQA, seqlen_q != seqlen_k, zero-length sequences), forward, lse and gradients."""

import inspect

import pytest
import torch

import adaptkern as ak

varlen = pytest.importorskip("torch.nn.attention.varlen")


def reference(q, k, v, lens_q, lens_k, window, scale):
    """Per sequence, float64: softmax over the keys the bottom-right-aligned window allows."""
    outs, lses = [], []
    sq = sk = 0
    group = q.shape[1] // k.shape[1]
    for lq, lk in zip(lens_q, lens_k):
        qi = q[sq:sq + lq].double().transpose(0, 1)
        ki = k[sk:sk + lk].double().repeat_interleave(group, 1).transpose(0, 1)
        vi = v[sk:sk + lk].double().repeat_interleave(group, 1).transpose(0, 1)
        scores = qi @ ki.transpose(1, 2) * scale
        i = torch.arange(lq)[:, None] + lk - lq
        j = torch.arange(lk)[None]
        allowed = torch.ones(lq, lk, dtype=torch.bool)
        if window[0] >= 0:
            allowed &= j >= i - window[0]
        if window[1] >= 0:
            allowed &= j <= i + window[1]
        scores = scores.masked_fill(~allowed, float("-inf"))
        lse = torch.logsumexp(scores, -1)
        probs = torch.where(allowed, torch.exp(scores - lse[..., None].clamp_min(-1e300)), 0.0)
        outs.append((probs @ vi).transpose(0, 1))
        lses.append(lse.transpose(0, 1))
        sq, sk = sq + lq, sk + lk
    return torch.cat(outs), torch.cat(lses)


def test_signature_matches_torch():
    ours = inspect.signature(ak.varlen_attn).parameters
    theirs = inspect.signature(varlen.varlen_attn).parameters
    for name, param in theirs.items():
        assert name in ours, name
        assert (ours[name].kind, ours[name].default) == (param.kind, param.default), name
    assert list(ours)[:len(theirs)] == list(theirs)


@pytest.mark.parametrize("window", [(-1, -1), (-1, 0), (3, 0), (2, 1)])
def test_matches_per_sequence_attention(window):
    lens_q, lens_k = [5, 0, 9, 1, 4], [7, 3, 9, 1, 2]
    q = torch.randn(sum(lens_q), 4, 16, dtype=torch.float64, requires_grad=True)
    k = torch.randn(sum(lens_k), 2, 16, dtype=torch.float64, requires_grad=True)
    v = torch.randn(sum(lens_k), 2, 16, dtype=torch.float64, requires_grad=True)
    cu_q, cu_k = ak.cu_seqlens_from_lengths(lens_q), ak.cu_seqlens_from_lengths(lens_k)
    out, lse = ak.varlen_attn(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), window_size=window, enable_gqa=True,
                              scale=0.3, return_aux=varlen.AuxRequest(lse=True))
    ref_out, ref_lse = reference(q, k, v, lens_q, lens_k, window, 0.3)
    assert lse.shape == (sum(lens_q), 4)  # torch's convention (T_q, H_q), not flash-attn's (H_q, T_q)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    finite = torch.isfinite(ref_lse)
    torch.testing.assert_close(lse[finite].double(), ref_lse[finite], rtol=1e-10, atol=1e-10)
    assert torch.isneginf(lse[~finite]).all()
    cotangent = torch.randn_like(out)
    for got, want in zip(torch.autograd.grad(out, (q, k, v), cotangent),
                         torch.autograd.grad(ref_out, (q, k, v), cotangent)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    plain = ak.varlen_attn(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), window_size=window, enable_gqa=True,
                           scale=0.3)
    assert isinstance(plain, torch.Tensor)
    torch.testing.assert_close(plain, out, rtol=0, atol=0)


def test_default_scale_and_float32():
    q, k, v = (torch.randn(6, 2, 8) for _ in range(3))
    cu = torch.tensor([0, 2, 6], dtype=torch.int32)
    out = ak.varlen_attn(q, k, v, cu, cu, 4, 4)
    ref, _ = reference(q, k, v, [2, 4], [2, 4], (-1, -1), 8 ** -0.5)
    torch.testing.assert_close(out, ref.float(), rtol=1e-5, atol=1e-5)


def test_torch_rules_and_unsupported_options():
    q, k = torch.randn(4, 4, 8), torch.randn(4, 2, 8)
    cu = torch.tensor([0, 4], dtype=torch.int32)
    with pytest.raises(ValueError, match="enable_gqa=True"):
        ak.varlen_attn(q, k, k, cu, cu, 4, 4)
    for name, value in (("seqused_k", torch.tensor([4], dtype=torch.int32)), ("num_splits", 1),
                        ("block_table", torch.zeros(1, 1, dtype=torch.int32))):
        with pytest.raises(NotImplementedError, match=name):
            ak.varlen_attn(q, k, k, cu, cu, 4, 4, enable_gqa=True, **{name: value})
    with pytest.raises(NotImplementedError, match="cu_seq_k=None"):
        ak.varlen_attn(q, k, k, cu, None, 4, 4, enable_gqa=True)


def test_torch_flop_count_beside_ours():
    """The benchmark's torch varlen peer carries what torch's FlopCounterMode books for its
    kernel: every (query, key) pair, so it matches our exact count without a mask and is
    about twice it for causal attention."""
    from adaptkern.bench import varlen_attention as bench

    lengths = [5, 0, 9, 1]
    cu = ak.cu_seqlens_from_lengths(lengths)
    theirs = bench.torch_counted_flops(cu, 4, 16)
    unmasked = sum(4 * 4 * 16 * n * n for n in lengths)
    assert theirs == {"fwd": unmasked, "fwd_bwd": unmasked + 5 * unmasked // 2}
    assert theirs["fwd"] == ak.flops.attention_flops(cu, cu, 4, 16)
    causal = ak.flops.attention_flops(cu, cu, 4, 16, causal=True)
    assert causal == sum(4 * 4 * 16 * n * (n + 1) // 2 for n in lengths) < theirs["fwd"]
