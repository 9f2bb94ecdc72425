"""Fused patchify + GEMM for the patch embedding, and its two backward GEMMs.

Patches are read straight from the images through their strides (NCHW, channels-last or
any view); no unfolded copy of the images is ever made. Token t = r*grid_w + q of an image
covers pixels [c, r*ph + i, q*pw + j]. The patch columns (the GEMM's reduction) are walked
in the order that is contiguous in memory: (c, i, j) for NCHW-like images, (i, j, c) for
channels-last ones (CHANNELS_LAST); the launcher permutes the small weight to match. When
every patch row is made of aligned runs of VEC contiguous pixels, the kernels say so to the
compiler, which then loads VEC pixels at once (16 bytes) and pipelines them (cp.async).

Tokens are processed in tiles of BLOCK_M; every tile's images share their strides, so
each program knows them as scalars. Two ways to find an image:

* a batch (B, C, H, W): tiles run over the flat token index and span images (at 196
  tokens per image, per-image tiles of 128 would leave 23% of the rows idle); each row's
  image and patch come from a division once per tile; PACKED=False.
* a list of images of different sizes (packed output): a small int64 table per call holds,
  per image, its *address* and strides, and per tile, (image, first token); the kernel
  casts the address to a pointer. Tiles stay within one image. The images stay where they
  are: no gather into one flat buffer (that copy would read and write every pixel once
  more, about as much memory traffic as the patch embedding itself moves for ViT-sized D).

Offsets are strength-reduced: a patch column (and in grad_weight's token loop, a token) is
a mixed-radix number whose digits are advanced by a constant step with adds and compares
(:func:`_walk`), so no hot loop divides.
"""

from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl

from ._utils import dot

# Per image: address, stride_c, stride_h, stride_w, first token, tokens, grid width, unused.
TABLE_COLS = tl.constexpr(8)  # constexpr: the kernels read it too


@triton.jit
def _digits(index, n_mid, n_inner):
    """``index`` in the mixed radix (..., n_mid, n_inner): its (outer, mid, inner) digits."""
    outer = index // (n_mid * n_inner)
    rest = index - outer * (n_mid * n_inner)
    mid = rest // n_inner
    return outer, mid, rest - mid * n_inner


@triton.jit
def _walk_constants(step, n_mid, n_inner, s_outer, s_mid, s_inner):
    """What advancing an index by ``step`` adds, for :func:`_walk`: the step's mid and inner
    digits, its offset, and the offset corrections of a carry out of inner and out of mid."""
    d_outer, d_mid, d_inner = _digits(step, n_mid, n_inner)
    return (d_mid, d_inner, d_outer * s_outer + d_mid * s_mid + d_inner * s_inner, s_mid - n_inner * s_inner,
            s_outer - n_mid * s_mid)


@triton.jit
def _walk(mid, inner, offset, d_mid, d_inner, d_offset, inner_carry, mid_carry, n_mid, n_inner):
    """Advance indices held as (mid, inner) digits and their element offset by the step of
    :func:`_walk_constants`: adds and compares only, no division (a step carries at most
    once per digit, as each digit stays below its radix)."""
    inner += d_inner
    carry = inner >= n_inner
    inner = tl.where(carry, inner - n_inner, inner)
    mid += d_mid + carry.to(tl.int32)
    offset += d_offset + tl.where(carry, inner_carry, 0)
    carry = mid >= n_mid
    mid = tl.where(carry, mid - n_mid, mid)
    offset += tl.where(carry, mid_carry, 0)
    return mid, inner, offset


@triton.jit
def _offset(outer, mid, inner, s_outer, s_mid, s_inner):
    return outer * s_outer + mid * s_mid + inner * s_inner


@triton.jit
def _column_radix(chans, patch_h, patch_w, CHANNELS_LAST: tl.constexpr):
    """Patch columns as a mixed radix (..., n_mid, n_inner): column k is (c*ph + i)*pw + j,
    or (i*pw + j)*C + c with CHANNELS_LAST."""
    if CHANNELS_LAST:
        return patch_w, chans
    else:
        return patch_h, patch_w


@triton.jit
def _column_strides(stride_c, stride_h, stride_w, CHANNELS_LAST: tl.constexpr):
    """Element strides of the (outer, mid, inner) column digits of :func:`_column_radix`."""
    if CHANNELS_LAST:
        return stride_h, stride_w, stride_c
    else:
        return stride_c, stride_h, stride_w


@triton.jit
def _tile_rows(x_ptr, table_ptr, tiles_ptr, tile, stride_b, stride_c, stride_h, stride_w, tokens_per_image, grid_w,
               num_tokens, patch_h, patch_w, BLOCK_M: tl.constexpr, PACKED: tl.constexpr, VEC: tl.constexpr):
    """Token tile ``tile`` -> (pointer its rows are offset from, the channel, row and column
    strides of its image(s) (int64), each row's element offset to its patch origin
    (BLOCK_M, int64), its output row (int64) and which rows exist).

    A batch's tiles run over the flat token index, across images (all share the strides); a
    packed list's tiles stay within one image, found through the tile table."""
    if PACKED:
        image = tl.load(tiles_ptr + 2 * tile)
        row0 = tl.load(tiles_ptr + 2 * tile + 1)
        meta = table_ptr + image * TABLE_COLS
        base = tl.load(meta).to(tl.pointer_type(x_ptr.dtype.element_ty))
        if VEC > 1:  # in bytes: the launcher checked every image's address
            base = tl.multiple_of(base, VEC * x_ptr.dtype.element_ty.primitive_bitwidth // 8)
        sc, sh, sw = tl.load(meta + 1), tl.load(meta + 2), tl.load(meta + 3)
        rows = row0 + tl.arange(0, BLOCK_M)
        grid_w = tl.load(meta + 6).to(tl.int32)
        patch_row = rows.to(tl.int32) // grid_w  # int32: cheaper, and no image has 2**31 tokens
        offsets = patch_row * (patch_h * sh) + (rows.to(tl.int32) - patch_row * grid_w) * (patch_w * sw)
        out_rows, row_ok = tl.load(meta + 4) + rows, rows < tl.load(meta + 5)
    else:
        base = x_ptr
        sc, sh, sw = tl.cast(stride_c, tl.int64), tl.cast(stride_h, tl.int64), tl.cast(stride_w, tl.int64)
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        image, patch_row, patch_col = _digits(rows.to(tl.int32), tokens_per_image // grid_w, grid_w)
        offsets = _offset(image, patch_row, patch_col, tl.cast(stride_b, tl.int64), patch_h * sh, patch_w * sw)
        out_rows, row_ok = rows, rows < num_tokens
    if VEC > 1:  # patch origins start runs (see _vector_width)
        offsets = tl.multiple_of(offsets, [VEC])
    return base, sc, sh, sw, offsets, out_rows, row_ok


@triton.jit
def _patch_offsets(row_offsets, col_offsets, VEC: tl.constexpr):
    """(rows, columns) element offsets of a tile of patches. With VEC > 1 each row is made of
    runs of VEC contiguous, VEC-aligned elements (see _vector_width): said on the sum, whose
    add no rewrite drops, so the loads are vectorised."""
    offsets = row_offsets[:, None] + col_offsets[None, :]
    if VEC > 1:
        offsets = tl.max_contiguous(tl.multiple_of(offsets, [VEC, VEC]), [1, VEC])
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
    stride_b, stride_c, stride_h, stride_w, tokens_per_image, grid_w, num_tokens,
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
    base, sc, sh, sw, row_offsets, out_rows, row_ok = _tile_rows(
        x_ptr, table_ptr, tiles_ptr, tile, stride_b, stride_c, stride_h, stride_w, tokens_per_image, grid_w,
        num_tokens, patch_h, patch_w, BLOCK_M, PACKED, VEC)
    n_ok = n < embed_dim
    # Column k0 + kk = the block start's digits plus those of kk, with at most one carry per
    # digit: the start is walked BLOCK_K at a time as scalars, so the loop never divides.
    n_mid, n_inner = _column_radix(chans, patch_h, patch_w, CHANNELS_LAST)
    s_outer, s_mid, s_inner = _column_strides(sc, sh, sw, CHANNELS_LAST)
    k_mid, k_inner, k_offset, inner_carry, mid_carry = _walk_constants(tl.arange(0, BLOCK_K), n_mid, n_inner,
                                                                       s_outer, s_mid, s_inner)
    d_mid, d_inner, d_offset, inner_carry, mid_carry = _walk_constants(BLOCK_K, n_mid, n_inner, s_outer, s_mid, s_inner)
    mid = tl.zeros([], tl.int32)
    inner = tl.zeros([], tl.int32)
    start = tl.zeros([], tl.int64)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, patch_numel, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        col_ok = _column_mask(cols, patch_numel, VEC)
        col_mid, col_inner, col_offsets = _walk(mid, inner, start, k_mid, k_inner, k_offset, inner_carry, mid_carry,
                                                n_mid, n_inner)
        offsets = _patch_offsets(row_offsets, col_offsets, VEC)
        patches = tl.load(base + offsets, mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        weight = tl.load(w_ptr + n[None, :] * patch_numel + cols[:, None], mask=col_ok[:, None] & n_ok[None, :],
                         other=0.0)
        acc = dot(patches, weight, acc)
        mid, inner, start = _walk(mid, inner, start, d_mid, d_inner, d_offset, inner_carry, mid_carry, n_mid, n_inner)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + out_rows[:, None] * embed_dim + n[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & n_ok[None, :])


@triton.jit
def _grad_input_kernel(
    gx_ptr, table_ptr, tiles_ptr, w_ptr, grad_ptr,
    stride_b, stride_c, stride_h, stride_w, tokens_per_image, grid_w, num_tokens,
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
    base, sc, sh, sw, row_offsets, grad_rows, row_ok = _tile_rows(
        gx_ptr, table_ptr, tiles_ptr, tile, stride_b, stride_c, stride_h, stride_w, tokens_per_image, grid_w,
        num_tokens, patch_h, patch_w, BLOCK_M, PACKED, VEC)
    col_ok = _column_mask(cols, patch_numel, VEC)
    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    for d0 in range(0, embed_dim, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        d_ok = d < embed_dim
        grad = tl.load(grad_ptr + grad_rows[:, None] * embed_dim + d[None, :], mask=row_ok[:, None] & d_ok[None, :],
                       other=0.0)
        weight = tl.load(w_ptr + d[:, None] * patch_numel + cols[None, :], mask=d_ok[:, None] & col_ok[None, :],
                         other=0.0)
        acc = dot(grad, weight, acc)
    n_mid, n_inner = _column_radix(chans, patch_h, patch_w, CHANNELS_LAST)
    s_outer, s_mid, s_inner = _column_strides(sc, sh, sw, CHANNELS_LAST)
    outer, mid, inner = _digits(cols, n_mid, n_inner)
    offsets = _patch_offsets(row_offsets, _offset(outer, mid, inner, s_outer, s_mid, s_inner), VEC)
    tl.store(base + offsets, acc.to(gx_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _grad_weight_kernel(
    x_ptr, table_ptr, tiles_ptr, grad_ptr, partial_ptr,
    stride_b, stride_c, stride_h, stride_w, tokens_per_image, grid_w, num_tokens,
    chans, patch_h, patch_w, patch_numel, embed_dim, num_tiles, tiles_per_split,
    PACKED: tl.constexpr, CHANNELS_LAST: tl.constexpr, VEC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # grad_W[d, k] = sum over tokens of grad[t, d] * patch[t, k]. Axis 1 splits the token
    # tiles; each split writes its own float32 partial (summed by the launcher: deterministic).
    # The geometry is hoisted out of the token loop: the columns' digits once, and for a
    # batch the rows' offsets too, walked BLOCK_M tokens at a time with adds.
    pid = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1).to(tl.int64)
    num_k = tl.cdiv(patch_numel, BLOCK_K)
    d_block = pid // num_k
    d = d_block * BLOCK_D + tl.arange(0, BLOCK_D)
    cols = (pid - d_block * num_k) * BLOCK_K + tl.arange(0, BLOCK_K)
    d_ok = d < embed_dim
    col_ok = _column_mask(cols, patch_numel, VEC)
    n_mid, n_inner = _column_radix(chans, patch_h, patch_w, CHANNELS_LAST)
    c_outer, c_mid, c_inner = _digits(cols, n_mid, n_inner)
    first = split * tiles_per_split
    last = tl.minimum(first + tiles_per_split, num_tiles)
    if not PACKED:
        base, sc, sh, sw, row_offsets, rows, row_ok = _tile_rows(
            x_ptr, table_ptr, tiles_ptr, first, stride_b, stride_c, stride_h, stride_w, tokens_per_image, grid_w,
            num_tokens, patch_h, patch_w, BLOCK_M, PACKED, VEC)
        s_outer, s_mid, s_inner = _column_strides(sc, sh, sw, CHANNELS_LAST)
        col_offsets = _offset(c_outer, c_mid, c_inner, s_outer, s_mid, s_inner)
        grid_h = tokens_per_image // grid_w
        _, r_mid, r_inner = _digits(rows.to(tl.int32), grid_h, grid_w)
        d_mid, d_inner, d_offset, inner_carry, mid_carry = _walk_constants(
            BLOCK_M, grid_h, grid_w, tl.cast(stride_b, tl.int64), patch_h * sh, patch_w * sw)
    acc = tl.zeros((BLOCK_D, BLOCK_K), dtype=tl.float32)
    for tile in range(first, last):
        if PACKED:
            base, sc, sh, sw, row_offsets, rows, row_ok = _tile_rows(
                x_ptr, table_ptr, tiles_ptr, tile, stride_b, stride_c, stride_h, stride_w, tokens_per_image, grid_w,
                num_tokens, patch_h, patch_w, BLOCK_M, PACKED, VEC)
            s_outer, s_mid, s_inner = _column_strides(sc, sh, sw, CHANNELS_LAST)
            col_offsets = _offset(c_outer, c_mid, c_inner, s_outer, s_mid, s_inner)
        grad = tl.load(grad_ptr + rows[:, None] * embed_dim + d[None, :], mask=row_ok[:, None] & d_ok[None, :],
                       other=0.0)
        patches = tl.load(base + _patch_offsets(row_offsets, col_offsets, VEC), mask=row_ok[:, None] & col_ok[None, :],
                          other=0.0)
        acc = dot(tl.trans(grad), patches, acc)
        if not PACKED:
            rows += BLOCK_M
            row_ok = rows < num_tokens
            r_mid, r_inner, row_offsets = _walk(r_mid, r_inner, row_offsets, d_mid, d_inner, d_offset, inner_carry,
                                               mid_carry, grid_h, grid_w)
            if VEC > 1:
                row_offsets = tl.multiple_of(row_offsets, [VEC])
    out = partial_ptr + split * embed_dim * patch_numel + d[:, None] * patch_numel + cols[None, :]
    tl.store(out, acc, mask=d_ok[:, None] & col_ok[None, :])


# ----------------------------------------------------------------------------- launchers


class _Pixels(NamedTuple):
    """Where the pixels of each image live, as the kernels take it."""

    ptr: torch.Tensor  # the batch tensor, or the first non-empty image (gives the dtype)
    table: Optional[torch.Tensor]  # packed: per-image rows (TABLE_COLS int64 each)
    tiles: Optional[torch.Tensor]  # packed: (image, first token) per tile
    strides: tuple  # batch: (stride_b, stride_c, stride_h, stride_w); packed: unused zeros
    tokens_per_image: int  # batch only (packed: 0), as grid_w and num_tokens
    grid_w: int
    num_tokens: int
    num_tiles: int
    packed: bool
    channels_last: bool  # column order (i, j, c) instead of (c, i, j)
    vec: int  # pixels per vector load (see _vector_width)

    def leading_args(self):
        return self.ptr, self.table, self.tiles

    def geometry_args(self):
        return (*self.strides, self.tokens_per_image, self.grid_w, self.num_tokens)

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
        return _Pixels(images, None, None, images.stride(), tokens, grid_w, batch * tokens,
                       triton.cdiv(batch * tokens, block_m), False, channels_last,
                       _vector_width(views, patch_w, images.element_size(), channels_last))
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
    return _Pixels(ref, host[:table_len], host[table_len:], (0, 0, 0, 0), 0, 0, 0, tile_image.numel(), True,
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
    # grad_weight: 128 x 128 output tiles (half the operand traffic per product of 64 x 64).
    block_d = min(128, max(16, triton.next_power_of_2(embed_dim)))
    block_k = min(128, max(16, triton.next_power_of_2(patch_numel)))
    warps = 8 if block_d * block_k >= 128 * 128 else 4
    return dict(BLOCK_M=depth, BLOCK_D=block_d, BLOCK_K=block_k, num_warps=warps, num_stages=3)


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
