"""Variable patch-size embedding (FlexiViT): ``flexi_patch_embed`` and
``flexi_patch_embed_packed``.

The weight is PI-resized first (:mod:`adaptkern.ops.pi_resize`: a plain matmul with a cached
matrix, outside the custom ops, so autograd carries the gradient to the base weight and
FlopCounterMode counts the ``aten.mm`` once per call). The patch embedding proper is a custom op per layout
(batch ``adaptkern::patch_embed``, list ``adaptkern::patch_embed_packed``) whose gradients
are custom ops too (``..._grad_input``, ``..._grad_weight``), so FlopCounterMode sees every
product through :mod:`adaptkern.flops.patch_embed`.
"""

from typing import List, NamedTuple, Optional

import torch
from torch.utils.flop_counter import register_flop_formula

from .. import _backend, _ext
from .._checks import DTypeError, check_tensor
from ..cpu import patch_embed as cpu
from ..flops.patch_embed import patch_embed_flops
from ..reference import patch_embed as reference
from . import _eager
from .pack import on_device
from .pi_resize import _DTYPES, as_pair, check_interpolation, pi_resize

_OP = "adaptkern.flexi_patch_embed"
_POP = "adaptkern.flexi_patch_embed_packed"
_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# ----------------------------------------------------------------------------- backends

def _to_device(host: torch.Tensor, device) -> torch.Tensor:
    if torch.device(device).type == "cuda":  # pinned + non_blocking: no host sync
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)  # a no-op on the CPU; meta tensors get meta metadata


def _cuda_table(images, patch_h, patch_w):
    """Per-image int64 rows [address, stride_c, stride_h, stride_w, first token, tokens,
    grid width, 0] on the images' device, and the largest token count, for csrc."""
    if isinstance(images, torch.Tensor):
        step, device = images.stride(0) * images.element_size(), images.device
        sources = [(images.data_ptr() + b * step, images.shape[1:], images.stride()[1:])
                   for b in range(images.shape[0])]
    else:
        sources, device = [(x.data_ptr(), x.shape, x.stride()) for x in images], images[0].device
    rows, start, longest = [], 0, 0
    for address, shape, strides in sources:
        grid_w = shape[2] // patch_w
        tokens = (shape[1] // patch_h) * grid_w
        rows.append([address, *strides, start, tokens, grid_w, 0])
        start, longest = start + tokens, max(longest, tokens)
    return _to_device(torch.tensor(rows, dtype=torch.int64).reshape(-1, 8), device), longest


def _cuda_patches(images, patch_h, patch_w, chans, patches, *, gather):
    """csrc: gather the images' patches into ``patches`` (T, C*ph*pw), or scatter them back."""
    table, longest = _cuda_table(images, patch_h, patch_w)
    module = _ext.cuda_extension()
    fn = module.patchify if gather else module.unpatchify
    fn(table.data_ptr(), table.shape[0], longest, chans, patch_h, patch_w, patches.data_ptr(),
       patches.element_size(), _ext.stream_handle(patches.device))


def _run_forward(images, weight, bias, backend):
    if backend == "triton":
        return _backend.kernels("patch_embed").forward(images, weight, bias)
    if backend == "cpu":
        return cpu.patch_embed(images, weight, bias)
    embed_dim, chans, patch_h, patch_w = weight.shape
    if backend == "reference":
        if isinstance(images, torch.Tensor):
            return reference.patch_embed(images, weight, bias).flatten(0, 1)
        return reference.patch_embed_packed(images, weight, bias)
    ref = images if isinstance(images, torch.Tensor) else images[0]
    num_tokens = reference.num_tokens(images, patch_h, patch_w)
    patches = torch.empty((num_tokens, chans * patch_h * patch_w), dtype=ref.dtype, device=ref.device)
    if num_tokens:
        _cuda_patches(images, patch_h, patch_w, chans, patches, gather=True)
    flat = weight.reshape(embed_dim, chans * patch_h * patch_w)
    return patches @ flat.T if bias is None else torch.addmm(bias, patches, flat.T)


def _run_grad_input(grad, images, weight, backend):
    embed_dim = weight.shape[0]
    grad = grad.flatten(0, -2).contiguous()
    if backend == "triton":
        return _backend.kernels("patch_embed").grad_input(grad, weight, images)
    if backend == "cpu":
        return cpu.patch_embed_grad_input(grad, weight, images)
    if backend == "reference":
        if isinstance(images, torch.Tensor):
            return torch.empty_like(images).copy_(reference.patch_embed_grad_input(grad, weight, images))
        grads = reference.patch_embed_packed_grad_input(grad, weight, images)
        return [torch.empty_like(image).copy_(g) for image, g in zip(images, grads)]
    grads = torch.empty_like(images) if isinstance(images, torch.Tensor) else [torch.empty_like(x) for x in images]
    if grad.shape[0]:
        patches = (grad @ weight.reshape(embed_dim, weight[0].numel())).contiguous()
        _cuda_patches(grads, *weight.shape[2:], weight.shape[1], patches, gather=False)
    return grads


def _run_grad_weight(grad, images, weight, backend):
    embed_dim, chans, patch_h, patch_w = weight.shape
    grad = grad.flatten(0, -2).contiguous()
    if backend == "triton":
        return _backend.kernels("patch_embed").grad_weight(grad, images, patch_h, patch_w, weight.dtype)
    if backend == "cpu":
        return cpu.patch_embed_grad_weight(grad, images, patch_h, patch_w, weight.dtype)
    if backend == "reference":
        if isinstance(images, torch.Tensor):
            return reference.patch_embed_grad_weight(grad, images, patch_h, patch_w, weight.dtype)
        return reference.patch_embed_packed_grad_weight(grad, images, patch_h, patch_w, weight.dtype)
    patches = torch.empty((grad.shape[0], chans * patch_h * patch_w), dtype=grad.dtype, device=grad.device)
    if grad.shape[0]:
        _cuda_patches(images, patch_h, patch_w, chans, patches, gather=True)
    return (grad.T @ patches).reshape(weight.shape).to(weight.dtype)


# ----------------------------------------------------------------------------- custom ops

@_eager.custom_op("adaptkern::patch_embed")
def patch_embed(images: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], backend: str) -> torch.Tensor:
    """images (B, C, H, W), weight (D, C, ph, pw), bias (D,) or None -> tokens (B, N, D)."""
    with on_device(weight):
        return _run_forward(images, weight, bias, backend).reshape(_tokens_shape(images, weight))


def _tokens_shape(images, weight):
    grid = (images.shape[2] // weight.shape[2]) * (images.shape[3] // weight.shape[3])
    return images.shape[0], grid, weight.shape[0]


@patch_embed.register_fake
def _(images, weight, bias, backend):
    return images.new_empty(_tokens_shape(images, weight))


@_eager.custom_op("adaptkern::patch_embed_grad_input")
def patch_embed_grad_input(grad: torch.Tensor, images: torch.Tensor, weight: torch.Tensor,
                           backend: str) -> torch.Tensor:
    """grad (B, N, D) -> gradient of images, shaped and dtyped like images."""
    with on_device(grad):
        return _run_grad_input(grad, images, weight, backend)


@patch_embed_grad_input.register_fake
def _(grad, images, weight, backend):
    return torch.empty_like(images)


@_eager.custom_op("adaptkern::patch_embed_grad_weight")
def patch_embed_grad_weight(grad: torch.Tensor, images: torch.Tensor, weight: torch.Tensor,
                            backend: str) -> torch.Tensor:
    """grad (B, N, D) -> gradient of the (resized) weight (D, C, ph, pw)."""
    with on_device(grad):
        return _run_grad_weight(grad, images, weight, backend)


@patch_embed_grad_weight.register_fake
def _(grad, images, weight, backend):
    return weight.new_empty(weight.shape)


@_eager.custom_op("adaptkern::patch_embed_packed")
def patch_embed_packed(images: List[torch.Tensor], weight: torch.Tensor, bias: Optional[torch.Tensor],
                       backend: str) -> torch.Tensor:
    """images: list of (C, H_i, W_i) -> packed tokens (sum N_i, D)."""
    with on_device(weight):
        return _run_forward(images, weight, bias, backend)


@patch_embed_packed.register_fake
def _(images, weight, bias, backend):
    return images[0].new_empty((reference.num_tokens(images, *weight.shape[2:]), weight.shape[0]))


@_eager.custom_op("adaptkern::patch_embed_packed_grad_input")
def patch_embed_packed_grad_input(grad: torch.Tensor, images: List[torch.Tensor], weight: torch.Tensor,
                                  backend: str) -> List[torch.Tensor]:
    """grad (T, D) -> gradients of the images, each shaped and dtyped like its image."""
    with on_device(grad):
        return _run_grad_input(grad, images, weight, backend)


@patch_embed_packed_grad_input.register_fake
def _(grad, images, weight, backend):
    return [torch.empty_like(image) for image in images]


@_eager.custom_op("adaptkern::patch_embed_packed_grad_weight")
def patch_embed_packed_grad_weight(grad: torch.Tensor, images: List[torch.Tensor], weight: torch.Tensor,
                                   backend: str) -> torch.Tensor:
    """grad (T, D) -> gradient of the (resized) weight (D, C, ph, pw)."""
    with on_device(grad):
        return _run_grad_weight(grad, images, weight, backend)


@patch_embed_packed_grad_weight.register_fake
def _(grad, images, weight, backend):
    return weight.new_empty(weight.shape)


def _setup(ctx, inputs, output):
    images, weight, bias, backend = inputs
    ctx.packed = not isinstance(images, torch.Tensor)
    # needs_input_grad is True for a Tensor[] argument whatever its elements need: ask them.
    ctx.images_need_grad = any(image.requires_grad for image in images) if ctx.packed else None
    ctx.save_for_backward(weight, *([images] if not ctx.packed else images))
    ctx.bias_dtype = None if bias is None else bias.dtype
    ctx.backend = backend


def _backward(ctx, grad):
    weight, *images = ctx.saved_tensors
    images = images if ctx.packed else images[0]
    _, grad_input_op, grad_weight_op = _layout_ops(ctx.packed)
    grad_input = grad_weight = grad_bias = None
    if ctx.images_need_grad if ctx.packed else ctx.needs_input_grad[0]:
        grad_input = grad_input_op(grad, images, weight, ctx.backend)
    if ctx.needs_input_grad[1]:
        grad_weight = grad_weight_op(grad, images, weight, ctx.backend)
    if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
        accumulate = torch.promote_types(grad.dtype, torch.float32)
        grad_bias = grad.flatten(0, -2).sum(0, dtype=accumulate).to(ctx.bias_dtype)
    return _no_grad(images, ctx.packed) if grad_input is None else grad_input, grad_weight, grad_bias, None


def _no_grad(images, packed):
    """No gradient for ``images``, in the structure autograd expects (a list for a list)."""
    return [None] * len(images) if packed else None


def _grad_setup(ctx, inputs, output):
    grad, images, weight, backend = inputs
    ctx.packed = not isinstance(images, torch.Tensor)
    # needs_input_grad is True for a Tensor[] argument whatever its elements need: ask them.
    ctx.images_need_grad = any(image.requires_grad for image in images) if ctx.packed else None
    ctx.save_for_backward(grad, weight, *([images] if not ctx.packed else images))
    ctx.backend = backend


def _layout_ops(packed):
    if packed:
        return patch_embed_packed, patch_embed_packed_grad_input, patch_embed_packed_grad_weight
    return patch_embed, patch_embed_grad_input, patch_embed_grad_weight


def _grad_input_backward(ctx, upstream):
    # grad_input is linear in (grad, weight): its own gradients are the forward and the
    # weight gradient applied to the upstream image gradient.
    grad, weight, *images = ctx.saved_tensors
    forward, _, grad_weight_op = _layout_ops(ctx.packed)
    if ctx.packed:
        upstream = [torch.zeros_like(x) if u is None else u for u, x in zip(upstream, images)]
    d_grad = forward(upstream, weight, None, ctx.backend) if ctx.needs_input_grad[0] else None
    d_weight = grad_weight_op(grad, upstream, weight, ctx.backend) if ctx.needs_input_grad[2] else None
    return d_grad, _no_grad(images, ctx.packed), d_weight, None


def _grad_weight_backward(ctx, upstream):
    grad, _, *images = ctx.saved_tensors
    images = images if ctx.packed else images[0]
    forward, grad_input_op, _ = _layout_ops(ctx.packed)
    d_grad = forward(images, upstream, None, ctx.backend) if ctx.needs_input_grad[0] else None
    d_images = grad_input_op(grad, images, upstream, ctx.backend) if ctx.needs_input_grad[1] else None
    return d_grad, _no_grad(images, ctx.packed) if d_images is None else d_images, None, None


for _op in (patch_embed, patch_embed_packed):
    _op.register_autograd(_backward, setup_context=_setup)
for _op in (patch_embed_grad_input, patch_embed_packed_grad_input):
    _op.register_autograd(_grad_input_backward, setup_context=_grad_setup)
for _op in (patch_embed_grad_weight, patch_embed_packed_grad_weight):
    _op.register_autograd(_grad_weight_backward, setup_context=_grad_setup)


def _matmul_flops(tokens_by_dim: torch.Tensor, weight: torch.Tensor) -> int:
    """FLOPs of one (T, C*ph*pw) x (C*ph*pw, D) product, T*D being ``tokens_by_dim``'s size."""
    embed_dim, chans, patch_h, patch_w = weight.shape
    num_tokens = tokens_by_dim.numel() // embed_dim if embed_dim else 0
    return patch_embed_flops(num_tokens, chans, (patch_h, patch_w), embed_dim)


@register_flop_formula([torch.ops.adaptkern.patch_embed, torch.ops.adaptkern.patch_embed_packed], get_raw=True)
def _forward_flops(images, weight, bias, backend, *, out_val=None, **kwargs):
    return _matmul_flops(out_val, weight)


@register_flop_formula([torch.ops.adaptkern.patch_embed_grad_input, torch.ops.adaptkern.patch_embed_grad_weight,
                        torch.ops.adaptkern.patch_embed_packed_grad_input,
                        torch.ops.adaptkern.patch_embed_packed_grad_weight], get_raw=True)
def _backward_flops(grad, images, weight, backend, *, out_val=None, **kwargs):
    return _matmul_flops(grad, weight)


# ----------------------------------------------------------------------------- public functions

class PackedPatches(NamedTuple):
    """Tokens of images of different sizes, packed: ``tokens`` (T, D), ``cu_seqlens`` int32
    (S+1,), ``grid_sizes`` int32 (S, 2) (patch rows, cols per image), ``max_seqlen``."""

    tokens: torch.Tensor
    cu_seqlens: torch.Tensor
    grid_sizes: torch.Tensor
    max_seqlen: int


def _check_params(op, weight, bias, patch_size, chans, device, interpolation, antialias):
    check_tensor(op, "weight", weight, ndim=4, dtypes=_DTYPES, device=device)
    if weight.shape[1] != chans:
        raise ValueError(f"{op}: weight has {weight.shape[1]} input channels (shape {tuple(weight.shape)}) but "
                         f"images have {chans}")
    if 0 in weight.shape[2:]:
        raise ValueError(f"{op}: weight must have a non-empty patch, got shape {tuple(weight.shape)}")
    if bias is not None:
        check_tensor(op, "bias", bias, ndim=1, dtypes=_DTYPES, device=device)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"{op}: bias has {bias.shape[0]} entries but weight has embed_dim {weight.shape[0]}")
    check_interpolation(op, interpolation, antialias)
    return as_pair(op, "patch_size", patch_size)


def _check_divisible(op, name, height, width, patch_h, patch_w):
    if height % patch_h or width % patch_w:
        raise ValueError(f"{op}: {name} has spatial size ({height}, {width}), which is not divisible by the "
                         f"patch size ({patch_h}, {patch_w})")


def _prepare(op, dtype, device, weight, bias, patch, interpolation, antialias, backend):
    """Backend name, compute dtype, and the resized weight and bias in that dtype."""
    # meta (and other devices without autocast) raise in is_autocast_enabled: ask first.
    if (dtype != torch.float64 and _backend.autocast_available(device.type)
            and torch.is_autocast_enabled(device.type)):
        dtype = torch.get_autocast_dtype(device.type)
    name = _backend.resolve_backend(backend, device, op=op, gpu_preference=("triton", "cuda"), cuda_supported=True)
    if name == "triton" and dtype not in _TRITON_DTYPES:
        raise DTypeError(f"{op}: backend='triton' takes float16, bfloat16 or float32 images, got "
                         f"{str(dtype).replace('torch.', '')}; use backend='reference'")
    weight = pi_resize(weight, patch, interpolation=interpolation, antialias=antialias).to(dtype)
    return name, dtype, weight, None if bias is None else bias.to(dtype)


def flexi_patch_embed(images: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], patch_size, *,
                      interpolation: str = "bilinear", antialias: bool = False,
                      backend: Optional[str] = None) -> torch.Tensor:
    """Patch embedding at any patch size from one base-size weight (FlexiViT).

    Args:
        images: (B, C, H, W) float16/bfloat16/float32/float64, any strides (channels-last
            included); H and W divisible by the patch size.
        weight: (D, C, ph0, pw0) base-size weight; PI-resized to the patch size (skipped
            when equal). bias: (D,) or None.
        patch_size: int or (ph, pw), each >= 1.
        interpolation, antialias: the resize whose pseudo-inverse resizes the weight
            ("bilinear" or "bicubic").
        backend: "reference", "cpu", "triton", "cuda" or None (see DESIGN: dispatch).

    Returns (B, N, D) tokens in images' dtype (the autocast dtype under autocast),
    N = (H/ph)*(W/pw) row-major: conv2d(images, pi_resize(weight), bias, stride=patch)
    flattened. Weight and bias are cast to that dtype; products accumulate in float32.
    """
    check_tensor(_OP, "images", images, ndim=4, dtypes=_DTYPES)
    patch = _check_params(_OP, weight, bias, patch_size, images.shape[1], images.device, interpolation, antialias)
    _check_divisible(_OP, "images", images.shape[2], images.shape[3], *patch)
    name, dtype, weight, bias = _prepare(_OP, images.dtype, images.device, weight, bias, patch, interpolation,
                                         antialias, backend)
    return patch_embed(images.to(dtype), weight, bias, name)


def flexi_patch_embed_packed(images, weight: torch.Tensor, bias: Optional[torch.Tensor], patch_size, *,
                             interpolation: str = "bilinear", antialias: bool = False,
                             backend: Optional[str] = None) -> PackedPatches:
    """Patch embedding of images of different resolutions in one launch, packed, no padding.

    Args:
        images: non-empty list of (C, H_i, W_i) tensors of one dtype and device, any
            strides; H_i, W_i divisible by the patch size (0 allowed: no tokens).
        weight, bias, patch_size, interpolation, antialias, backend: as flexi_patch_embed.

    Returns PackedPatches(tokens (T, D), cu_seqlens int32 (S+1,), grid_sizes int32 (S, 2),
    max_seqlen); image i's tokens are rows cu_seqlens[i]:cu_seqlens[i+1], row-major over
    its (H_i/ph, W_i/pw) grid. Shapes come from the list: no host-device sync.
    """
    if not isinstance(images, (list, tuple)) or len(images) == 0:
        raise ValueError(f"{_POP}: images must be a non-empty list of (C, H, W) tensors, got "
                         f"{type(images).__name__ if not isinstance(images, (list, tuple)) else 'an empty list'}")
    first = check_tensor(_POP, "images[0]", images[0], ndim=3, dtypes=_DTYPES)
    patch = _check_params(_POP, weight, bias, patch_size, first.shape[0], first.device, interpolation, antialias)
    grids = []
    for i, image in enumerate(images):
        check_tensor(_POP, f"images[{i}]", image, ndim=3, dtypes=(first.dtype,), device=first.device)
        if image.shape[0] != first.shape[0]:
            raise ValueError(f"{_POP}: images[{i}] has {image.shape[0]} channels but images[0] has {first.shape[0]}")
        _check_divisible(_POP, f"images[{i}]", image.shape[1], image.shape[2], *patch)
        grids.append((image.shape[1] // patch[0], image.shape[2] // patch[1]))
    name, dtype, weight, bias = _prepare(_POP, first.dtype, first.device, weight, bias, patch, interpolation,
                                         antialias, backend)
    tokens = patch_embed_packed([image.to(dtype) for image in images], weight, bias, name)
    lengths = [h * w for h, w in grids]
    host = torch.tensor([0] + lengths + [n for grid in grids for n in grid], dtype=torch.int64)
    host[1:len(lengths) + 1] = torch.cumsum(host[1:len(lengths) + 1], 0)
    meta = _to_device(host.to(torch.int32), first.device)
    cu_seqlens, grid_sizes = meta[:len(lengths) + 1], meta[len(lengths) + 1:].view(len(lengths), 2)
    return PackedPatches(tokens, cu_seqlens, grid_sizes, max(lengths))
