"""Exact FLOPs of the variable patch-size embedding (one multiply-add = 2 FLOPs).

A patch embedding of T tokens is a (T, C*ph*pw) x (C*ph*pw, D) matrix product. When the
patch size differs from the base size, the PI-resize of the weight adds one
(D*C, ph0*pw0) x (ph0*pw0, ph*pw) product per call: the resize as FlexiViT defines it,
whichever form computes it (``ak.pi_resize`` applies the matrix's separable factors, fewer
multiply-adds; the count stays the op's, as attention's counts only allowed pairs). The bias add is not counted
(FlopCounterMode does not count it for convolutions or linear layers either).
"""

from .._checks import check_int


def _pair(op, name, size):
    if isinstance(size, (tuple, list)):
        if len(size) != 2:
            raise ValueError(f"{op}: {name} must be an int or a pair (h, w), got {size!r}")
        return check_int(op, f"{name}[0]", size[0]), check_int(op, f"{name}[1]", size[1])
    size = check_int(op, name, size)
    return size, size


def resize_flops(in_chans: int, embed_dim: int, base_patch_size, patch_size) -> int:
    """FLOPs of PI-resizing a (D, C, *base_patch_size) weight to patch_size; 0 when equal."""
    op = "adaptkern.flops.resize_flops"
    base_h, base_w = _pair(op, "base_patch_size", base_patch_size)
    patch_h, patch_w = _pair(op, "patch_size", patch_size)
    if (base_h, base_w) == (patch_h, patch_w):
        return 0
    rows = check_int(op, "embed_dim", embed_dim, minimum=0) * check_int(op, "in_chans", in_chans, minimum=0)
    return 2 * rows * base_h * base_w * patch_h * patch_w


def patch_embed_flops(num_tokens: int, in_chans: int, patch_size, embed_dim: int, *,
                      base_patch_size=None) -> int:
    """Forward FLOPs: 2*T*C*ph*pw*D, plus the PI-resize when base_patch_size differs.

    Args:
        num_tokens: T, tokens of the whole call (B*N for a batch, cu_seqlens[-1] packed).
        in_chans: C. patch_size: int or (ph, pw). embed_dim: D.
        base_patch_size: the size of the stored weight; None counts no resize.
    """
    op = "adaptkern.flops.patch_embed_flops"
    patch_h, patch_w = _pair(op, "patch_size", patch_size)
    tokens = check_int(op, "num_tokens", num_tokens, minimum=0)
    chans = check_int(op, "in_chans", in_chans, minimum=0)
    dim = check_int(op, "embed_dim", embed_dim, minimum=0)
    flops = 2 * tokens * chans * patch_h * patch_w * dim
    if base_patch_size is not None:
        flops += resize_flops(chans, dim, base_patch_size, (patch_h, patch_w))
    return flops


def patch_embed_backward_flops(num_tokens: int, in_chans: int, patch_size, embed_dim: int, *,
                               base_patch_size=None, images_grad: bool = False, weight_grad: bool = True) -> int:
    """Backward FLOPs: 2*T*C*ph*pw*D for the weight gradient (and the resize's backward
    matmul when base_patch_size differs), the same again for the image gradient."""
    matmul = patch_embed_flops(num_tokens, in_chans, patch_size, embed_dim)
    flops = matmul * (int(bool(images_grad)) + int(bool(weight_grad)))
    if weight_grad and base_patch_size is not None:
        flops += resize_flops(in_chans, embed_dim, base_patch_size, patch_size)
    return flops
