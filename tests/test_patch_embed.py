"""flexi_patch_embed / flexi_patch_embed_packed / FlexiPatchEmbed: every backend against
F.conv2d in float64 with the weight PI-resized by the independent oracle, gradients, packing,
FLOP counts, custom-op checks, torch.compile and errors."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import adaptkern as ak
from adaptkern import _backend
from adaptkern.ops import patch_embed as patch_embed_ops

from helpers import assert_rel_close
from test_pack import record_launch_devices
from test_patch_embed_resize import oracle_pi_resize

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def _backends(device, dtype=torch.float32):
    names = [b for b in _backend.available_backends(device) if b != "cuda"]
    return [b for b in names if b in ("reference", "cpu") or dtype != torch.float64]


def conv_reference(images, weight, bias, patch, **resize):
    """float64 tokens (B, N, D): F.conv2d with the oracle's float64 PI-resized weight."""
    patch = (patch, patch) if isinstance(patch, int) else patch
    w = oracle_pi_resize(weight, patch, **resize)
    b = None if bias is None else bias.double()
    return F.conv2d(images.double(), w, b, stride=patch).flatten(2).transpose(1, 2)


def conv_reference_packed(images, weight, bias, patch, **resize):
    """float64 packed tokens (T, D) from one conv per image (empty images give no tokens)."""
    patch = (patch, patch) if isinstance(patch, int) else patch
    out = [conv_reference(x[None], weight, bias, patch, **resize)[0] if x.shape[1] and x.shape[2] else
           torch.zeros(0, weight.shape[0], dtype=torch.float64) + 0 * weight.double().sum() for x in images]
    return torch.cat(out)


def _inputs(batch, chans, size, base, dim, dtype, device, bias=True):
    images = torch.randn(batch, chans, *size, device=device).to(dtype)
    weight = (torch.randn(dim, chans, *base, device=device) / (chans * base[0] * base[1]) ** 0.5).to(dtype)
    return images, weight, (torch.randn(dim, device=device).to(dtype) if bias else None)


# (batch, chans, (H, W), base patch, patch, D): odd sizes, non-square, identity resize, up and down
CASES = [
    (2, 3, (21, 14), (5, 5), 7, 40),
    (1, 4, (8, 18), (4, 4), (4, 6), 24),
    (3, 3, (16, 16), (8, 8), 8, 17),
    (2, 1, (12, 12), (6, 6), 3, 16),
]


@pytest.mark.interpret
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_matches_conv2d_with_resized_weight(dtype, case, device):
    batch, chans, size, base, patch, dim = case
    images, weight, bias = _inputs(batch, chans, size, base, dim, dtype, device)
    expected = conv_reference(images, weight, bias, patch)
    for backend in _backends(device, dtype):
        out = ak.flexi_patch_embed(images, weight, bias, patch, backend=backend)
        assert out.dtype == dtype and out.shape == expected.shape, backend
        assert_rel_close(out, expected, name=f"{backend} tokens")
    # Channels-last images and strided views are read in place, with the same result.
    wide = torch.zeros(*images.shape[:3], 2 * images.shape[3], device=device, dtype=dtype)
    wide[..., 1::2] = images
    for layout in (images.to(memory_format=torch.channels_last), wide[..., 1::2]):
        for backend in _backends(device, dtype):
            out = ak.flexi_patch_embed(layout, weight, bias, patch, backend=backend)
            assert_rel_close(out, expected, name=f"{backend} tokens, strides {layout.stride()}")


@pytest.mark.interpret
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES[:3])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gradients_match_conv2d_autograd(dtype, case, channels_last, device):
    batch, chans, size, base, patch, dim = case
    images, weight, bias = _inputs(batch, chans, size, base, dim, dtype, device)
    if channels_last:
        images = images.to(memory_format=torch.channels_last)
    grad = torch.randn(conv_reference(images, weight, bias, patch).shape, device=device).to(dtype)
    ref_inputs = [t.detach().double().requires_grad_() for t in (images, weight, bias)]
    expected = torch.autograd.grad(conv_reference(*ref_inputs, patch), ref_inputs, grad.double())
    for backend in _backends(device, dtype):
        inputs = [t.detach().clone().requires_grad_() for t in (images, weight, bias)]
        out = ak.flexi_patch_embed(*inputs, patch, backend=backend)
        got = torch.autograd.grad(out, inputs, grad)
        for name, g, e, x in zip(("images", "weight", "bias"), got, expected, inputs):
            assert g.dtype == dtype and g.shape == x.shape
            assert_rel_close(g, e, dtype, name=f"{backend} grad {name}")


@pytest.mark.interpret
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_equals_per_image_and_counts_tokens(dtype, device):
    patch, chans, dim = 4, 3, 20
    weight = torch.randn(dim, chans, 6, 6, device=device).to(dtype)
    bias = torch.randn(dim, device=device).to(dtype)
    sizes = [(8, 12), (0, 4), (4, 4), (16, 8), (12, 0)]
    images = [torch.randn(chans, h, w, device=device).to(dtype) for h, w in sizes]
    images[3] = images[3].transpose(1, 2).contiguous().transpose(1, 2)  # a strided view
    expected = conv_reference_packed(images, weight, bias, patch)
    for backend in _backends(device, dtype):
        packed = ak.flexi_patch_embed_packed(images, weight, bias, patch, backend=backend)
        tokens, cu_seqlens, grid_sizes, max_seqlen = packed
        assert cu_seqlens.dtype == torch.int32 and grid_sizes.dtype == torch.int32
        assert cu_seqlens.tolist() == [0, 6, 6, 7, 15, 15]
        assert grid_sizes.tolist() == [[2, 3], [0, 1], [1, 1], [4, 2], [3, 0]]
        assert max_seqlen == 8 and tokens.shape == (15, dim) and tokens.dtype == dtype
        assert_rel_close(tokens, expected, dtype, name=f"{backend} packed")
        per_image = torch.cat([ak.flexi_patch_embed(x[None], weight, bias, patch, backend=backend)[0] for x in images])
        if backend == "cpu":  # one BLAS GEMM over all tokens: its blocking, so its rounding, depends on T
            assert_rel_close(tokens, per_image.double(), dtype, name="cpu packed vs per image")
        else:
            torch.testing.assert_close(tokens, per_image, rtol=0, atol=0)


@pytest.mark.interpret
def test_packed_gradients_match_per_image_autograd(device):
    patch, chans, dim = 3, 2, 12
    sizes = [(6, 9), (3, 3), (0, 6), (9, 3)]
    images = [torch.randn(chans, h, w, device=device) for h, w in sizes]
    weight, bias = torch.randn(dim, chans, 5, 5, device=device), torch.randn(dim, device=device)
    grad = torch.randn(sum(h * w for h, w in sizes) // patch ** 2, dim, device=device)
    ref = [t.double().requires_grad_() for t in (*images, weight, bias)]
    out = conv_reference_packed(ref[:4], ref[4], ref[5], patch)
    expected = torch.autograd.grad(out, ref, grad.double(), allow_unused=True)
    for backend in _backends(device):
        inputs = [t.clone().requires_grad_() for t in (*images, weight, bias)]
        tokens = ak.flexi_patch_embed_packed(inputs[:4], inputs[4], inputs[5], patch, backend=backend).tokens
        got = torch.autograd.grad(tokens, inputs, grad)
        for g, e, x in zip(got, expected, inputs):
            e = torch.zeros_like(x, dtype=torch.float64) if e is None else e
            assert g.shape == x.shape
            assert_rel_close(g, e, torch.float32, name=f"{backend} packed grad")


@pytest.mark.interpret
def test_empty_batches_and_images(device):
    weight, bias = torch.randn(8, 3, 4, 4, device=device), torch.randn(8, device=device)
    for backend in _backends(device):
        for shape in [(0, 3, 8, 8), (2, 3, 0, 8), (2, 3, 8, 0)]:
            images = torch.randn(shape, device=device, requires_grad=True)
            out = ak.flexi_patch_embed(images, weight, bias, 4, backend=backend)
            assert out.shape == (shape[0], (shape[2] // 4) * (shape[3] // 4), 8)
            w = weight.clone().requires_grad_()
            (g_images, g_weight) = torch.autograd.grad(ak.flexi_patch_embed(images, w, bias, 4, backend=backend).sum(),
                                                       (images, w))
            assert g_images.shape == images.shape and torch.equal(g_weight, torch.zeros_like(w))
        packed = ak.flexi_patch_embed_packed([torch.randn(3, 0, 4, device=device)], weight, None, 4, backend=backend)
        assert packed.tokens.shape == (0, 8) and packed.cu_seqlens.tolist() == [0, 0] and packed.max_seqlen == 0


@pytest.mark.interpret
def test_launches_run_under_the_device_guard(monkeypatch, device):
    """Forward, grad_input and grad_weight of both layouts enter the guard for their device."""
    devices = record_launch_devices(monkeypatch, patch_embed_ops)
    weight = torch.randn(8, 2, 4, 4, device=device, requires_grad=True)
    images = torch.randn(1, 2, 8, 4, device=device, requires_grad=True)
    ak.flexi_patch_embed(images, weight, None, 4, backend="triton").sum().backward()
    packed = ak.flexi_patch_embed_packed(list(images.unbind(0)), weight, None, 4, backend="triton")
    packed.tokens.sum().backward()
    assert devices == [images.device] * 6


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_custom_ops_pass_opcheck(backend, device):
    if backend not in _backends(device):
        pytest.skip(f"{backend} unavailable on {device}")
    images = torch.randn(2, 3, 8, 12, device=device, requires_grad=True)
    weight = torch.randn(5, 3, 4, 4, device=device, requires_grad=True)
    bias = torch.randn(5, device=device, requires_grad=True)
    ops = torch.ops.adaptkern
    torch.library.opcheck(ops.patch_embed.default, (images, weight, bias, backend))
    grad = torch.randn(2, 6, 5, device=device)
    # Channels-last images: the fake gradient must have the real one's strides.
    channels_last = images.detach().to(memory_format=torch.channels_last)
    torch.library.opcheck(ops.patch_embed_grad_input.default, (grad, channels_last, weight, backend))
    torch.library.opcheck(ops.patch_embed_grad_weight.default, (grad, images, weight, backend))
    listed = [torch.randn(3, 4, 8, device=device, requires_grad=True), torch.randn(3, 8, 4, device=device,
                                                                                   requires_grad=True)]
    torch.library.opcheck(ops.patch_embed_packed.default, (listed, weight, bias, backend))
    grad = torch.randn(4, 5, device=device)
    torch.library.opcheck(ops.patch_embed_packed_grad_input.default, (grad, listed, weight, backend))
    torch.library.opcheck(ops.patch_embed_packed_grad_weight.default, (grad, listed, weight, backend))


@pytest.mark.parametrize("patch,images_grad", [(6, True), (6, False), (4, True)])
def test_flop_counter_matches_the_formula(patch, images_grad):
    from adaptkern.flops import patch_embed_backward_flops, patch_embed_flops

    base, chans, dim = 4, 3, 10
    images = torch.randn(2, chans, 12, 24, requires_grad=images_grad)
    weight = torch.randn(dim, chans, base, base, requires_grad=True)
    bias = torch.randn(dim, requires_grad=True)
    tokens = 2 * (12 // patch) * (24 // patch)
    with FlopCounterMode(display=False) as forward:
        out = ak.flexi_patch_embed(images, weight, bias, patch)
    assert forward.get_total_flops() == patch_embed_flops(tokens, chans, patch, dim, base_patch_size=base)
    assert patch_embed_flops(tokens, chans, patch, dim) == 2 * tokens * chans * patch * patch * dim
    with FlopCounterMode(display=False) as backward:
        out.backward(torch.randn_like(out))
    assert backward.get_total_flops() == patch_embed_backward_flops(tokens, chans, patch, dim, base_patch_size=base,
                                                                    images_grad=images_grad)
    listed = [torch.randn(chans, 12, 12), torch.randn(chans, 24, 12)]
    with FlopCounterMode(display=False) as packed:
        ak.flexi_patch_embed_packed(listed, weight, bias, patch)
    tokens = (144 + 288) // patch ** 2
    assert packed.get_total_flops() == patch_embed_flops(tokens, chans, patch, dim, base_patch_size=base)
    # The resize is counted once per call, and not at all at the base size.
    resize = 2 * dim * chans * base * base * patch * patch
    assert patch_embed_flops(tokens, chans, patch, dim, base_patch_size=base) - resize * (patch != base) == \
        patch_embed_flops(tokens, chans, patch, dim)


def test_module_batch_packed_prewarm_and_compile():
    torch.manual_seed(0)
    module = ak.nn.FlexiPatchEmbed(8, in_chans=3, embed_dim=16)
    assert module.weight.shape == (16, 3, 8, 8) and module.bias.shape == (16,)
    bound = 1 / (3 * 64) ** 0.5  # timm / nn.Conv2d init
    assert module.weight.abs().max() <= bound and module.bias.abs().max() <= bound
    images = torch.randn(2, 3, 24, 24)
    expected = conv_reference(images, module.weight.detach(), module.bias.detach(), 6)
    assert_rel_close(module(images, 6), expected, torch.float32)
    assert module(images).shape == (2, 9, 16)
    packed = module([images[0], images[1, :, :12]], 6)
    assert_rel_close(packed.tokens, torch.cat([expected[0], expected[1, :8]]), torch.float32)

    module.prewarm([4, 6, (8, 12), 8])
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    for patch in (6, 4):
        out = compiled(images, patch)
        torch.testing.assert_close(out, module(images, patch))
        out.sum().backward()
    assert module.weight.grad is not None and module.bias.grad is not None


def test_autocast_runs_in_the_autocast_dtype():
    images, weight, bias = torch.randn(2, 3, 8, 8), torch.randn(6, 3, 4, 4), torch.randn(6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ak.flexi_patch_embed(images, weight, bias, 4)
    assert out.dtype == torch.bfloat16
    assert_rel_close(out, conv_reference(images, weight, bias, 4), torch.bfloat16)


def test_bad_input_names_the_argument(device):
    images, weight, bias = torch.randn(2, 3, 12, 12), torch.randn(8, 3, 4, 4), torch.randn(8)
    fn, packed = ak.flexi_patch_embed, ak.flexi_patch_embed_packed
    with pytest.raises(ValueError, match=r"images has spatial size \(12, 12\), which is not divisible"):
        fn(images, weight, bias, 5)
    with pytest.raises(ValueError, match=r"patch_size must be >= 1"):
        fn(images, weight, bias, 0)
    with pytest.raises(ValueError, match=r"patch_size\[1\] must be >= 1"):
        fn(images, weight, bias, (4, -1))
    with pytest.raises(ValueError, match="weight has 4 input channels"):
        fn(images, torch.randn(8, 4, 4, 4), bias, 4)
    with pytest.raises(ValueError, match="bias has 7 entries"):
        fn(images, weight, torch.randn(7), 4)
    with pytest.raises(ValueError, match="images must have 4 dimensions"):
        fn(images[0], weight, bias, 4)
    with pytest.raises(TypeError, match="images must have dtype"):
        fn(images.to(torch.int64), weight, bias, 4)
    with pytest.raises(TypeError, match="weight must be a torch.Tensor"):
        fn(images, None, bias, 4)
    with pytest.raises(ValueError, match="interpolation must be one of"):
        fn(images, weight, bias, 4, interpolation="area")
    with pytest.raises(ValueError, match="images must be a non-empty list"):
        packed([], weight, bias, 4)
    with pytest.raises(ValueError, match="images must be a non-empty list"):
        packed(images, weight, bias, 4)
    with pytest.raises(ValueError, match=r"images\[1\] has spatial size \(6, 8\)"):
        packed([images[0], torch.randn(3, 6, 8)], weight, bias, 4)
    with pytest.raises(ValueError, match=r"images\[1\] has 2 channels"):
        packed([images[0], torch.randn(2, 8, 8)], weight, bias, 4)
    with pytest.raises(TypeError, match=r"images\[1\] must have dtype"):
        packed([images[0], torch.randn(3, 8, 8, dtype=torch.float64)], weight, bias, 4)
    with pytest.raises(ValueError, match=r"images\[0\] must have 3 dimensions"):
        packed([images], weight, bias, 4)
    with pytest.raises(RuntimeError, match="needs CUDA tensors|not built"):
        fn(images, weight, bias, 4, backend="cuda")
    if "triton" in _backend.available_backends(device):
        with pytest.raises(TypeError, match="backend='triton' takes float16, bfloat16 or float32"):
            fn(images.double().to(device), weight.double().to(device), None, 4, backend="triton")
    with pytest.raises(ValueError, match="base_patch_size must be >= 1"):
        ak.nn.FlexiPatchEmbed(0, 3, 8)


@pytest.mark.parametrize("packed", [False, True])
def test_second_order_gradients(packed):
    # The gradient ops have autograd too (they are linear), so double backward works.
    images = torch.randn(2, 2, 6, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    if packed:
        def fn(x, w, b):
            return ak.flexi_patch_embed_packed([x[0], x[1, :, :4]], w, b, 2, backend="reference").tokens
    else:
        def fn(x, w, b):
            return ak.flexi_patch_embed(x, w, b, 2, backend="reference")
    torch.autograd.gradgradcheck(fn, (images, weight, bias))
