"""Fused patchify + GEMM for the patch embedding, and its two backward GEMMs.

Patches are read straight from the images through their strides (NCHW, channels-last or
any view); no unfolded copy of the images is ever made. Token t = r*grid_w + q of an image
covers pixels [c, r*ph + i, q*pw + j]. The patch columns (the GEMM's reduction) are walked
in the order that is contiguous in memory: (c, i, j) for NCHW-like images, (i, j, c) for
channels-last ones (CHANNELS_LAST); the launcher permutes the small weight to match. When
every patch row is made of aligned runs of VEC contiguous pixels, the kernels say so to the
compiler, which then loads VEC pixels at once (16 bytes) and pipelines them (cp.async).

Tokens are processed in tiles of BLOCK_M that never straddle two images, so each program
knows its image's strides as scalars. Two ways to find an image:

* a batch (B, C, H, W): tile -> (image, first token) by division; PACKED=False.
* a list of images of different sizes (packed output): a small int64 table per call holds,
  per image, its *address* and strides, and per tile, (image, first token); the kernel
  casts the address to a pointer. The images stay where they are: no gather into one flat
  buffer (that copy would read and write every pixel once more, about as much memory
  traffic as the patch embedding itself moves for ViT-sized D).
"""

from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl

from ._utils import dot

# Per image: address, stride_c, stride_h, stride_w, first token, tokens, grid width, unused.
TABLE_COLS = tl.constexpr(8)  # constexpr: the kernels read it too


@triton.jit
def _tile_geometry(x_ptr, table_ptr, tiles_ptr, tile, stride_b, stride_c, stride_h, stride_w, tokens_per_image,
                   grid_w, BLOCK_M: tl.constexpr, PACKED: tl.constexpr, VEC: tl.constexpr):
    """Token tile ``tile`` -> (pointer to its image's pixel [0, 0, 0], the image's channel,
    row and column strides, its first packed token, patches per row, the tile's tokens
    within the image (BLOCK_M, int64) and which of them exist)."""
    if PACKED:
        image = tl.load(tiles_ptr + 2 * tile)
        row0 = tl.load(tiles_ptr + 2 * tile + 1)
        meta = table_ptr + image * TABLE_COLS
        base = tl.load(meta).to(tl.pointer_type(x_ptr.dtype.element_ty))
        if VEC > 1:  # in bytes: the launcher checked every image's address
            base = tl.multiple_of(base, VEC * x_ptr.dtype.element_ty.primitive_bitwidth // 8)
        rows = row0 + tl.arange(0, BLOCK_M)
        return (base, tl.load(meta + 1), tl.load(meta + 2), tl.load(meta + 3), tl.load(meta + 4), tl.load(meta + 6),
                rows, rows < tl.load(meta + 5))
    else:
        tiles_per_image = tl.cdiv(tokens_per_image, BLOCK_M)
        image = tile // tiles_per_image
        row0 = (tile - image * tiles_per_image) * BLOCK_M
        image_offset = image * stride_b
        if VEC > 1:
            image_offset = tl.multiple_of(image_offset, VEC)
        rows = row0 + tl.arange(0, BLOCK_M)
        return (x_ptr + image_offset, stride_c, stride_h, stride_w, image * tokens_per_image, grid_w, rows,
                rows < tokens_per_image)


@triton.jit
def _token_offsets(rows, grid_w, patch_h, patch_w, stride_h, stride_w, VEC: tl.constexpr):
    """Element offset of each token's patch origin within its image (int64)."""
    patch_row = rows // grid_w
    patch_col = rows - patch_row * grid_w
    offsets = patch_row * patch_h * stride_h + patch_col * patch_w * stride_w
    if VEC > 1:
        offsets = tl.multiple_of(offsets, [VEC])
    return offsets


@triton.jit
def _column_offsets(cols, chans, patch_h, patch_w, stride_c, stride_h, stride_w, VEC: tl.constexpr,
                    CHANNELS_LAST: tl.constexpr):
    """Element offset of each patch column from the patch origin (int64). Column k is
    (c*ph + i)*pw + j, or (i*pw + j)*C + c with CHANNELS_LAST."""
    cols = cols.to(tl.int64)
    if CHANNELS_LAST:
        pixel = cols // chans
        chan = cols - pixel * chans
    else:
        chan = cols // (patch_h * patch_w)
        pixel = cols - chan * (patch_h * patch_w)
    i = pixel // patch_w
    offsets = chan * stride_c + i * stride_h + (pixel - i * patch_w) * stride_w
    if VEC > 1:  # runs of VEC contiguous, VEC-aligned elements (see _vector_width)
        offsets = tl.max_contiguous(tl.multiple_of(offsets, [VEC]), [VEC])
    return offsets


@triton.jit
def _column_mask(cols, patch_numel, VEC: tl.constexpr):
    mask = cols < patch_numel
    if VEC > 1:  # VEC divides patch_numel: the mask is constant over each run
        mask = tl.max_constancy(mask, [VEC])
    return mask


@triton.jit
def _forward_kernel(
    x_ptr, table_ptr, tiles_ptr, w_ptr, bias_ptr, out_ptr,
    stride_b, stride_c, stride_h, stride_w, tokens_per_image, grid_w,
    chans, patch_h, patch_w, patch_numel, embed_dim,
    HAS_BIAS: tl.constexpr, PACKED: tl.constexpr, CHANNELS_LAST: tl.constexpr, VEC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # Embedding blocks vary fastest, so the programs sharing a token tile run together and
    # its pixels come from L2 after the first read.
    pid = tl.program_id(0).to(tl.int64)
    num_n = tl.cdiv(embed_dim, BLOCK_N)
    tile = pid // num_n
    n = (pid - tile * num_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    base, sc, sh, sw, token_start, gw, rows, row_ok = _tile_geometry(
        x_ptr, table_ptr, tiles_ptr, tile, stride_b, stride_c, stride_h, stride_w, tokens_per_image, grid_w,
        BLOCK_M, PACKED, VEC)
    n_ok = n < embed_dim
    token_offsets = _token_offsets(rows, gw, patch_h, patch_w, sh, sw, VEC)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, patch_numel, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        col_ok = _column_mask(cols, patch_numel, VEC)
        offsets = (token_offsets[:, None]
                   + _column_offsets(cols, chans, patch_h, patch_w, sc, sh, sw, VEC, CHANNELS_LAST)[None, :])
        patches = tl.load(base + offsets, mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        weight = tl.load(w_ptr + n[None, :] * patch_numel + cols[:, None], mask=col_ok[:, None] & n_ok[None, :],
                         other=0.0)
        acc = dot(patches, weight, acc)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    out_rows = token_start + rows
    tl.store(out_ptr + out_rows[:, None] * embed_dim + n[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & n_ok[None, :])


@triton.jit
def _grad_input_kernel(
    gx_ptr, table_ptr, tiles_ptr, w_ptr, grad_ptr,
    stride_b, stride_c, stride_h, stride_w, tokens_per_image, grid_w,
    chans, patch_h, patch_w, patch_numel, embed_dim,
    PACKED: tl.constexpr, CHANNELS_LAST: tl.constexpr, VEC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # grad_patches = grad_tokens @ W, stored straight into the image layout: the stride is
    # the patch size, so every pixel belongs to exactly one (token, column); no atomics.
    pid = tl.program_id(0).to(tl.int64)
    num_k = tl.cdiv(patch_numel, BLOCK_K)
    tile = pid // num_k
    cols = (pid - tile * num_k) * BLOCK_K + tl.arange(0, BLOCK_K)
    base, sc, sh, sw, token_start, gw, rows, row_ok = _tile_geometry(
        gx_ptr, table_ptr, tiles_ptr, tile, stride_b, stride_c, stride_h, stride_w, tokens_per_image, grid_w,
        BLOCK_M, PACKED, VEC)
    col_ok = _column_mask(cols, patch_numel, VEC)
    grad_rows = token_start + rows
    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    for d0 in range(0, embed_dim, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        d_ok = d < embed_dim
        grad = tl.load(grad_ptr + grad_rows[:, None] * embed_dim + d[None, :], mask=row_ok[:, None] & d_ok[None, :],
                       other=0.0)
        weight = tl.load(w_ptr + d[:, None] * patch_numel + cols[None, :], mask=d_ok[:, None] & col_ok[None, :],
                         other=0.0)
        acc = dot(grad, weight, acc)
    offsets = (_token_offsets(rows, gw, patch_h, patch_w, sh, sw, VEC)[:, None]
               + _column_offsets(cols, chans, patch_h, patch_w, sc, sh, sw, VEC, CHANNELS_LAST)[None, :])
    tl.store(base + offsets, acc.to(gx_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _grad_weight_kernel(
    x_ptr, table_ptr, tiles_ptr, grad_ptr, partial_ptr,
    stride_b, stride_c, stride_h, stride_w, tokens_per_image, grid_w,
    chans, patch_h, patch_w, patch_numel, embed_dim, num_tiles, tiles_per_split,
    PACKED: tl.constexpr, CHANNELS_LAST: tl.constexpr, VEC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # grad_W[d, k] = sum over tokens of grad[t, d] * patch[t, k]. Axis 1 splits the token
    # tiles; each split writes its own float32 partial (summed by the launcher: deterministic).
    pid = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1).to(tl.int64)
    num_k = tl.cdiv(patch_numel, BLOCK_K)
    d_block = pid // num_k
    d = d_block * BLOCK_D + tl.arange(0, BLOCK_D)
    cols = (pid - d_block * num_k) * BLOCK_K + tl.arange(0, BLOCK_K)
    d_ok = d < embed_dim
    col_ok = _column_mask(cols, patch_numel, VEC)
    acc = tl.zeros((BLOCK_D, BLOCK_K), dtype=tl.float32)
    first = split * tiles_per_split
    last = tl.minimum(first + tiles_per_split, num_tiles)
    for tile in range(first, last):
        base, sc, sh, sw, token_start, gw, rows, row_ok = _tile_geometry(
            x_ptr, table_ptr, tiles_ptr, tile, stride_b, stride_c, stride_h, stride_w, tokens_per_image, grid_w,
            BLOCK_M, PACKED, VEC)
        grad = tl.load(grad_ptr + (token_start + rows)[:, None] * embed_dim + d[None, :],
                       mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        offsets = (_token_offsets(rows, gw, patch_h, patch_w, sh, sw, VEC)[:, None]
                   + _column_offsets(cols, chans, patch_h, patch_w, sc, sh, sw, VEC, CHANNELS_LAST)[None, :])
        patches = tl.load(base + offsets, mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        acc = dot(tl.trans(grad), patches, acc)
    out = partial_ptr + split * embed_dim * patch_numel + d[:, None] * patch_numel + cols[None, :]
    tl.store(out, acc, mask=d_ok[:, None] & col_ok[None, :])


# ----------------------------------------------------------------------------- launchers


class _Pixels(NamedTuple):
    """Where the pixels of each image live, as the kernels take it."""

    ptr: torch.Tensor  # the batch tensor, or the first non-empty image (gives the dtype)
    table: Optional[torch.Tensor]  # packed: per-image rows (TABLE_COLS int64 each)
    tiles: Optional[torch.Tensor]  # packed: (image, first token) per tile
    strides: tuple  # batch: (stride_b, stride_c, stride_h, stride_w); packed: unused zeros
    tokens_per_image: int
    grid_w: int
    num_tiles: int
    packed: bool
    channels_last: bool  # column order (i, j, c) instead of (c, i, j)
    vec: int  # pixels per vector load (see _vector_width)

    def leading_args(self):
        return self.ptr, self.table, self.tiles

    def geometry_args(self):
        return (*self.strides, self.tokens_per_image, self.grid_w)

    def flags(self):
        return dict(PACKED=self.packed, CHANNELS_LAST=self.channels_last, VEC=self.vec)


def _is_channels_last(views) -> bool:
    """Walk columns as (i, j, c) when every multi-channel image keeps its channels innermost."""
    multi = [(shape, strides) for _, shape, strides in views if shape[-3] > 1]
    return bool(multi) and all(strides[-3] == 1 and strides[-1] != 1 for shape, strides in multi)


def _vector_width(views, patch_w: int, element_size: int, channels_last: bool) -> int:
    """Largest VEC (a power of two, VEC * element_size <= 16 bytes) such that, in every image
    of ``views`` ((address, shape, strides) of the non-empty ones), each patch row in the
    column order is made of VEC-aligned runs of VEC contiguous pixels. Strides of size-1
    dims never matter."""
    vec = 16 // element_size
    while vec > 1:
        if all(_runs_of(vec, address, shape, strides, patch_w, element_size, channels_last)
               for address, shape, strides in views):
            return vec
        vec //= 2
    return 1


def _runs_of(vec, address, shape, strides, patch_w, element_size, channels_last) -> bool:
    *outer, chans, height, width = shape
    *outer_strides, stride_c, stride_h, stride_w = strides
    if channels_last:  # a patch row is pw*C contiguous elements: (j, c) with c innermost
        contiguous = (chans == 1 or stride_c == 1) and (width == 1 or stride_w == chans)
        run, others = patch_w * chans, []
    else:  # a patch row of one channel is pw contiguous elements
        contiguous = width == 1 or stride_w == 1
        run, others = patch_w, [(chans, stride_c)]
    others += [(height, stride_h), *zip(outer, outer_strides)]
    return (contiguous and run % vec == 0 and address % (vec * element_size) == 0
            and all(size == 1 or stride % vec == 0 for size, stride in others))


def _pixels(images, patch_h: int, patch_w: int, block_m: int) -> _Pixels:
    if isinstance(images, torch.Tensor):
        batch, _, height, width = images.shape
        grid_w, tokens = width // patch_w, (height // patch_h) * (width // patch_w)
        views = [(images.data_ptr(), tuple(images.shape), images.stride())]
        channels_last = _is_channels_last(views)
        return _Pixels(images, None, None, images.stride(), tokens, grid_w, batch * triton.cdiv(tokens, block_m),
                       False, channels_last, _vector_width(views, patch_w, images.element_size(), channels_last))
    rows, counts, start = [], [], 0
    for image in images:
        grid_w = image.shape[2] // patch_w
        tokens = (image.shape[1] // patch_h) * grid_w
        rows.append([image.data_ptr(), *image.stride(), start, tokens, grid_w, 0])
        counts.append(triton.cdiv(tokens, block_m))
        start += tokens
    counts = torch.tensor(counts, dtype=torch.int64)
    tile_image = torch.repeat_interleave(torch.arange(len(images)), counts)
    first_tile = torch.cumsum(counts, 0) - counts
    tile_row0 = (torch.arange(tile_image.numel()) - first_tile[tile_image]) * block_m
    host = torch.cat([torch.tensor(rows, dtype=torch.int64).reshape(-1),
                      torch.stack([tile_image, tile_row0], 1).reshape(-1)])
    if images[0].device.type == "cuda":  # pinned + non_blocking: no host sync for this small upload
        host = host.pin_memory().to(images[0].device, non_blocking=True)
    table_len = len(images) * TABLE_COLS.value
    ref = next((image for image in images if image.numel() > 0), images[0])
    views = [(x.data_ptr(), tuple(x.shape), x.stride()) for x in images if x.numel() > 0]
    channels_last = _is_channels_last(views)
    return _Pixels(ref, host[:table_len], host[table_len:], (0, 0, 0, 0), 0, 0, tile_image.numel(), True,
                   channels_last, _vector_width(views, patch_w, ref.element_size(), channels_last))


def _kernel_weight(weight: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """The (D, C, ph, pw) weight as a contiguous (D, columns) matrix in the kernels' column order."""
    return (weight.permute(0, 2, 3, 1) if channels_last else weight).contiguous()


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # the interpreter: a few splits, to exercise the split path
    return torch.cuda.get_device_properties(device).multi_processor_count


def default_config(kind: str, dtype: torch.dtype, num_tokens: int, embed_dim: int, patch_numel: int) -> dict:
    """Tile sizes and launch options for ``kind`` in ("forward", "grad_input", "grad_weight").

    16-bit inputs take 64-deep reductions, float32 32-deep, so that three pipeline stages of
    the two operand tiles fit the shared memory of sm_80 (163 KiB) for every dtype.
    """
    depth = 64 if dtype.itemsize <= 2 else 32
    block_m = 128 if num_tokens >= 4096 else 64
    if kind == "forward":
        block_n = min(128, max(16, triton.next_power_of_2(embed_dim)))
        warps = 8 if block_m * block_n >= 128 * 128 else 4
        return dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=depth, num_warps=warps, num_stages=3)
    block_k = min(64, max(16, triton.next_power_of_2(patch_numel)))
    if kind == "grad_input":
        return dict(BLOCK_M=block_m, BLOCK_K=block_k, BLOCK_D=depth, num_warps=4, num_stages=3)
    block_d = min(64, max(16, triton.next_power_of_2(embed_dim)))
    return dict(BLOCK_M=depth, BLOCK_D=block_d, BLOCK_K=block_k, num_warps=4, num_stages=3)


def _geometry(images, chans, patch_h, patch_w):
    if isinstance(images, torch.Tensor):
        tokens = images.shape[0] * (images.shape[2] // patch_h) * (images.shape[3] // patch_w)
    else:
        tokens = sum((image.shape[1] // patch_h) * (image.shape[2] // patch_w) for image in images)
    return tokens, chans * patch_h * patch_w


def forward(images, weight: torch.Tensor, bias: Optional[torch.Tensor], *, config: Optional[dict] = None):
    """Patch embedding tokens (T, D) in the images' dtype.

    images: (B, C, H, W) tensor or list of (C, H_i, W_i), any strides, fp16/bf16/fp32, H and
    W divisible by the patch size; weight: (D, C, ph, pw) and bias: (D,) or None, both in
    the images' dtype. Tokens of one image are row-major, images one after another.
    """
    embed_dim, chans, patch_h, patch_w = weight.shape
    tokens, patch_numel = _geometry(images, chans, patch_h, patch_w)
    ref = images if isinstance(images, torch.Tensor) else images[0]
    out = torch.empty((tokens, embed_dim), dtype=ref.dtype, device=ref.device)
    if out.numel() == 0:
        return out
    if patch_numel == 0:
        return out.copy_(bias.expand_as(out) if bias is not None else torch.zeros_like(out))
    cfg = config or default_config("forward", ref.dtype, tokens, embed_dim, patch_numel)
    pixels = _pixels(images, patch_h, patch_w, cfg["BLOCK_M"])
    grid = (pixels.num_tiles * triton.cdiv(embed_dim, cfg["BLOCK_N"]),)
    _forward_kernel[grid](
        *pixels.leading_args(), _kernel_weight(weight, pixels.channels_last), bias, out, *pixels.geometry_args(),
        chans, patch_h, patch_w, patch_numel, embed_dim, HAS_BIAS=bias is not None, **pixels.flags(), **cfg,
    )
    return out


def grad_input(grad_tokens: torch.Tensor, weight: torch.Tensor, images, *, config: Optional[dict] = None):
    """grad_tokens (T, D) contiguous, weight (D, C, ph, pw) -> gradient of ``images`` (a
    tensor or list shaped, dtyped and, where dense, strided like it)."""
    embed_dim, chans, patch_h, patch_w = weight.shape
    tokens, patch_numel = _geometry(images, chans, patch_h, patch_w)
    grads = torch.empty_like(images) if isinstance(images, torch.Tensor) else [torch.empty_like(x) for x in images]
    if tokens == 0 or patch_numel == 0:
        return grads  # every pixel belongs to a token, so there is no pixel to fill
    if embed_dim == 0:
        return grads.zero_() if isinstance(grads, torch.Tensor) else [g.zero_() for g in grads]
    ref = grads if isinstance(grads, torch.Tensor) else grads[0]
    cfg = config or default_config("grad_input", ref.dtype, tokens, embed_dim, patch_numel)
    pixels = _pixels(grads, patch_h, patch_w, cfg["BLOCK_M"])
    grid = (pixels.num_tiles * triton.cdiv(patch_numel, cfg["BLOCK_K"]),)
    _grad_input_kernel[grid](
        *pixels.leading_args(), _kernel_weight(weight, pixels.channels_last), grad_tokens, *pixels.geometry_args(),
        chans, patch_h, patch_w, patch_numel, embed_dim, **pixels.flags(), **cfg,
    )
    return grads


def grad_weight(grad_tokens: torch.Tensor, images, patch_h: int, patch_w: int, dtype: torch.dtype, *,
                config: Optional[dict] = None) -> torch.Tensor:
    """grad_tokens (T, D) contiguous, images as in :func:`forward` -> gradient of the weight
    (D, C, ph, pw) in ``dtype``, accumulated in float32. ``config`` may add SPLITS, the
    number of token-tile groups reduced separately."""
    ref = images if isinstance(images, torch.Tensor) else images[0]
    chans = ref.shape[-3]
    embed_dim = grad_tokens.shape[1]
    tokens, patch_numel = _geometry(images, chans, patch_h, patch_w)
    if tokens == 0 or embed_dim == 0 or patch_numel == 0:
        return torch.zeros((embed_dim, chans, patch_h, patch_w), dtype=dtype, device=ref.device)
    cfg = dict(config or default_config("grad_weight", ref.dtype, tokens, embed_dim, patch_numel))
    splits = cfg.pop("SPLITS", None)
    pixels = _pixels(images, patch_h, patch_w, cfg["BLOCK_M"])
    out_tiles = triton.cdiv(embed_dim, cfg["BLOCK_D"]) * triton.cdiv(patch_numel, cfg["BLOCK_K"])
    if splits is None:
        # Enough splits to fill the GPU about four times over, each with at least 8 token tiles.
        splits = max(1, min(triton.cdiv(4 * _num_sms(ref.device), out_tiles), triton.cdiv(pixels.num_tiles, 8)))
    tiles_per_split = triton.cdiv(pixels.num_tiles, splits)
    partial = torch.empty((splits, embed_dim, patch_numel), dtype=torch.float32, device=ref.device)
    _grad_weight_kernel[(out_tiles, splits)](
        *pixels.leading_args(), grad_tokens, partial, *pixels.geometry_args(), chans, patch_h, patch_w, patch_numel,
        embed_dim, pixels.num_tiles, tiles_per_split, **pixels.flags(), **cfg,
    )
    total = (partial[0] if splits == 1 else partial.sum(0)).to(dtype)
    if pixels.channels_last:
        return total.reshape(embed_dim, patch_h, patch_w, chans).permute(0, 3, 1, 2).contiguous()
    return total.reshape(embed_dim, chans, patch_h, patch_w)
