"""Variable-length flash attention, forward (FlashAttention-2 style online softmax).

One program per (query block, query head, sequence) of the packed batch; no padding of
sequences. Scores live in log2 units (log2(e) folded into the scale) so the softmax uses
exp2. Key blocks that the causal / window mask excludes entirely are never visited, and
blocks that it allows entirely skip the mask.

Mask, in one form for both passes: index ``o`` of the other side is visible from index
``s`` of this side iff ``s + diag - lower <= o <= s + diag + upper`` (HAS_LOWER /
HAS_UPPER off = unbounded) and ``o < len_other``. Forward / dQ: s = query, o = key,
diag = Lk - Lq, (lower, upper) = (left, right). dK/dV: s = key, o = query,
diag = Lq - Lk, (lower, upper) = (right, left).
"""

import torch
import triton
import triton.language as tl

from ._utils import INTERPRET, dot, to_dtype

LOG2E = 1.4426950408889634
# Kernels may read module globals only as constexprs.
LOG2E_C = tl.constexpr(LOG2E)
LN2_C = tl.constexpr(0.6931471805599453)
MAX_PROGRAMS = 2**31 - 1
MAX_PROGRAMS_C = tl.constexpr(MAX_PROGRAMS)
# Programs per SM of the persistent attention kernels (see persistent_programs).
PROGRAMS_PER_SM = 4
# Schedule entries one program's search reads at a time.
SEARCH_BLOCK = tl.constexpr(256)


@triton.jit
def visible_range(start, BLOCK_SELF: tl.constexpr, diag, lower, upper, HAS_LOWER: tl.constexpr,
                  HAS_UPPER: tl.constexpr, len_other, BLOCK_OTHER: tl.constexpr):
    """Which blocks of the other side to visit for this side's rows [start, start + BLOCK_SELF).

    The positions any row may see are [lo, hi); inside them the block-aligned
    [full_lo, full_hi) is seen whole by every row (no mask needed). Returns
    (full_lo, n_full, lo, n_before, full_hi, n_masked): n_full unmasked blocks from full_lo,
    and n_masked masked ones, the first n_before from lo and the rest from full_hi (see
    :func:`block_start`), so every block of [lo, hi) is visited once."""
    last = start + BLOCK_SELF - 1
    lo = start * 0
    full_lo = start * 0
    hi = len_other
    full_hi = len_other
    if HAS_LOWER:
        # Clamp before dividing: integer division must not see negative operands.
        lo = tl.maximum(start + diag - lower, 0)
        full_lo = tl.maximum(last + diag - lower, 0)
    if HAS_UPPER:
        hi = tl.minimum(tl.maximum(last + diag + upper + 1, 0), len_other)
        full_hi = tl.minimum(tl.maximum(start + diag + upper + 1, 0), len_other)
    lo = lo // BLOCK_OTHER * BLOCK_OTHER
    full_lo = tl.minimum((full_lo + BLOCK_OTHER - 1) // BLOCK_OTHER * BLOCK_OTHER, hi)
    full_lo = tl.maximum(full_lo, lo)
    full_hi = tl.maximum(tl.minimum(full_hi // BLOCK_OTHER * BLOCK_OTHER, hi), full_lo)
    n_before = tl.cdiv(full_lo - lo, BLOCK_OTHER)
    n_masked = n_before + tl.cdiv(hi - full_hi, BLOCK_OTHER)
    return full_lo, (full_hi - full_lo) // BLOCK_OTHER, lo, n_before, full_hi, n_masked


@triton.jit
def block_start(i, first, first_count, second, BLOCK: tl.constexpr):
    """Start of the i-th block of two runs: ``first_count`` blocks from ``first``, then
    blocks from ``second``. One loop then serves both masked runs (half the code of two)."""
    return tl.where(i < first_count, first + i * BLOCK, second + (i - first_count) * BLOCK)


@triton.jit
def visible(offs_self, offs_other, diag, lower, upper, HAS_LOWER: tl.constexpr, HAS_UPPER: tl.constexpr,
            len_other):
    """bool (len(offs_self), len(offs_other)): which pairs the mask allows."""
    rel = offs_other[None, :] - offs_self[:, None] - diag
    ok = (offs_other < len_other)[None, :]
    if HAS_LOWER:
        ok = ok & (rel >= -lower)
    if HAS_UPPER:
        ok = ok & (rel <= upper)
    return ok


@triton.jit
def program_tile(item, cu_seqlens_q, cu_seqlens_k, tile_end, seq_order, num_seqs, num_heads, BLOCK: tl.constexpr,
                 TILES_ON_K: tl.constexpr, LAST_FIRST: tl.constexpr):
    """(slot, head, block, q_start, len_q, k_start, len_k) of (tile, head) pair ``item`` (below
    the real count) under the schedule of :func:`tile_schedule`: heads vary fastest (the query
    heads sharing a kv head run side by side and reuse its K/V from L2), then the real tiles
    of the sequences in ``seq_order``, whose tiles end at ``tile_end``. Tiles run along the
    keys (TILES_ON_K) or the queries; within a sequence the last block first (LAST_FIRST) or
    the first."""
    t = item // num_heads
    # Vectorised search: the tile's sequence is the first slot whose tiles end after t.
    slot = t * 0
    for first in range(0, num_seqs, SEARCH_BLOCK):
        offs = first + tl.arange(0, SEARCH_BLOCK)
        ends = tl.load(tile_end + offs, mask=offs < num_seqs, other=MAX_PROGRAMS_C)
        slot += tl.sum((ends <= t).to(tl.int32), 0)
    safe = tl.minimum(slot, num_seqs - 1)
    seq = tl.load(seq_order + safe)
    end = tl.load(tile_end + safe)
    q_start = tl.load(cu_seqlens_q + seq)
    k_start = tl.load(cu_seqlens_k + seq)
    len_q = tl.load(cu_seqlens_q + seq + 1) - q_start
    len_k = tl.load(cu_seqlens_k + seq + 1) - k_start
    if LAST_FIRST:
        block = end - 1 - t
    elif TILES_ON_K:
        block = t - (end - tl.cdiv(len_k, BLOCK))
    else:
        block = t - (end - tl.cdiv(len_q, BLOCK))
    return slot, item % num_heads, block, q_start, len_q, k_start, len_k


@triton.jit
def row_tile(start, seq_start, length, head_dim, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr):
    """A tile of rows [start, start + BLOCK) of a sequence that begins at packed row
    ``seq_start``: (offsets in the sequence, offs_d, d_ok, (BLOCK, BLOCK_D) mask, packed rows int64)."""
    offs = start + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < head_dim
    return offs, offs_d, d_ok, (offs < length)[:, None] & d_ok[None, :], (seq_start + offs).to(tl.int64)


@triton.jit
def load_rows(base, rows, stride_t, offs_d, mask):
    """(len(rows), BLOCK_D) tile of rows ``rows`` (int64) of one head; zeros where masked."""
    return tl.load(base + rows[:, None] * stride_t + offs_d[None, :], mask=mask, other=0.0)


@triton.jit
def store_rows(base, rows, stride_t, offs_d, value, mask):
    """Store a float32 (len(rows), BLOCK_D) tile into rows ``rows`` of one head, in the buffer's dtype."""
    tl.store(base + rows[:, None] * stride_t + offs_d[None, :], to_dtype(value, base.dtype.element_ty), mask=mask)


@triton.jit
def query_block(Q, K, V, head, group, m_start, q_start, len_q, k_start, stride_qt, stride_qh, stride_kt, stride_kh,
                stride_vt, stride_vh, head_dim, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """What the forward and dQ kernels share for query rows [m_start, m_start + BLOCK_M) of
    one head: (head as int64, the :func:`row_tile` of the rows, the q tile, and the bases of
    this sequence's K and V rows in the head's kv head)."""
    head = head.to(tl.int64)
    kv_head = head // group
    offs_m, offs_d, d_ok, row_ok, rows = row_tile(m_start, q_start, len_q, head_dim, BLOCK_M, BLOCK_D)
    q = load_rows(Q + head * stride_qh, rows, stride_qt, offs_d, row_ok)
    k_base = K + k_start.to(tl.int64) * stride_kt + kv_head * stride_kh
    v_base = V + k_start.to(tl.int64) * stride_vt + kv_head * stride_vh
    return head, offs_m, offs_d, d_ok, row_ok, rows, q, k_base, v_base


@triton.jit
def fold_scores(acc, l_i, m_i, s, v, qk_scale, PRESCALED: tl.constexpr, SCALE_NEG: tl.constexpr):
    """One step of the online softmax: fold a block of scores ``s`` (BLOCK_M, BLOCK_N) and its
    values ``v`` into the running (acc, l_i, m_i), all in log2 units.

    Unless PRESCALED, ``s`` is raw q.k and the scale folds into one FMA per score:
    m = max(m_i, max(s) * scale), p = exp2(s * scale - m) (with a negative scale, SCALE_NEG,
    the row's max scaled score is its min raw score times the scale)."""
    if PRESCALED:
        m_new = tl.maximum(m_i, tl.max(s, 1))
    elif SCALE_NEG:
        m_new = tl.maximum(m_i, tl.min(s, 1) * qk_scale)
    else:
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
    if PRESCALED:
        # A row that has seen no key yet keeps max -inf; shift it by 0 so exp2 gives 0, not NaN.
        # Blocks seen whole have a finite score per row (finite inputs), so they skip this.
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_shift[:, None])
    else:
        m_shift = m_new
        p = tl.math.exp2(s * qk_scale - m_shift[:, None])
    alpha = tl.math.exp2(m_i - m_shift)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = dot(to_dtype(p, v.dtype), v, acc * alpha[:, None])
    return acc, l_i, m_new


@triton.jit
def _fwd_full_blocks(acc, l_i, m_i, q, k_base, v_base, K_desc, V_desc, k_row, kv_col, stride_kt, stride_vt, offs_d,
                     d_ok, start, count, qk_scale, SCALE_NEG: tl.constexpr, EVEN_D: tl.constexpr,
                     USE_TMA: tl.constexpr, BLOCK_N: tl.constexpr, NUM_STAGES: tl.constexpr):
    """Fold ``count`` key blocks from ``start`` that every query row sees whole: no key mask,
    no head-dim mask when EVEN_D, and no per-element address arithmetic. With USE_TMA (sm_90,
    see :func:`tma_descriptors`) each block is one tensor-memory-access copy at packed row
    ``k_row + start`` and column ``kv_col`` (a full block never crosses a sequence end);
    otherwise the int32 offsets of a block (small: BLOCK_N rows) are built once, and only the
    block's int64 base advances."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_k = offs_n[None, :] * stride_kt + offs_d[:, None]
    offs_v = offs_n[:, None] * stride_vt + offs_d[None, :]
    k_block = k_base + start.to(tl.int64) * stride_kt
    v_block = v_base + start.to(tl.int64) * stride_vt
    row = k_row + start
    for _ in tl.range(0, count, num_stages=NUM_STAGES):
        if USE_TMA:
            k_t = tl.trans(K_desc.load([row, kv_col]))
        elif EVEN_D:
            k_t = tl.load(k_block + offs_k)
        else:
            k_t = tl.load(k_block + offs_k, mask=d_ok[:, None], other=0.0)
        s = dot(q, k_t, tl.zeros((q.shape[0], BLOCK_N), dtype=tl.float32))
        if USE_TMA:
            v = V_desc.load([row, kv_col])
        elif EVEN_D:
            v = tl.load(v_block + offs_v)
        else:
            v = tl.load(v_block + offs_v, mask=d_ok[None, :], other=0.0)
        acc, l_i, m_i = fold_scores(acc, l_i, m_i, s, v, qk_scale, False, SCALE_NEG)
        k_block += BLOCK_N * stride_kt
        v_block += BLOCK_N * stride_vt
        row += BLOCK_N
    return acc, l_i, m_i


@triton.jit
def _fwd_masked_blocks(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, offs_m, offs_d, d_ok, first,
                       first_count, second, count, diag, len_k, qk_scale, window_left, window_right,
                       HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, BLOCK_N: tl.constexpr,
                       NUM_STAGES: tl.constexpr):
    """Fold ``count`` key blocks (see :func:`block_start`) that the mask cuts: the sequence's
    last (partial) block and the causal / window edges."""
    for i in tl.range(0, count, num_stages=NUM_STAGES):
        offs_n = block_start(i, first, first_count, second, BLOCK_N) + tl.arange(0, BLOCK_N)
        key_ok = d_ok[:, None] & (offs_n < len_k)[None, :]
        k_t = tl.load(k_base + offs_n[None, :].to(tl.int64) * stride_kt + offs_d[:, None], mask=key_ok, other=0.0)
        s = dot(q, k_t, tl.zeros((q.shape[0], BLOCK_N), dtype=tl.float32))
        # Scale before masking: -inf * scale would be NaN at scale 0.
        s = tl.where(visible(offs_m, offs_n, diag, window_left, window_right, HAS_LEFT, HAS_RIGHT, len_k),
                     s * qk_scale, float("-inf"))
        v = tl.load(v_base + offs_n[:, None].to(tl.int64) * stride_vt + offs_d[None, :],
                    mask=tl.trans(key_ok), other=0.0)
        acc, l_i, m_i = fold_scores(acc, l_i, m_i, s, v, qk_scale, True, False)
    return acc, l_i, m_i


@triton.jit
def _fwd_kernel(
    Q, K, V, K_desc, V_desc, Out, Lse, cu_seqlens_q, cu_seqlens_k,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh, stride_lse_h,
    tile_end, seq_order, num_seqs, num_heads, group, head_dim, qk_scale, window_left, window_right,
    HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, SCALE_NEG: tl.constexpr, EVEN_D: tl.constexpr,
    USE_TMA: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    # Persistent: each program takes every num_programs-th (tile, head) pair of the schedule,
    # whose real count the device knows (see persistent_programs).
    num_items = tl.load(tile_end + num_seqs - 1) * num_heads
    for item in range(tl.program_id(0), num_items, tl.num_programs(0)):
        slot, head, m_block, q_start, len_q, k_start, len_k = program_tile(
            item, cu_seqlens_q, cu_seqlens_k, tile_end, seq_order, num_seqs, num_heads, BLOCK_M, False, True)
        m_start = m_block * BLOCK_M
        diag = len_k - len_q
        head, offs_m, offs_d, d_ok, row_ok, rows, q, k_base, v_base = query_block(
            Q, K, V, head, group, m_start, q_start, len_q, k_start, stride_qt, stride_qh, stride_kt, stride_kh,
            stride_vt, stride_vh, head_dim, BLOCK_M, BLOCK_D)

        acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
        l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
        m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
        full_lo, n_full, lo, n_before, full_hi, n_masked = visible_range(
            m_start, BLOCK_M, diag, window_left, window_right, HAS_LEFT, HAS_RIGHT, len_k, BLOCK_N)
        acc, l_i, m_i = _fwd_full_blocks(acc, l_i, m_i, q, k_base, v_base, K_desc, V_desc, k_start,
                                         (head // group * BLOCK_D).to(tl.int32), stride_kt, stride_vt, offs_d, d_ok,
                                         full_lo, n_full, qk_scale, SCALE_NEG, EVEN_D, USE_TMA, BLOCK_N, NUM_STAGES)
        acc, l_i, m_i = _fwd_masked_blocks(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, offs_m, offs_d, d_ok,
                                           lo, n_before, full_hi, n_masked, diag, len_k, qk_scale, window_left,
                                           window_right, HAS_LEFT, HAS_RIGHT, BLOCK_N, NUM_STAGES)

        seen = l_i > 0.0
        l_safe = tl.where(seen, l_i, 1.0)
        out = acc * (1.0 / l_safe)[:, None]  # one reciprocal per row; rows that saw no key have acc = 0
        lse = tl.where(seen, (m_i + tl.math.log2(l_safe)) * LN2_C, float("-inf"))
        store_rows(Out + head * stride_oh, rows, stride_ot, offs_d, out, row_ok)
        tl.store(Lse + head * stride_lse_h + rows, lse, mask=offs_m < len_q)


def head_block(head_dim: int) -> int:
    """Power-of-two D tile (>= 16, the smallest tl.dot K dimension); masks cover the rest."""
    return max(16, triton.next_power_of_2(head_dim))


def target_arch(device: torch.device) -> int:
    """The SM version a launch on ``device`` compiles for (90 = sm_90). Off a GPU (a static
    audit compiling launches without one): the active Triton driver's CUDA target if one is
    set, else the newest target, sm_90."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return 10 * major + minor
    if not INTERPRET:
        try:
            target = triton.runtime.driver.active.get_current_target()
        except RuntimeError:  # no GPU driver
            return 90
        if target.backend == "cuda" and isinstance(target.arch, int):
            return target.arch
    return 90


def fwd_config(head_dim: int, dtype: torch.dtype, *, arch: int = 90, interpret: bool = INTERPRET) -> dict:
    """Tiles of the forward: BLOCK_M queries x BLOCK_N keys, NUM_STAGES-deep K/V pipeline.

    Small under the interpreter, so tests cover many blocks cheaply. fp16/bf16 run on
    tensor cores; float32 stays IEEE (FMA, no tensor cores), where smaller tiles keep the
    unrolled code and its compile time in check. Each fits its arch's shared memory (sm_80:
    163 KiB, sm_90: 227 KiB). At D=128, sm_90 (wgmma reads Q from shared memory) takes 128 x 128 tiles; sm_80's mma
    keeps Q in registers and would spill there, so it stays at 128 x 64.
    """
    if interpret:
        return dict(BLOCK_M=16, BLOCK_N=16, NUM_STAGES=1, num_warps=4)
    if dtype == torch.float32:
        return dict(BLOCK_M=32, BLOCK_N=32, NUM_STAGES=2 if head_dim <= 128 else 1, num_warps=4)
    if head_dim <= 64:
        return dict(BLOCK_M=128, BLOCK_N=64, NUM_STAGES=3, num_warps=4)
    if head_dim <= 128:
        if arch >= 90:  # 3 stages fill sm_90's 227 KiB
            return dict(BLOCK_M=128, BLOCK_N=128, NUM_STAGES=3, num_warps=8)
        return dict(BLOCK_M=128, BLOCK_N=64, NUM_STAGES=2, num_warps=8)
    return dict(BLOCK_M=64, BLOCK_N=32, NUM_STAGES=2, num_warps=4)


def tma_descriptors(k: torch.Tensor, v: torch.Tensor, block_n: int, arch: int):
    """Tensor-memory-access descriptors of K and V for the forward's full key blocks, or None
    where TMA does not apply: before sm_90, under the interpreter (tests force it through
    ``config``), for float32, a head dim that is not its power-of-two tile, heads that are
    not packed side by side, or strides / pointers not 16-byte aligned. Each descriptor
    views the tensor as (tokens, kv heads * D), one block = BLOCK_N rows x one head."""
    if arch < 90 or INTERPRET or k.dtype not in (torch.float16, torch.bfloat16):
        return None
    return make_tma_descriptors(k, v, block_n)


def make_tma_descriptors(k: torch.Tensor, v: torch.Tensor, block_n: int):
    """The descriptors of :func:`tma_descriptors` (None where the layout rules them out)."""
    from triton.tools.tensor_descriptor import TensorDescriptor  # triton >= 3.4

    tokens, kv_heads, head_dim = k.shape
    if tokens == 0 or head_dim != head_block(head_dim):
        return None
    for x in (k, v):
        if x.stride(1) != head_dim or (x.stride(0) * x.element_size()) % 16 or x.data_ptr() % 16:
            return None
    return tuple(TensorDescriptor(x, [tokens, kv_heads * head_dim], [x.stride(0), 1], [block_n, head_dim])
                 for x in (k, v))


def tile_schedule(cu_seqlens_tiles: torch.Tensor, cu_seqlens_other: torch.Tensor, block: int, max_seqlen: int,
                  total: int):
    """Which tiles to launch, heaviest first, computed on the device (no host sync).

    Tiles of ``block`` rows cover each sequence along the side ``cu_seqlens_tiles`` indexes;
    a tile's work grows with the other side's length, so sequences are ordered by it, longest
    first (ties keep their order; sequences with no tile last). Returns (seq_order int32,
    tile_end int32: the running tile count in that order, bound): ``bound`` >= the number of
    tiles, from host-known sizes only: every sequence wastes less than one block, so
    sum cdiv(len_i, block) <= (total + batch * (block - 1)) // block. Programs past the last
    real tile (at most bound - tiles per head) exit at once."""
    lengths = cu_seqlens_tiles[1:] - cu_seqlens_tiles[:-1]
    tiles = (lengths + block - 1) // block
    work = torch.where(tiles > 0, cu_seqlens_other[1:] - cu_seqlens_other[:-1], -1)
    order = torch.argsort(work, descending=True, stable=True)
    tile_end = torch.cumsum(tiles[order], 0).to(torch.int32)
    batch = lengths.numel()
    bound = min(batch * triton.cdiv(max_seqlen, block), (total + batch * (block - 1)) // block)
    return order.to(torch.int32), tile_end, bound


def persistent_programs(items_bound: int, num_sms: int) -> int:
    """How many programs to launch for at most ``items_bound`` (tile, head) pairs on a GPU with
    ``num_sms`` SMs. Each program loops over every num_programs-th real pair (their count is
    read on the device, so the host needs no sync): PROGRAMS_PER_SM per SM at most, and none
    without work unless there are fewer real pairs than programs."""
    return max(1, min(items_bound, PROGRAMS_PER_SM * num_sms))


def multiprocessors(device: torch.device) -> int:
    """SMs of ``device``; off a GPU, 1 under the interpreter (a few programs, each looping) and
    an H100's 132 for launches compiled without one."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1 if INTERPRET else 132


def check_grid(programs: int, what: str):
    if programs > MAX_PROGRAMS:
        raise ValueError(f"adaptkern.varlen_attention: {what} needs {programs} programs, more than one launch "
                         f"allows ({MAX_PROGRAMS}); split the batch")


def last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def reachable_window(window_left, window_right, max_seqlen_q, max_seqlen_k):
    """The window with every side that cuts no key of any sequence made unbounded (-1).

    Query i sees key j iff i + Lk - Lq - left <= j <= i + Lk - Lq + right. The left bound
    admits key 0 for every query iff it does for the last one (Lk - 1 - left <= 0); the right
    bound admits key Lk - 1 for every query iff it does for the first (Lk - Lq + right >=
    Lk - 1). So left >= max_seqlen_k - 1 and right >= max_seqlen_q - 1 cut nothing in any
    sequence. Besides skipping the mask, this keeps the kernels' int32 bounds (row + diag
    +- window) from wrapping when a caller passes a huge window, such as 2**31 - 1."""
    left = -1 if window_left >= max_seqlen_k - 1 else window_left
    right = -1 if window_right >= max_seqlen_q - 1 else window_right
    return left, right


def forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale, window_left,
            window_right, *, config=None):
    """Launch the forward kernel.

    Args:
        q: (total_q, Hq, D); k, v: (total_k, Hkv, D); fp16 / bf16 / fp32, any strides
            (copied once only if the last dim is not contiguous).
        cu_seqlens_q, cu_seqlens_k: int32 (S+1,), already validated.
        window_left, window_right: mask bounds with causal folded in (-1 = unbounded); a side
            that cuts no key counts as -1 (:func:`reachable_window`).
        config: override of :func:`fwd_config` (tests use it to run the GPU tile sizes).

    Returns out (total_q, Hq, D) in q's dtype and lse (Hq, total_q) float32.
    """
    q, k, v = (last_dim_contiguous(x) for x in (q, k, v))
    window_left, window_right = reachable_window(window_left, window_right, max_seqlen_q, max_seqlen_k)
    total_q, num_heads, head_dim = q.shape
    out = q.new_empty(q.shape)
    lse = torch.empty((num_heads, total_q), dtype=torch.float32, device=q.device)
    batch = cu_seqlens_q.numel() - 1
    if total_q == 0 or batch == 0 or max_seqlen_q == 0:
        return out, lse
    arch = target_arch(q.device)
    cfg = dict(config or fwd_config(head_dim, q.dtype, arch=arch))
    use_tma = cfg.pop("USE_TMA", None)  # tests force the TMA path on or off
    descriptors = tma_descriptors(k, v, cfg["BLOCK_N"], arch) if use_tma is None else \
        (make_tma_descriptors(k, v, cfg["BLOCK_N"]) if use_tma else None)
    if use_tma and descriptors is None:
        raise ValueError("adaptkern.varlen_attention: config USE_TMA=True needs 16-bit K/V with packed heads, "
                         "a power-of-two head dim and 16-byte aligned strides")
    cu_seqlens_q, cu_seqlens_k = cu_seqlens_q.contiguous(), cu_seqlens_k.contiguous()
    seq_order, tile_end, tiles = tile_schedule(cu_seqlens_q, cu_seqlens_k, cfg["BLOCK_M"], max_seqlen_q, total_q)
    items_bound = tiles * num_heads
    check_grid(items_bound, "the forward")
    if items_bound == 0:
        return out, lse
    k_desc, v_desc = descriptors or (k, v)  # unused pointers when TMA is off
    _fwd_kernel[(persistent_programs(items_bound, multiprocessors(q.device)),)](
        q, k, v, k_desc, v_desc, out, lse, cu_seqlens_q, cu_seqlens_k,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), out.stride(0), out.stride(1),
        lse.stride(0), tile_end, seq_order, batch, num_heads, num_heads // k.shape[1], head_dim, softmax_scale * LOG2E,
        window_left, window_right, HAS_LEFT=window_left >= 0, HAS_RIGHT=window_right >= 0,
        SCALE_NEG=softmax_scale < 0, EVEN_D=head_dim == head_block(head_dim), BLOCK_D=head_block(head_dim),
        USE_TMA=descriptors is not None, **cfg,
    )
    return out, lse
