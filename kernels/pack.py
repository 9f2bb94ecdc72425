"""Row copies between padded (batch, padded_len, row) and packed (total, row) layouts.

A row is moved as ``row_elements`` words; callers view any dtype as the widest integer
type that divides the row, so one compiled kernel serves every dtype of that width.
"""

import torch
import triton
import triton.language as tl

from ._utils import row_block


@triton.jit
def _copy_rows_kernel(
    src_ptr,
    dst_ptr,
    cu_seqlens_ptr,
    padded_len,
    row_elements,
    PACK: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_COLS: tl.constexpr,
):
    seq = tl.program_id(0).to(tl.int64)
    row_tile = tl.program_id(1).to(tl.int64)
    start = tl.load(cu_seqlens_ptr + seq).to(tl.int64)
    length = tl.load(cu_seqlens_ptr + seq + 1).to(tl.int64) - start
    rows = row_tile * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    real = rows < length
    # Packing visits real rows only; unpacking also writes zeros into the padding rows.
    visit = real if PACK else rows < padded_len
    padded_rows = seq * padded_len + rows
    packed_rows = start + rows
    for col0 in range(0, row_elements, BLOCK_COLS):
        cols = col0 + tl.arange(0, BLOCK_COLS)
        in_row = cols[None, :] < row_elements
        padded_offsets = padded_rows[:, None] * row_elements + cols[None, :]
        packed_offsets = packed_rows[:, None] * row_elements + cols[None, :]
        if PACK:
            words = tl.load(src_ptr + padded_offsets, mask=visit[:, None] & in_row)
            tl.store(dst_ptr + packed_offsets, words, mask=visit[:, None] & in_row)
        else:
            words = tl.load(src_ptr + packed_offsets, mask=real[:, None] & in_row, other=0)
            tl.store(dst_ptr + padded_offsets, words, mask=visit[:, None] & in_row)


def _launch(src, dst, cu_seqlens, padded_len, rows_bound, pack):
    batch = cu_seqlens.numel() - 1
    row_elements = src.shape[-1]
    if batch == 0 or rows_bound == 0 or dst.numel() == 0:
        return dst
    block_cols = row_block(row_elements)
    block_rows = max(1, min(64, 4096 // block_cols, triton.next_power_of_2(rows_bound)))
    # Sequences on axis 0 (up to 2**31 programs); row tiles on axis 1.
    grid = (batch, triton.cdiv(rows_bound, block_rows))
    _copy_rows_kernel[grid](
        src, dst, cu_seqlens, padded_len, row_elements,
        PACK=pack, BLOCK_ROWS=block_rows, BLOCK_COLS=block_cols,
    )
    return dst


def pack_rows(padded: torch.Tensor, cu_seqlens: torch.Tensor, total: int, max_seqlen: int) -> torch.Tensor:
    """padded (B, L, R) contiguous words -> packed (total, R); rows past each length are skipped."""
    packed = padded.new_empty((total, padded.shape[2]))
    return _launch(padded, packed, cu_seqlens, padded.shape[1], max_seqlen, pack=True)


def unpack_rows(packed: torch.Tensor, cu_seqlens: torch.Tensor, padded_len: int) -> torch.Tensor:
    """packed (T, R) contiguous words -> padded (B, padded_len, R), zero-filled past each length."""
    batch = cu_seqlens.numel() - 1
    padded = packed.new_empty((batch, padded_len, packed.shape[1]))
    return _launch(packed, padded, cu_seqlens, padded_len, padded_len, pack=False)
