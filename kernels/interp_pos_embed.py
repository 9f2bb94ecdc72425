"""Triton kernels: a (Gh, Gw, D) positional-embedding grid resampled to every sequence's
own (h, w) grid of a packed batch, optionally added to the tokens; and its gradient.

The 1-D taps (which input indices, which weights) are computed in the kernels from the
output index, exactly as ``adaptkern.reference.interp_pos_embed.axis_taps`` defines them,
so nothing is precomputed per grid size and the launch needs no host sync.

Forward: a persistent grid walks *units*: a tile of BLOCK_H x BLOCK_W output positions of
one sequence (or a block of its prefix tokens, copied). Per base row ``a`` a tile reaches,
the columns are interpolated once (gathered taps along Gw), then spread over the tile's
rows with their weights for ``a``: separable, so each base row is read once per tile.
Unit counts per sequence are a device cumsum; the kernel reads the total, and each unit
finds its sequence by a vectorised count over that cumsum (independent loads, no chain of
dependent ones as a binary search has). The tile is one (rows, columns, channels) layout
throughout, so a base row's interpolated columns reach the tile's rows without a layout
conversion through shared memory.

Backward (to pos_embed): one program per (base row a, block of base columns, D block,
split of the sequences) sums w_h(r, a) * w_w(c, b) * dOut[r, c] over the output positions
whose taps reach them (contiguous ranges: tap windows only move right as the output index
grows): rows first into y[c], then a small product with the column weights. Each program
writes its own partial; the caller sums the splits in a fixed order: deterministic, no
atomics.
"""

import torch
import triton
import triton.language as tl

from ._utils import INTERPRET, dot, row_block

# Forward tile: rows x columns of output positions, and the channel block.
BLOCK_H = 4
BLOCK_W = 16
MAX_BLOCK_D = 64
# Prefix tokens copied per unit.
BLOCK_P = BLOCK_H * BLOCK_W
# Unit offsets one program's sequence search reads at a time, and what pads them.
SEARCH_BLOCK = tl.constexpr(128)
MAX_UNITS = tl.constexpr(2**31 - 1)
# Backward: base columns per program and output columns per step (both >= 16: tl.dot).
MAX_BLOCK_B = 32
BLOCK_C = 32


def mode_constants(mode: str, antialias: bool, align_corners: bool) -> dict:
    """Compile-time constants selecting the filter (see reference.interp_pos_embed)."""
    return dict(
        MODE=0 if mode == "bilinear" else 1,
        ANTIALIAS=bool(antialias),
        ALIGN_CORNERS=bool(align_corners),
        HALF_TAPS=1 if mode == "bilinear" else 2,
        CUBIC_A=-0.5 if antialias else -0.75,
    )


@triton.jit
def _filter(x, MODE: tl.constexpr, CUBIC_A: tl.constexpr):
    x = tl.abs(x)
    if MODE == 0:
        return tl.maximum(1.0 - x, 0.0)
    else:
        near = ((CUBIC_A + 2.0) * x - (CUBIC_A + 3.0)) * x * x + 1.0
        far = ((CUBIC_A * x - 5.0 * CUBIC_A) * x + 8.0 * CUBIC_A) * x - 4.0 * CUBIC_A
        return tl.where(x < 1.0, near, tl.where(x < 2.0, far, 0.0))


@triton.jit
def _window(o, in_size, out_size, ANTIALIAS: tl.constexpr, ALIGN_CORNERS: tl.constexpr, MODE: tl.constexpr,
            HALF_TAPS: tl.constexpr):
    """Taps of output index ``o`` (int32, any shape) of an axis resized in_size -> out_size.

    Returns (lo, count, pos, inv, last): tap x in [lo, lo + count) reads input
    clamp(x, 0, in_size - 1) with weight filter((x - pos) * inv) / total. ``last`` is the
    largest input index any tap may read, non-decreasing in ``o`` (binary searches use it).
    """
    # tl.cast, not in_size.to: a launch specialises an int argument equal to 1 (a 1-row or
    # 1-column base grid) into a constexpr Python int, which has no .to.
    in_f = tl.cast(in_size, tl.float32)
    out_f = out_size.to(tl.float32)
    o_f = o.to(tl.float32)
    if ALIGN_CORNERS:
        scale = tl.where(out_size > 1, (in_f - 1.0) / tl.maximum(out_f - 1.0, 1.0), 0.0)
    else:
        scale = in_f / out_f
    if ANTIALIAS:
        center = scale * (o_f + 0.5)
        stretch = tl.maximum(scale, 1.0)
        support = HALF_TAPS * stretch
        lo = tl.maximum(tl.floor(center - support + 0.5), 0.0).to(tl.int32)
        hi = tl.minimum(tl.floor(center + support + 0.5), in_f).to(tl.int32)
        cap = 2 * tl.ceil(support).to(tl.int32) + 1
        count = tl.minimum(tl.maximum(hi - lo, 0), cap)
        pos = center - 0.5
        inv = tl.zeros_like(center) + 1.0 / stretch
        last = tl.maximum(hi - 1, 0)
    else:
        if ALIGN_CORNERS:
            real = scale * o_f
        else:
            real = scale * (o_f + 0.5) - 0.5
        if MODE == 0:
            real = tl.maximum(real, 0.0)
        fl = tl.minimum(tl.floor(real).to(tl.int32), in_size - 1)
        lo = fl - HALF_TAPS + 1
        count = tl.zeros_like(lo) + 2 * HALF_TAPS
        pos = real
        inv = tl.zeros_like(real) + 1.0
        last = tl.minimum(tl.maximum(fl + HALF_TAPS, 0), in_size - 1)
    return lo, count, pos, inv, last


@triton.jit
def _window_total(lo, count, pos, inv, max_count, ANTIALIAS: tl.constexpr, MODE: tl.constexpr,
                  CUBIC_A: tl.constexpr):
    """Normaliser of the antialiased taps (1 without antialias, whose weights sum to 1)."""
    total = tl.zeros_like(pos)
    if ANTIALIAS:
        for k in range(0, max_count):
            x = (lo + k).to(tl.float32)
            total += tl.where(k < count, _filter((x - pos) * inv, MODE, CUBIC_A), 0.0)
        total = tl.where(total != 0.0, total, 1.0)
    else:
        total += 1.0
    return total


@triton.jit
def _tap_weight(j, lo, count, pos, inv, total, in_size, ANTIALIAS: tl.constexpr, MODE: tl.constexpr,
                HALF_TAPS: tl.constexpr, CUBIC_A: tl.constexpr):
    """(weight, hit) of input index ``j`` in the output whose taps are (lo, count, pos, inv,
    total): ``hit`` = some tap reads ``j`` (its weight may still be 0, as F.interpolate's can)."""
    j = j + tl.zeros_like(lo)  # a loop counter is a plain int under the interpreter
    if ANTIALIAS:
        # Antialiased taps are in range and distinct: j is tap j - lo.
        hit = (j >= lo) & (j < lo + count)
        return tl.where(hit, _filter((j.to(tl.float32) - pos) * inv, MODE, CUBIC_A), 0.0) / total, hit
    else:
        # Border taps are clamped onto the same input index: their weights add up.
        weight = tl.zeros_like(j).to(tl.float32)
        hit = j < 0  # all False
        for k in tl.static_range(2 * HALF_TAPS):
            x = lo + k
            tap_hit = tl.minimum(tl.maximum(x, 0), in_size - 1) == j
            weight += tl.where(tap_hit, _filter(x.to(tl.float32) - pos, MODE, CUBIC_A), 0.0)
            hit = hit | tap_hit
        return weight, hit


@triton.jit
def _weight_of(j, lo, count, pos, inv, total, in_size, ANTIALIAS: tl.constexpr, MODE: tl.constexpr,
               HALF_TAPS: tl.constexpr, CUBIC_A: tl.constexpr):
    """Weight of input index ``j`` in the output whose taps are (lo, count, pos, inv, total)."""
    weight, _ = _tap_weight(j, lo, count, pos, inv, total, in_size, ANTIALIAS, MODE, HALF_TAPS, CUBIC_A)
    return weight


@triton.jit
def _interp_fwd_kernel(
    pos_ptr, tok_ptr, out_ptr, grid_ptr, cu_ptr, unit_ptr,
    num_seqs, base_h, base_w, dim, num_prefix, stride_tok, stride_out,
    ADD: tl.constexpr, MODE: tl.constexpr, ANTIALIAS: tl.constexpr, ALIGN_CORNERS: tl.constexpr,
    HALF_TAPS: tl.constexpr, CUBIC_A: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_P: tl.constexpr,
):
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = d < dim
    num_units = tl.load(unit_ptr + num_seqs)
    prefix_units = tl.cdiv(num_prefix, BLOCK_P)
    for unit in range(tl.program_id(0), num_units, tl.num_programs(0)):
        # The sequence owning this unit: the number of sequences whose units end at or before
        # it (unit_offsets[seq + 1] <= unit), SEARCH_BLOCK offsets per independent load.
        seq = unit * 0
        for first in range(0, num_seqs, SEARCH_BLOCK):
            offs = first + tl.arange(0, SEARCH_BLOCK)
            ends = tl.load(unit_ptr + 1 + offs, mask=offs < num_seqs, other=MAX_UNITS)
            seq += tl.sum((ends <= unit).to(tl.int32), 0)
        local = unit - tl.load(unit_ptr + seq)
        start = tl.load(cu_ptr + seq).to(tl.int64)
        if local < prefix_units:
            # Both branches of a runtime `if` must give shared names one type: prefix_* here.
            prefix_idx = local * BLOCK_P + tl.arange(0, BLOCK_P)
            prefix_rows = start + prefix_idx
            prefix_mask = (prefix_idx < num_prefix)[:, None] & d_ok[None, :]
            prefix_vals = tl.load(tok_ptr + prefix_rows[:, None] * stride_tok + d[None, :], mask=prefix_mask)
            tl.store(out_ptr + prefix_rows[:, None] * stride_out + d[None, :], prefix_vals, mask=prefix_mask)
        else:
            h = tl.load(grid_ptr + 2 * seq)
            w = tl.load(grid_ptr + 2 * seq + 1)
            tile = local - prefix_units
            tiles_w = tl.cdiv(w, BLOCK_W)
            # Rows, columns and channels are the three axes of one (BLOCK_H, BLOCK_W, BLOCK_D)
            # layout from the start: a base row interpolated along the columns is added to
            # the tile's rows as it is, never converted through shared memory.
            r = ((tile // tiles_w) * BLOCK_H + tl.arange(0, BLOCK_H))[:, None, None]
            c = ((tile % tiles_w) * BLOCK_W + tl.arange(0, BLOCK_W))[None, :, None]
            d3 = d[None, None, :]
            d3_ok = d_ok[None, None, :]
            r_ok = r < h
            c_ok = c < w
            lo_r, cnt_r, pos_r, inv_r, last_r = _window(r, base_h, h, ANTIALIAS, ALIGN_CORNERS, MODE, HALF_TAPS)
            cnt_r = tl.where(r_ok, cnt_r, 0)
            tot_r = _window_total(lo_r, cnt_r, pos_r, inv_r, tl.max(cnt_r), ANTIALIAS, MODE, CUBIC_A)
            lo_c, cnt_c, pos_c, inv_c, last_c = _window(c, base_w, w, ANTIALIAS, ALIGN_CORNERS, MODE, HALF_TAPS)
            cnt_c = tl.where(c_ok, cnt_c, 0)
            max_cnt_c = tl.max(cnt_c)
            tot_c = _window_total(lo_c, cnt_c, pos_c, inv_c, max_cnt_c, ANTIALIAS, MODE, CUBIC_A)
            # Base rows reached by the tile's rows (windows are monotone in the row index).
            a_begin = tl.min(tl.where(r_ok, tl.minimum(tl.maximum(lo_r, 0), base_h - 1), base_h))
            a_end = tl.max(tl.where(r_ok, last_r + 1, 0))
            acc = tl.zeros((BLOCK_H, BLOCK_W, BLOCK_D), tl.float32)
            for a in range(a_begin, a_end):
                w_r, hit_r = _tap_weight(a, lo_r, cnt_r, pos_r, inv_r, tot_r, base_h, ANTIALIAS, MODE, HALF_TAPS,
                                         CUBIC_A)
                row = tl.zeros((1, BLOCK_W, BLOCK_D), tl.float32)
                for k in range(0, max_cnt_c):
                    x = lo_c + k
                    tap_ok = c_ok & (k < cnt_c)
                    w_c = tl.where(tap_ok, _filter((x.to(tl.float32) - pos_c) * inv_c, MODE, CUBIC_A), 0.0) / tot_c
                    b = tl.minimum(tl.maximum(x, 0), base_w - 1)
                    vals = tl.load(pos_ptr + (a * base_w + b) * dim + d3, mask=tap_ok & d3_ok, other=0.0)
                    row += w_c * vals.to(tl.float32)
                # Only the tile rows that sample base row a: 0 * NaN must not reach the others.
                acc += tl.where(hit_r, w_r * row, 0.0)
            tokens = start + num_prefix + (r * w + c).to(tl.int64)
            mask = r_ok & c_ok & d3_ok
            if ADD:
                acc += tl.load(tok_ptr + tokens * stride_tok + d3, mask=mask).to(tl.float32)
            tl.store(out_ptr + tokens * stride_out + d3, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _reach(first_index, last_index, n, in_size, ANTIALIAS: tl.constexpr, ALIGN_CORNERS: tl.constexpr,
           MODE: tl.constexpr, HALF_TAPS: tl.constexpr, BLOCK_O: tl.constexpr):
    """[begin, end): the output indices o in [0, n) whose taps may reach an input index in
    [first_index, last_index]. Tap windows only move right as o grows, so these are
    contiguous: begin counts the windows ending before first_index, end those starting at
    or before last_index."""
    begin = n * 0
    end = n * 0
    for o0 in range(0, n, BLOCK_O):
        o = o0 + tl.arange(0, BLOCK_O)
        ok = o < n
        first, count, pos, inv, last = _window(o, in_size, n, ANTIALIAS, ALIGN_CORNERS, MODE, HALF_TAPS)
        begin += tl.sum((ok & (last < first_index)).to(tl.int32), 0)
        end += tl.sum((ok & (tl.maximum(first, 0) <= last_index)).to(tl.int32), 0)
    return begin, end


@triton.jit
def _interp_bwd_kernel(
    grad_ptr, partial_ptr, grid_ptr, cu_ptr,
    num_seqs, num_splits, base_h, base_w, dim, num_prefix, stride_grad,
    MODE: tl.constexpr, ANTIALIAS: tl.constexpr, ALIGN_CORNERS: tl.constexpr,
    HALF_TAPS: tl.constexpr, CUBIC_A: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
):
    col_blocks = tl.cdiv(base_w, BLOCK_B)
    a = tl.program_id(0) // col_blocks
    b_first = (tl.program_id(0) % col_blocks) * BLOCK_B
    b = b_first + tl.arange(0, BLOCK_B)
    b_last = tl.minimum(b_first + BLOCK_B, base_w) - 1
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = d < dim
    split = tl.program_id(2)
    acc = tl.zeros((BLOCK_B, BLOCK_D), tl.float32)
    for seq in range(split * num_seqs // num_splits, (split + 1) * num_seqs // num_splits):
        h = tl.load(grid_ptr + 2 * seq)
        w = tl.load(grid_ptr + 2 * seq + 1)
        row0 = tl.load(cu_ptr + seq).to(tl.int64) + num_prefix
        r_begin, r_end = _reach(a, a, h, base_h, ANTIALIAS, ALIGN_CORNERS, MODE, HALF_TAPS, BLOCK_C)
        c_begin, c_end = _reach(b_first, b_last, w, base_w, ANTIALIAS, ALIGN_CORNERS, MODE, HALF_TAPS, BLOCK_C)
        for c0 in range(c_begin, c_end, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C)
            c_ok = c < c_end
            # Rows first: y[c] = sum_r w_h(r, a) dOut[r, c] ...
            y = tl.zeros((BLOCK_C, BLOCK_D), tl.float32)
            for r_loop in range(r_begin, r_end):
                r = r_loop + h * 0  # a loop counter is a plain int under the interpreter
                lo_r, cnt_r, pos_r, inv_r, last_r = _window(r, base_h, h, ANTIALIAS, ALIGN_CORNERS, MODE, HALF_TAPS)
                tot_r = _window_total(lo_r, cnt_r, pos_r, inv_r, cnt_r, ANTIALIAS, MODE, CUBIC_A)
                w_r = _weight_of(a, lo_r, cnt_r, pos_r, inv_r, tot_r, base_h, ANTIALIAS, MODE, HALF_TAPS, CUBIC_A)
                rows = row0 + (r * w + c).to(tl.int64)
                g = tl.load(grad_ptr + rows[:, None] * stride_grad + d[None, :],
                            mask=c_ok[:, None] & d_ok[None, :], other=0.0)
                y += w_r * g.to(tl.float32)
            # ... then columns: dP[a, b] += sum_c w_w(c, b) y[c], a product with the
            # (BLOCK_B, BLOCK_C) weight matrix of this column block.
            lo_c, cnt_c, pos_c, inv_c, last_c = _window(c, base_w, w, ANTIALIAS, ALIGN_CORNERS, MODE, HALF_TAPS)
            cnt_c = tl.where(c_ok, cnt_c, 0)
            tot_c = _window_total(lo_c, cnt_c, pos_c, inv_c, tl.max(cnt_c, 0), ANTIALIAS, MODE, CUBIC_A)
            weights = _weight_of(b[:, None], lo_c[None, :], cnt_c[None, :], pos_c[None, :], inv_c[None, :],
                                 tot_c[None, :], base_w, ANTIALIAS, MODE, HALF_TAPS, CUBIC_A)
            acc = dot(tl.where(c_ok[None, :], weights, 0.0), y, acc)
    offs = ((split * base_h + a) * base_w + b).to(tl.int64)[:, None] * dim + d[None, :]
    tl.store(partial_ptr + offs, acc, mask=(b < base_w)[:, None] & d_ok[None, :])


def _num_sms(device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def interp_forward(pos_embed, grid_sizes, cu_seqlens, out, *, tokens=None, num_prefix_tokens=0,
                   mode, antialias, align_corners):
    """Write into ``out`` (T, D) every sequence's resampled grid (plus ``tokens`` when given).

    pos_embed (Gh, Gw, D) contiguous, fp16/bf16/fp32; grid_sizes int32 (S, 2) contiguous;
    cu_seqlens int32 (S+1,): sequence i's rows start at cu_seqlens[i], its first
    ``num_prefix_tokens`` rows are copied from tokens (ADD) and its h_i*w_i patch rows follow;
    tokens (T, D) with unit column stride, or None. Returns ``out``.
    """
    base_h, base_w, dim = pos_embed.shape
    num_seqs = grid_sizes.shape[0]
    if num_seqs == 0 or dim == 0 or out.shape[0] == 0:
        return out
    prefix_units = triton.cdiv(num_prefix_tokens, BLOCK_P)
    h, w = grid_sizes[:, 0].long(), grid_sizes[:, 1].long()
    units = (h + BLOCK_H - 1) // BLOCK_H * ((w + BLOCK_W - 1) // BLOCK_W) + prefix_units
    unit_offsets = torch.zeros(num_seqs + 1, dtype=torch.int32, device=out.device)
    torch.cumsum(units, 0, out=unit_offsets[1:])
    block_d = row_block(dim, MAX_BLOCK_D)
    d_blocks = triton.cdiv(dim, block_d)
    # Persistent: a few programs per SM (under the interpreter, few programs = less overhead);
    # never more programs than units, which are at most one per token.
    programs = 2 if INTERPRET else 8 * _num_sms(out.device)
    grid = (max(1, min(out.shape[0], triton.cdiv(programs, d_blocks))), d_blocks)
    tok = tokens if tokens is not None else out
    _interp_fwd_kernel[grid](
        pos_embed, tok, out, grid_sizes, cu_seqlens, unit_offsets,
        num_seqs, base_h, base_w, dim, num_prefix_tokens, tok.stride(0), out.stride(0),
        ADD=tokens is not None, **mode_constants(mode, antialias, align_corners),
        BLOCK_H=BLOCK_H, BLOCK_W=BLOCK_W, BLOCK_D=block_d, BLOCK_P=BLOCK_P,
    )
    return out


def interp_backward(grad, grid_sizes, cu_seqlens, base_h, base_w, *, num_prefix_tokens=0, mode, antialias,
                    align_corners, num_splits=None):
    """float32 (Gh, Gw, D) gradient for pos_embed from ``grad`` (T, D) (unit column stride),
    the layout of :func:`interp_forward`. ``num_splits`` sequence groups are reduced in
    fixed order (default: enough programs to fill the GPU)."""
    dim = grad.shape[1]
    num_seqs = grid_sizes.shape[0]
    if num_seqs == 0 or dim == 0 or grad.shape[0] == 0:
        return grad.new_zeros((base_h, base_w, dim), dtype=torch.float32)
    block_b = max(16, row_block(base_w, MAX_BLOCK_B))
    block_d = max(16, row_block(dim, MAX_BLOCK_D))
    programs = base_h * triton.cdiv(base_w, block_b) * triton.cdiv(dim, block_d)
    if num_splits is None:
        num_splits = 1 if INTERPRET else triton.cdiv(4 * _num_sms(grad.device), programs)
    num_splits = max(1, min(num_splits, num_seqs, 64))
    partial = grad.new_empty((num_splits, base_h, base_w, dim), dtype=torch.float32)
    grid = (base_h * triton.cdiv(base_w, block_b), triton.cdiv(dim, block_d), num_splits)
    _interp_bwd_kernel[grid](
        grad, partial, grid_sizes, cu_seqlens,
        num_seqs, num_splits, base_h, base_w, dim, num_prefix_tokens, grad.stride(0),
        **mode_constants(mode, antialias, align_corners), BLOCK_B=block_b, BLOCK_C=BLOCK_C, BLOCK_D=block_d,
    )
    return partial[0] if num_splits == 1 else partial.sum(0)
