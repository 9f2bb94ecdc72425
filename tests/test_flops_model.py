"""ak.flops.count_step: whole-step counts per layer type against FlopCounterMode and the
ledger, against per-sequence SDPA, against formulas written from the architecture, and the
shape-only mode (compute=False) against real execution."""

import random

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import adaptkern as ak
from adaptkern.flops import FlopLedger, count_step, interp_pos_embed_flops, measure_step
from adaptkern.flops.interp_pos_embed import axis_tap_count
from adaptkern.models import PackedLM, PackedViT
from adaptkern.reference.patch_embed import pi_resize_matrix as reference_resize

VIT = dict(num_classes=7, in_chans=3, dim=32, depth=2, num_heads=2, mlp_ratio=2.0, base_patch_size=8,
           pos_grid=(6, 6))
LM = dict(vocab_size=50, dim=32, depth=2, num_heads=4, mlp_ratio=4.0)


def _vit_loss(model, images, patch):
    labels = torch.arange(len(images)) % VIT["num_classes"]
    return lambda: F.cross_entropy(model(images, patch), labels)


def _lm_loss(model, lengths):
    tokens = torch.randint(0, LM["vocab_size"], (sum(lengths),))
    cu = ak.cu_seqlens_from_lengths(lengths)
    return lambda: F.cross_entropy(model(tokens, cu, max(lengths)), tokens)


def vit_formula(cfg, height, width, patch, images=1):
    """Training FLOPs of PackedViT on ``images`` images of height x width, from the
    architecture: {phase: {layer: FLOPs}}. One multiply-add = 2 FLOPs; the images need no
    gradient (patch embedding backward = weight gradient only); every linear layer's backward
    computes the input and the weight gradient (2x); attention backward is 2.5x forward."""
    c, d, depth, k = cfg["in_chans"], cfg["dim"], cfg["depth"], cfg["num_classes"]
    hidden, p0 = int(d * cfg["mlp_ratio"]), cfg["base_patch_size"]
    n = (height // patch) * (width // patch)
    resize = 0 if patch == p0 else 2 * d * c * p0 * p0 * patch * patch
    pos = images * interp_pos_embed_flops([(height // patch, width // patch)], cfg["pos_grid"], d)
    fwd = {"patch_embed": images * 2 * n * c * patch * patch * d, "patch_resize": resize, "pos_embed": pos,
           "attention": images * depth * 4 * d * n * n, "attn_linear": images * depth * 2 * n * d * 4 * d,
           "mlp": images * depth * 2 * n * d * hidden * 2, "head": images * 2 * d * k}
    bwd = {"patch_embed": fwd["patch_embed"], "patch_resize": resize, "pos_embed": pos,
           "attention": fwd["attention"] * 5 // 2, "attn_linear": 2 * fwd["attn_linear"], "mlp": 2 * fwd["mlp"],
           "head": 2 * fwd["head"]}
    return {"forward": fwd, "backward": bwd}


def lm_formula(cfg, lengths):
    d, depth, vocab, hidden = cfg["dim"], cfg["depth"], cfg["vocab_size"], int(cfg["dim"] * cfg["mlp_ratio"])
    tokens, pairs = sum(lengths), sum(n * (n + 1) // 2 for n in lengths)  # causal: key j <= query i
    fwd = {"attention": depth * 4 * d * pairs, "attn_linear": depth * 8 * tokens * d * d,
           "mlp": depth * 4 * tokens * d * hidden, "head": 2 * tokens * d * vocab}
    bwd = {"attention": fwd["attention"] * 5 // 2, "attn_linear": 2 * fwd["attn_linear"], "mlp": 2 * fwd["mlp"],
           "head": 2 * fwd["head"]}
    return {"forward": fwd, "backward": bwd}


def _as_table(step):
    return {phase: {lay: v for lay, v in layers.items() if v} for phase, layers in step.counts.items()}


def _nonzero(formula):
    return {phase: {lay: v for lay, v in layers.items() if v} for phase, layers in formula.items()}


@pytest.mark.parametrize("height,width,patch", [(24, 24, 8), (32, 16, 4), (48, 24, 6), (16, 40, 8)])
def test_vit_step_follows_the_architecture_formula(height, width, patch):
    model = PackedViT(**VIT)
    images = torch.randn(1, 3, height, width)
    step = count_step(model, _vit_loss(model, images, patch))
    assert _as_table(step) == _nonzero(vit_formula(VIT, height, width, patch))


def test_vit_scaling_in_patch_size_is_exact():
    """At a fixed image, token-wise layers scale with tokens ~ 1/p^2 and attention with
    tokens^2 ~ 1/p^4, exactly (integer arithmetic, no fit)."""
    model = PackedViT(**VIT)
    image = torch.randn(1, 3, 48, 48)
    steps = {p: count_step(model, _vit_loss(model, image, p), compute=False).by_layer() for p in (4, 8, 16)}
    for p in (4, 8, 16):
        assert steps[p]["attention"] * p ** 4 == steps[16]["attention"] * 16 ** 4
        for lay in ("attn_linear", "mlp"):
            assert steps[p][lay] * p ** 2 == steps[16][lay] * 16 ** 2
        assert steps[p]["patch_embed"] == steps[16]["patch_embed"]  # C*H*W*D per image, whatever p


def test_lm_packed_step_follows_the_formula():
    model = PackedLM(**LM)
    lengths = [5, 1, 17, 0, 9]
    step = count_step(model, _lm_loss(model, lengths))
    assert _as_table(step) == _nonzero(lm_formula(LM, lengths))


def test_shape_only_counts_equal_real_counts():
    """compute=False answers the arithmetic with empty tensors but must count exactly what
    a real run counts: mixed-resolution ViT (PI-resize included) and a packed causal LM."""
    vit, lm = PackedViT(**VIT), PackedLM(**LM)
    images = [torch.randn(3, 24, 36), torch.randn(3, 12, 12), torch.randn(3, 36, 12)]
    lengths = [random.randint(0, 30) for _ in range(4)] + [1]
    for model, loss in ((vit, _vit_loss(vit, images, 6)), (lm, _lm_loss(lm, lengths))):
        grads = []
        for p in model.parameters():
            p.grad = torch.randn_like(p)
            grads.append(p.grad.clone())
        axis_tap_count.cache_clear()  # the formulas must see true grids under the shape-only mode
        shapes_only = count_step(model, loss, compute=False)
        for p, before in zip(model.parameters(), grads):
            assert torch.equal(p.grad, before), "compute=False must restore the gradients"
        model.zero_grad(set_to_none=True)
        assert shapes_only == count_step(model, loss, compute=True)
    # The 8 -> 6 resize matrix, first built inside the shape-only mode, is the true one.
    torch.testing.assert_close(ak.pi_resize_matrix(8, 6), reference_resize((8, 8), (6, 6)).float())


def test_step_total_equals_ledger_measure_step():
    """count_step and the ledger (measure_step) count the same training step identically,
    per phase, with a real optimizer step in between."""
    model = PackedViT(**VIT)
    images = [torch.randn(3, 16, 24), torch.randn(3, 32, 32)]
    loss_fn = _vit_loss(model, images, 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    step = count_step(model, loss_fn, optimizer=optimizer)
    ledger = FlopLedger()
    with measure_step(ledger, 0, "p4", samples=2) as m:
        loss = loss_fn()
        m.backward(loss)
        optimizer.step()
    assert ledger.total(phase="forward") == step.forward
    assert ledger.total(phase="backward") == step.backward
    assert ledger.total() == step.total + step.get("optimizer")
    with FlopCounterMode(display=False) as counter:
        loss_fn().backward()
    assert counter.get_total_flops() == step.total


@pytest.mark.parametrize("patch,resize", [(8, False), (4, True)])
def test_packed_batch_equals_sum_of_per_image_counts(patch, resize):
    model = PackedViT(**VIT)
    sizes = [(16, 24), (32, 32), (8, 8), (24, 8)]
    images = [torch.randn(3, h, w) for h, w in sizes]
    packed = count_step(model, _vit_loss(model, images, patch), compute=False)
    singles = [count_step(model, _vit_loss(model, [x], patch), compute=False) for x in images]
    per_call = singles[0].only({"patch_resize"})
    assert bool(per_call.total) == resize
    assert packed == sum(singles[1:], singles[0]) - (len(images) - 1) * per_call
    assert packed.get(layer="patch_resize") == per_call.total  # once per call, not per image


def _sdpa_math_forward(h, lq, lk, d):
    q, k, v = torch.randn(1, h, lq, d), torch.randn(1, h, lk, d), torch.randn(1, h, lk, d)
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        F.scaled_dot_product_attention(q, k, v)
    return fc.get_total_flops()


def _sdpa_fused_backward(h, lq, lk, d):
    """FlopCounterMode on PyTorch's fused SDPA backward (meta tensors: no GPU needed)."""
    q, k, v = (torch.empty(1, h, n, d, device="meta") for n in (lq, lk, lk))
    out, lse, seed, offset = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True)
    with FlopCounterMode(display=False) as fc:
        torch.ops.aten._scaled_dot_product_efficient_attention_backward(
            torch.empty_like(out), q, k, v, None, out, lse, seed, offset, 0.0, [True, True, True, False])
    return fc.get_total_flops()


def test_noncausal_attention_equals_per_sequence_sdpa():
    heads, dim = 3, 8
    lengths = [random.randint(1, 40) for _ in range(5)] + [1]
    cu = ak.cu_seqlens_from_lengths(lengths)
    q, k, v = (torch.randn(sum(lengths), heads, dim, requires_grad=True) for _ in range(3))
    with FlopCounterMode(display=False) as fc:
        out = ak.varlen_attention(q, k, v, cu, cu, max(lengths), max(lengths))
        forward = fc.get_total_flops()
        out.backward(torch.randn_like(out))
    assert forward == sum(_sdpa_math_forward(heads, n, n, dim) for n in lengths)
    assert fc.get_total_flops() - forward == sum(_sdpa_fused_backward(heads, n, n, dim) for n in lengths)
    assert forward == ak.flops.attention_flops(cu, cu, heads, dim)


def test_causal_attention_counts_the_masked_pairs():
    """Bottom-right causal with Lq != Lk: 4*H*D per pair the explicit mask allows."""
    heads, dim = 2, 8
    lq = [random.randint(0, 20) for _ in range(4)]
    lk = [n + random.randint(0, 10) for n in lq]
    pairs = sum(int(torch.ones(a, b).tril(b - a).sum()) for a, b in zip(lq, lk))
    q = torch.randn(sum(lq), heads, dim)
    k, v = torch.randn(sum(lk), heads, dim), torch.randn(sum(lk), heads, dim)
    with FlopCounterMode(display=False) as fc:
        ak.varlen_attention(q, k, v, ak.cu_seqlens_from_lengths(lq), ak.cu_seqlens_from_lengths(lk),
                            max(lq), max(lk), causal=True)
    assert fc.get_total_flops() == 4 * heads * dim * pairs


def test_count_step_errors_name_the_argument():
    model = PackedLM(**LM)
    with pytest.raises(TypeError, match="model"):
        count_step(lambda: 0, lambda: 0)
    with pytest.raises(TypeError, match="loss_fn"):
        count_step(model, 3)
    with pytest.raises(ValueError, match="optimizer"):
        count_step(model, lambda: 0, optimizer=torch.optim.SGD(model.parameters(), lr=1), compute=False)
    with pytest.raises(ValueError, match="scalar"):
        count_step(model, lambda: model(torch.zeros(1, 3, dtype=torch.long)))
    with pytest.raises(ValueError, match="phase"):
        count_step(model, _lm_loss(model, [3])).get(phase="fwd")
