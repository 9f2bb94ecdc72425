"""Reference variable patch-size embedding: FlexiViT's PI-resize and a patchify + matmul.

PI-resize (Beyer et al. 2023, "FlexiViT", sec. 3.4): with ``B`` the matrix of the resize
(``resize(x) = B x`` for a flattened patch ``x`` of the old size), the resized weight is
``pinv(B^T) w``. For upsampling ``B^T pinv(B^T) = I``, so ``<B x, pinv(B^T) w> = <x, w>``:
a resized image through the resized weight gives the same token as before.
"""

import torch
import torch.nn.functional as F

INTERPOLATIONS = ("bilinear", "bicubic")


def resize_matrix(old_size, new_size, interpolation="bilinear", antialias=False, dtype=torch.float64):
    """B (new_h*new_w, old_h*old_w): column i is the i-th one-hot old-size patch resized
    with ``F.interpolate(align_corners=False)`` and flattened row-major."""
    (old_h, old_w), (new_h, new_w) = old_size, new_size
    basis = torch.eye(old_h * old_w, dtype=dtype).reshape(old_h * old_w, 1, old_h, old_w)
    resized = F.interpolate(basis, size=(new_h, new_w), mode=interpolation, align_corners=False,
                            antialias=antialias)
    return resized.reshape(old_h * old_w, new_h * new_w).T


def pi_resize_matrix(old_size, new_size, interpolation="bilinear", antialias=False):
    """pinv(B^T), (new_h*new_w, old_h*old_w) float64."""
    return torch.linalg.pinv(resize_matrix(old_size, new_size, interpolation, antialias).T)


def patchify(images: torch.Tensor, patch_h: int, patch_w: int) -> torch.Tensor:
    """images (B, C, H, W), any strides -> patches (B * H/ph * W/pw, C*ph*pw), tokens row-major
    per image, each patch flattened in (channel, row, column) order like a conv weight."""
    batch, chans, height, width = images.shape
    grid_h, grid_w = height // patch_h, width // patch_w
    patches = images.reshape(batch, chans, grid_h, patch_h, grid_w, patch_w).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(batch * grid_h * grid_w, chans * patch_h * patch_w)


def unpatchify(patches: torch.Tensor, batch: int, chans: int, height: int, width: int, patch_h: int,
               patch_w: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: (B*N, C*ph*pw) -> contiguous (B, C, H, W)."""
    grid_h, grid_w = height // patch_h, width // patch_w
    images = patches.reshape(batch, grid_h, grid_w, chans, patch_h, patch_w).permute(0, 3, 1, 4, 2, 5)
    return images.reshape(batch, chans, height, width)


def _compute_dtype(dtype):
    # fp16 / bf16 accumulate in float32 like the kernels; float64 stays float64.
    return torch.promote_types(dtype, torch.float32)


def patch_embed(images, weight, bias):
    """images (B, C, H, W), weight (D, C, ph, pw), bias (D,) or None -> (B, N, D) in images'
    dtype; equals conv2d(images, weight, bias, stride=(ph, pw)).flatten(2).transpose(1, 2)."""
    embed_dim, chans, patch_h, patch_w = weight.shape
    batch, _, height, width = images.shape
    compute = _compute_dtype(images.dtype)
    patches = patchify(images.to(compute), patch_h, patch_w)
    tokens = F.linear(patches, weight.reshape(embed_dim, chans * patch_h * patch_w).to(compute),
                      None if bias is None else bias.to(compute))
    return tokens.to(images.dtype).reshape(batch, (height // patch_h) * (width // patch_w), embed_dim)


def patch_embed_grad_input(grad_tokens, weight, images):
    """grad_tokens (B, N, D), weight (D, C, ph, pw) -> grad of images, (B, C, H, W) in images' dtype."""
    embed_dim, chans, patch_h, patch_w = weight.shape
    compute = _compute_dtype(grad_tokens.dtype)
    grad_patches = (grad_tokens.flatten(0, -2).to(compute)
                    @ weight.reshape(embed_dim, chans * patch_h * patch_w).to(compute))
    return unpatchify(grad_patches, images.shape[0], chans, images.shape[2], images.shape[3], patch_h,
                      patch_w).to(images.dtype)


def patch_embed_grad_weight(grad_tokens, images, patch_h, patch_w, dtype):
    """grad_tokens (B, N, D), images (B, C, H, W) -> grad of the weight (D, C, ph, pw) in ``dtype``."""
    embed_dim, chans = grad_tokens.shape[-1], images.shape[1]
    compute = _compute_dtype(grad_tokens.dtype)
    patches = patchify(images.to(compute), patch_h, patch_w)
    grad = grad_tokens.flatten(0, -2).to(compute).T @ patches
    return grad.reshape(embed_dim, chans, patch_h, patch_w).to(dtype)


def patch_embed_packed(images, weight, bias):
    """images: list of (C, H_i, W_i) -> tokens (sum N_i, D), image after image."""
    return torch.cat([patch_embed(image[None], weight, bias)[0] for image in images])


def _token_splits(images, weight):
    patch_h, patch_w = weight.shape[2:]
    return [(image.shape[1] // patch_h) * (image.shape[2] // patch_w) for image in images]


def patch_embed_packed_grad_input(grad_tokens, weight, images):
    """grad_tokens (T, D) -> list of image grads (C, H_i, W_i)."""
    grads = torch.split(grad_tokens, _token_splits(images, weight))
    return [patch_embed_grad_input(g[None], weight, image[None])[0] for g, image in zip(grads, images)]


def patch_embed_packed_grad_weight(grad_tokens, images, patch_h, patch_w, dtype):
    """grad_tokens (T, D) -> grad of the weight (D, C, ph, pw) in ``dtype``, summed over images."""
    embed_dim, chans = grad_tokens.shape[1], images[0].shape[0]
    compute = _compute_dtype(grad_tokens.dtype)
    patches = torch.cat([patchify(image[None].to(compute), patch_h, patch_w) for image in images])
    grad = grad_tokens.to(compute).T @ patches
    return grad.reshape(embed_dim, chans, patch_h, patch_w).to(dtype)


def num_tokens(images, patch_h, patch_w):
    """Tokens of a batch (B, C, H, W) or of a list of (C, H_i, W_i) images."""
    if isinstance(images, torch.Tensor):
        return images.shape[0] * (images.shape[2] // patch_h) * (images.shape[3] // patch_w)
    return sum((image.shape[1] // patch_h) * (image.shape[2] // patch_w) for image in images)
