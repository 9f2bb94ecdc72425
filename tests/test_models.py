"""adaptkern.models: packed ViT / LM forward and backward on packed mixed-size input, the
equal-length fast path against the varlen path (outputs, gradients, FLOP counts), no
leakage between packed sequences, causality, and argument errors."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import adaptkern as ak
from adaptkern.models import PackedLM, PackedViT, VarlenSelfAttention


def _vit(**kw):
    cfg = dict(num_classes=5, in_chans=3, dim=32, depth=2, num_heads=2, base_patch_size=8, pos_grid=(4, 4))
    cfg.update(kw)
    return PackedViT(**cfg).double()


def test_vit_mixed_resolution_packed_equals_one_image_at_a_time():
    model = _vit()
    sizes = [(16, 24), (8, 8), (32, 16), (24, 24)]
    images = [torch.randn(3, h, w, dtype=torch.float64, requires_grad=True) for h, w in sizes]
    logits = model(images, 8)
    assert logits.shape == (len(images), 5)
    alone = torch.cat([model([img], 8) for img in images])
    torch.testing.assert_close(logits, alone)  # packing never mixes images
    logits.square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert all(img.grad is not None and img.grad.abs().sum() > 0 for img in images)


@pytest.mark.parametrize("patch", [4, 8, 16])
def test_vit_batch_tensor_equals_list_path(patch):
    model = _vit()
    images = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    torch.testing.assert_close(model(images, patch), model(list(images), patch))


def test_vit_patch_and_resolution_change_between_calls():
    model = _vit()
    for patch, res in [(16, 32), (8, 32), (4, 16), (8, 24)]:
        out = model(torch.randn(2, 3, res, res, dtype=torch.float64), patch)
        assert out.shape == (2, 5) and torch.isfinite(out).all()


@pytest.mark.parametrize("causal", [False, True])
def test_folded_equal_length_attention_matches_varlen(causal):
    """The equal-length fast path (sequences folded into heads) == the per-sequence varlen
    path: outputs, gradients, and the FLOPs FlopCounterMode reports."""
    attn = VarlenSelfAttention(32, 4, causal=causal, rope=causal).double()
    seqs, length = 3, 7
    x = torch.randn(seqs * length, 32, dtype=torch.float64, requires_grad=True)
    cu = torch.arange(seqs + 1, dtype=torch.int32) * length
    positions = torch.arange(length).repeat(seqs)
    results = []
    for uniform in (None, length):
        x.grad = None
        attn.zero_grad()
        with FlopCounterMode(display=False) as counter:
            out = attn(x, cu, length, positions, uniform_seqlen=uniform)
            out.square().sum().backward()
        results.append((out.detach(), x.grad.clone(), attn.qkv.weight.grad.clone(), counter.get_total_flops()))
    (o1, gx1, gw1, f1), (o2, gx2, gw2, f2) = results
    torch.testing.assert_close(o1, o2)
    torch.testing.assert_close(gx1, gx2)
    torch.testing.assert_close(gw1, gw2)
    assert f1 == f2


def test_uniform_seqlen_must_divide_tokens():
    attn = VarlenSelfAttention(32, 4)
    with pytest.raises(ValueError, match="uniform_seqlen"):
        attn(torch.randn(10, 32), torch.tensor([0, 10], dtype=torch.int32), 10, uniform_seqlen=3)


def _lm():
    return PackedLM(vocab_size=40, dim=32, depth=2, num_heads=2).double()


def test_lm_packed_varlen_equals_one_sequence_at_a_time_and_backward():
    model = _lm()
    lengths = [5, 1, 12, 0, 9]
    seqs = [torch.randint(0, 40, (n,)) for n in lengths]
    tokens = torch.cat(seqs)
    cu = ak.cu_seqlens_from_lengths(lengths)
    logits = model(tokens, cu, max(lengths))
    assert logits.shape == (sum(lengths), 40)
    alone = torch.cat([model(s, ak.cu_seqlens_from_lengths([len(s)]), max(len(s), 1)) for s in seqs if len(s)])
    torch.testing.assert_close(logits, alone)  # RoPE positions restart, attention stays inside a sequence
    torch.nn.functional.cross_entropy(logits, torch.randint(0, 40, (sum(lengths),))).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_lm_batch_of_windows_equals_packed_path_and_is_causal():
    model = _lm()
    windows = torch.randint(0, 40, (3, 11))
    packed = model(windows.reshape(-1), torch.arange(4, dtype=torch.int32) * 11, 11)
    batched = model(windows)
    assert batched.shape == (3, 11, 40)
    torch.testing.assert_close(batched.reshape(-1, 40), packed)
    changed = windows.clone()
    changed[:, 6:] = torch.randint(0, 40, (3, 5))
    torch.testing.assert_close(model(changed)[:, :6], batched[:, :6])  # the future never leaks back
    assert not torch.allclose(model(changed)[:, 6:], batched[:, 6:])


def test_model_argument_errors():
    with pytest.raises(ValueError, match="tokens"):
        _lm()(torch.randint(0, 40, (5,)))
    with pytest.raises(ValueError, match="cu_seqlens"):
        _lm()(torch.randint(0, 40, (2, 5)), torch.tensor([0, 5, 10], dtype=torch.int32), 5)
    with pytest.raises(ValueError, match="images"):
        _vit()(torch.randn(3, 32, 32, dtype=torch.float64), 8)
    with pytest.raises(ValueError, match="num_heads"):
        VarlenSelfAttention(30, 4)
