"""ak.integrations.timm.PackedViT against timm's own forward: tiny randomly initialised timm
ViTs (no weights downloaded), a list of images of different sizes, at the base and other
patch sizes. Oracle per image: the same timm model set to that patch size with timm's
``set_input_size`` and run with ``dynamic_img_size=True``, its patch weight resampled from
the base weight by timm's ``resample_patch_embed`` (differentiably, so gradients reach the
same base parameters).

timm resamples patch weights and position embeddings in float32 whatever the model's dtype;
the float64 oracle makes those two resamplings float64 (timm's DTYPE_INTERMEDIATE, and
resample_abs_pos_embed's float cast), nothing else, so that float64 compares to 1e-10.
"""

import copy
import os

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

import _torchvision_stub
import adaptkern as ak

_torchvision_stub.install()
timm = pytest.importorskip("timm") if not os.environ.get("CI") else __import__("timm")
from timm.layers import patch_embed as timm_patch_embed  # noqa: E402
from timm.layers import resample_patch_embed  # noqa: E402
from timm.models import vision_transformer as timm_vit  # noqa: E402

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}

CONFIGS = {
    # timm's default: class token whose own position embedding sits in pos_embed
    "cls": dict(class_token=True, no_embed_class=False, global_pool="token"),
    # class + register tokens, pos embed on patches only, avg pooling with fc_norm, qk-norm, LayerScale
    "reg-noembed-avg": dict(class_token=True, reg_tokens=2, no_embed_class=True, global_pool="avg", qk_norm=True,
                            init_values=0.1),
    # no prefix token at all, max pooling
    "noprefix-avgmax": dict(class_token=False, no_embed_class=False, global_pool="avgmax"),
}


def tiny_vit(dtype, **config):
    model = timm_vit.VisionTransformer(img_size=(24, 32), patch_size=8, in_chans=3, num_classes=5, embed_dim=32,
                                       depth=2, num_heads=2, mlp_ratio=2.0, dynamic_img_size=True, **config)
    with torch.no_grad():  # timm zero-inits some of these; random values make the test see them
        for name, param in model.named_parameters():
            if any(key in name for key in ("pos_embed", "cls_token", "reg_token", "head")):
                param.normal_(0, 0.5)
    return model.to(dtype).eval()


def float64_pos_resample(posemb, new_size, old_size=None, num_prefix_tokens=1, interpolation="bicubic",
                         antialias=True, verbose=False, align_corners=None):
    """timm's resample_abs_pos_embed without its float32 round trip (float64 oracle only)."""
    if old_size is not None and tuple(old_size) == tuple(new_size):
        return posemb
    prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
    dim = grid.shape[-1]
    grid = grid.reshape(1, old_size[0], old_size[1], dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=tuple(new_size), mode=interpolation, antialias=antialias,
                         align_corners=align_corners)
    return torch.cat([prefix, grid.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)


@pytest.fixture
def timm_at_dtype(monkeypatch):
    def setup(dtype):
        if dtype == torch.float64:
            monkeypatch.setattr(timm_patch_embed, "DTYPE_INTERMEDIATE", torch.float64)
            monkeypatch.setattr(timm_vit, "resample_abs_pos_embed", float64_pos_resample)
    return setup


def timm_per_image(model, images, patch):
    """timm's own forward, one image at a time, at patch size ``patch``."""
    ref = copy.deepcopy(model)
    grid = model.patch_embed.grid_size
    ref.set_input_size(img_size=(grid[0] * patch, grid[1] * patch), patch_size=(patch, patch))
    params = dict(model.named_parameters())
    params["patch_embed.proj.weight"] = resample_patch_embed(model.patch_embed.proj.weight, [patch, patch])
    return torch.cat([functional_call(ref, params, (img[None],)) for img in images])


def grads(outputs, model, images, cotangent):
    inputs = list(model.parameters()) + list(images)
    return torch.autograd.grad(outputs, inputs, cotangent, allow_unused=True)


def rel_err(value, reference, floor=1e-300):
    """||value - reference|| / max(||reference||, floor)."""
    value, reference = value.detach(), reference.detach()
    return float((value - reference).norm() / reference.norm().clamp_min(floor))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("config", list(CONFIGS), ids=list(CONFIGS))
@pytest.mark.parametrize("patch", [8, 4, 12])
def test_packed_vit_matches_timm_per_image(config, patch, dtype, timm_at_dtype):
    timm_at_dtype(dtype)
    model = tiny_vit(dtype, **CONFIGS[config])
    sizes = [(3, 2), (1, 5), (4, 4), (2, 1)]  # grids in patches: different from the base (3, 4) and each other
    images = [torch.randn(3, h * patch, w * patch, dtype=dtype, requires_grad=True) for h, w in sizes]
    packed = ak.integrations.timm.PackedViT(model, patch_size=patch)
    logits = packed(images)
    expected = timm_per_image(model, images, patch)
    assert logits.shape == expected.shape == (len(images), 5)
    assert rel_err(logits, expected) <= TOL[dtype], rel_err(logits, expected)
    cotangent = torch.randn_like(logits)
    names = [n for n, _ in model.named_parameters()] + [f"image {i}" for i in range(len(images))]
    wanted = grads(expected, model, images, cotangent)
    # gradients that are zero in exact arithmetic (a key-norm bias shifts every score of a
    # query equally) are round-off on both sides: measured against the whole gradient's size
    floor = 1e-6 * torch.cat([w.detach().reshape(-1) for w in wanted if w is not None]).norm()
    for name, got, want in zip(names, grads(logits, model, images, cotangent), wanted):
        if want is None:
            assert got is None or not got.any(), name
            continue
        assert got is not None, name
        assert rel_err(got, want, floor) <= TOL[dtype] * 10, f"{name}: {rel_err(got, want, floor):.3e}"


def test_forward_features_layout_and_patch_size_per_call(timm_at_dtype):
    """forward_features gives every image's prefix tokens first, cu_seqlens counting them;
    the patch size can change per call; the timm model's parameters are used in place."""
    timm_at_dtype(torch.float64)
    model = tiny_vit(torch.float64, **CONFIGS["reg-noembed-avg"])
    packed = ak.integrations.timm.PackedViT(model)
    assert packed.patch_size == (8, 8) and packed.num_prefix_tokens == 3
    assert {id(p) for p in packed.parameters()} == {id(p) for p in model.parameters()}
    images = [torch.randn(3, 16, 24, dtype=torch.float64), torch.randn(3, 8, 8, dtype=torch.float64)]
    tokens, cu = packed.forward_features(images)
    assert cu.tolist() == [0, 3 + 6, 3 + 6 + 3 + 1] and tokens.shape == (13, 32)
    tokens4, cu4 = packed.forward_features(images, patch_size=4)
    assert cu4.tolist() == [0, 3 + 24, 3 + 24 + 3 + 4]
    assert "forward" not in vars(model.blocks[0].attn)  # timm's own forward is back
    ref = model.forward_features(images[0][None])[0]
    assert rel_err(tokens[:9], ref) <= 1e-10


def test_prepend_prefix_tokens():
    """Shared and per-sequence prefixes, zero-length sequences, gradients."""
    tokens = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    cu = torch.tensor([0, 3, 3, 7], dtype=torch.int32)
    prefix = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    out = ak.prepend_prefix_tokens(tokens, cu, prefix, max_seqlen=4)
    expected = torch.cat([prefix, tokens[:3], prefix, prefix, tokens[3:]])
    assert out.cu_seqlens.tolist() == [0, 5, 7, 13] and out.max_seqlen == 6
    torch.testing.assert_close(out.data, expected, rtol=0, atol=0)
    cotangent = torch.randn_like(expected)
    for got, want in zip(torch.autograd.grad(out.data, (tokens, prefix), cotangent),
                         torch.autograd.grad(expected, (tokens, prefix), cotangent)):
        torch.testing.assert_close(got, want)
    per_seq = torch.randn(3, 1, 4, dtype=torch.float64)
    out = ak.prepend_prefix_tokens(tokens, cu, per_seq)
    assert out.max_seqlen == 5
    torch.testing.assert_close(out.data, torch.cat([per_seq[0], tokens[:3], per_seq[1], per_seq[2], tokens[3:]]))
    with pytest.raises(ValueError, match=r"prefix must be \(P, D\) or \(S, P, D\)"):
        ak.prepend_prefix_tokens(tokens, cu, torch.randn(2, 2, 4, dtype=torch.float64))


def test_unsupported_models_are_named():
    with pytest.raises(TypeError, match="timm_vit must be a timm VisionTransformer"):
        ak.integrations.timm.PackedViT(torch.nn.Linear(2, 2))
    model = timm_vit.VisionTransformer(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2,
                                       class_token=False, global_pool="map")
    with pytest.raises(NotImplementedError, match="attention pooling"):
        ak.integrations.timm.PackedViT(model)


class FeaturesAndLogits(torch.nn.Module):
    """A model returning a (features, logits) tuple, as many timm-based models do."""

    def __init__(self, vit):
        super().__init__()
        self.vit = vit

    def forward(self, x):
        features = self.vit.forward_features(x)
        return features, self.vit.forward_head(features)


def test_count_step_on_timm_models():
    """count_step books a timm ViT's FLOPs to layer types by the structure of the calls
    (pass-through Identity / Dropout modules and tuple outputs included), equal to formulas
    written from the architecture; the packed wrapper's attention counts each image's pairs."""
    dim, depth, hidden, classes, patch = 32, 2, 64, 5, 8
    model = timm_vit.VisionTransformer(img_size=32, patch_size=patch, num_classes=classes, embed_dim=dim, depth=depth,
                                       num_heads=2, mlp_ratio=2.0, reg_tokens=1)
    images = torch.randn(2, 3, 32, 32)
    n = 16 + 2  # patches + class + register token
    linear = {"attn_linear": 2 * depth * 2 * n * dim * 4 * dim, "mlp": 2 * depth * 2 * n * dim * hidden * 2,
              "head": 2 * 2 * dim * classes}
    forward = {"patch_embed": 2 * 2 * 16 * 3 * patch * patch * dim, "attention": 2 * depth * 4 * dim * n * n, **linear}
    backward = {"patch_embed": forward["patch_embed"], "attention": forward["attention"] * 5 // 2,
                **{k: 2 * v for k, v in linear.items()}}
    for net, loss in ((model, lambda: model(images).sum()),
                      (FeaturesAndLogits(model), lambda: FeaturesAndLogits(model)(images)[1].sum())):
        step = ak.flops.count_step(net, loss)
        assert step.counts == {"forward": forward, "backward": backward}
    packed = ak.integrations.timm.PackedViT(model, patch_size=4)
    sizes = [(32, 32), (16, 24)]
    step = ak.flops.count_step(packed, lambda: packed([torch.randn(3, h, w) for h, w in sizes]).sum())
    lengths = [2 + (h // 4) * (w // 4) for h, w in sizes]
    assert step.get("forward", "attention") == depth * 4 * dim * sum(n * n for n in lengths)
    assert step.get("forward", "attn_linear") == depth * 2 * sum(lengths) * dim * 4 * dim
    assert step.get("forward", "patch_resize") == 2 * dim * 3 * patch * patch * 4 * 4
    assert step.get("forward", "other") == 0
