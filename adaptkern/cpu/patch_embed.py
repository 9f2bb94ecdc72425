"""Patch embedding on CPU tensors: every image's patches gathered into one (T, C*ph*pw)
buffer with one strided copy per image (no unfold), then one GEMM for all tokens; the
gradients are one GEMM each and one strided copy back per image.

Images come as a batch (B, C, H, W) or a list of (C, H_i, W_i). Products run in float32
for 16-bit inputs (float64 stays float64), as the reference's.
"""

import torch


def compute_dtype(dtype):
    return torch.promote_types(dtype, torch.float32)


def _pieces(images):
    """A batch as one (B, C, H, W) piece, a list as its (C, H_i, W_i) images."""
    return [images] if isinstance(images, torch.Tensor) else list(images)


def _patch_view(x, patch_h, patch_w):
    """(*, C, H, W) -> (*, H/ph, W/pw, C, ph, pw) view: row-major tokens of conv-weight-ordered patches."""
    x = x.unflatten(-1, (x.shape[-1] // patch_w, patch_w)).unflatten(-3, (x.shape[-2] // patch_h, patch_h))
    n = x.dim()  # (*, C, gh, ph, gw, pw)
    return x.permute(*range(n - 5), n - 4, n - 2, n - 5, n - 3, n - 1)


def _pieces_and_rows(images, patches, patch_h, patch_w):
    """Each piece of ``images`` with its rows of ``patches`` viewed as (*, gh, gw, C, ph, pw)."""
    pieces = _pieces(images)
    shapes = [_patch_view(x, patch_h, patch_w).shape for x in pieces]
    counts = [shape[:-3].numel() for shape in shapes]
    return [(x, rows.view(shape)) for x, rows, shape in zip(pieces, patches.split(counts), shapes)]


def gather_patches(images, patch_h, patch_w, dtype):
    """(T, C*ph*pw) patches of all images in ``dtype``, image after image, tokens row-major:
    one strided copy per list entry (one for a whole batch)."""
    chans = _pieces(images)[0].shape[-3]
    total = sum(_patch_view(x, patch_h, patch_w).shape[:-3].numel() for x in _pieces(images))
    patches = torch.empty((total, chans * patch_h * patch_w), dtype=dtype)
    for image, rows in _pieces_and_rows(images, patches, patch_h, patch_w):
        rows.copy_(_patch_view(image, patch_h, patch_w))
    return patches


def patch_embed(images, weight, bias):
    """tokens (T, D) in the images' dtype; ``weight`` (D, C, ph, pw) and ``bias`` (D,) or None
    already resized and cast."""
    embed_dim, _, patch_h, patch_w = weight.shape
    dtype = images.dtype if isinstance(images, torch.Tensor) else images[0].dtype
    compute = compute_dtype(dtype)
    patches = gather_patches(images, patch_h, patch_w, compute)
    flat = weight.reshape(embed_dim, -1).to(compute)
    tokens = patches @ flat.T if bias is None else torch.addmm(bias.to(compute), patches, flat.T)
    return tokens.to(dtype)


def patch_embed_grad_input(grad, weight, images):
    """grad (T, D) -> gradient of the images, a tensor like a batch or a list like a list."""
    embed_dim, _, patch_h, patch_w = weight.shape
    compute = compute_dtype(grad.dtype)
    grad_patches = grad.to(compute) @ weight.reshape(embed_dim, -1).to(compute)
    grads = [torch.empty_like(x) for x in _pieces(images)]  # the strides the fake impls promise
    for g, rows in _pieces_and_rows(grads, grad_patches, patch_h, patch_w):
        _patch_view(g, patch_h, patch_w).copy_(rows)
    return grads[0] if isinstance(images, torch.Tensor) else grads


def patch_embed_grad_weight(grad, images, patch_h, patch_w, dtype):
    """grad (T, D) -> gradient of the (resized) weight (D, C, ph, pw) in ``dtype``."""
    embed_dim = grad.shape[1]
    compute = compute_dtype(grad.dtype)
    patches = gather_patches(images, patch_h, patch_w, compute)
    return (grad.to(compute).T @ patches).reshape(embed_dim, -1, patch_h, patch_w).to(dtype)
