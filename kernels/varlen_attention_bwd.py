"""Variable-length flash attention, backward (FlashAttention-2 scheme, deterministic).

1. preprocess: delta = rowsum(dO * O) - dlse, per query row and head (float32).
2. dK/dV: one program per (key block, kv head, sequence); it loops over the query heads of
   its GQA group and, for each, over the query blocks the mask lets see its keys, so the
   group's contributions are summed in registers in a fixed order: no atomics.
3. dQ: one program per (query block, query head, sequence), looping over key blocks as the
   forward does.
Probabilities are recomputed from the forward's lse: P = exp2(S * scale * log2 e - lse * log2 e).
Rows that saw no key (lse -inf) only occur in masked blocks, where P is forced to 0.
"""

import torch
import triton
import triton.language as tl

from ._utils import INTERPRET, dot, to_dtype
from .varlen_attention import (LOG2E, LOG2E_C, block_start, check_grid, head_block, last_dim_contiguous, load_rows,
                               multiprocessors, persistent_programs, program_tile, query_block, reachable_window,
                               row_tile, store_rows, tile_schedule, visible, visible_range)


@triton.jit
def _preprocess_kernel(Out, dOut, dLse, Delta, stride_ot, stride_oh, stride_dot, stride_doh, stride_dlse_h,
                       stride_dlse_t, total_q, head_dim, HAS_DLSE: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_D: tl.constexpr):
    head = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = rows < total_q
    ok = row_ok[:, None] & (offs_d < head_dim)[None, :]
    o = tl.load(Out + rows[:, None] * stride_ot + head * stride_oh + offs_d[None, :], mask=ok, other=0.0)
    do = tl.load(dOut + rows[:, None] * stride_dot + head * stride_doh + offs_d[None, :], mask=ok, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    if HAS_DLSE:
        # d lse / d s = P, so a gradient on lse enters dS = P * (dP - delta) as -dlse in delta.
        delta -= tl.load(dLse + head * stride_dlse_h + rows * stride_dlse_t, mask=row_ok, other=0.0).to(tl.float32)
    tl.store(Delta + head * total_q + rows, delta, mask=row_ok)


@triton.jit
def probabilities(s, qk_scale, lse):
    """P = exp2(s * scale - lse) from raw scores and lse in log2 units, at most 1 as a
    probability is: at a huge scale (1e10) s * scale and lse agree to fewer bits than the
    exponent needs, and an unclamped exp2 gives inf (then NaN in dS). NaN still propagates."""
    return tl.math.exp2(tl.minimum(s * qk_scale - lse, 0.0, propagate_nan=tl.PropagateNan.ALL))


@triton.jit
def _dkdv_step(dk, dv, k, v, q, do, lse, delta, qk_scale, keep, MASKED: tl.constexpr):
    """Add one query block's contribution to dk, dv; with MASKED only the pairs in ``keep``
    (BLOCK_N, BLOCK_M) count. ``lse`` in log2 units."""
    s_t = dot(k, tl.trans(q), tl.zeros((k.shape[0], q.shape[0]), dtype=tl.float32))
    p_t = probabilities(s_t, qk_scale, lse[None, :])
    if MASKED:
        p_t = tl.where(keep, p_t, 0.0)
    dv = dot(to_dtype(p_t, do.dtype), do, dv)
    dp_t = dot(v, tl.trans(do), tl.zeros((k.shape[0], q.shape[0]), dtype=tl.float32))
    ds_t = p_t * (dp_t - delta[None, :])
    return dot(to_dtype(ds_t, q.dtype), q, dk), dv


@triton.jit
def _dkdv_full_blocks(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qt, stride_dot, offs_d, d_ok, start,
                      count, qk_scale, EVEN_D: tl.constexpr, BLOCK_M: tl.constexpr, NUM_STAGES: tl.constexpr):
    """Add ``count`` query blocks from ``start`` that see every key of the tile: no row or
    mask arithmetic (see :func:`_fwd_full_blocks`), a block's offsets built once."""
    offs_m = tl.arange(0, BLOCK_M)
    offs_q = offs_m[:, None] * stride_qt + offs_d[None, :]
    offs_do = offs_m[:, None] * stride_dot + offs_d[None, :]
    q_block = q_base + start.to(tl.int64) * stride_qt
    do_block = do_base + start.to(tl.int64) * stride_dot
    lse_block = lse_base + start
    delta_block = delta_base + start
    for _ in tl.range(0, count, num_stages=NUM_STAGES):
        if EVEN_D:
            q = tl.load(q_block + offs_q)
            do = tl.load(do_block + offs_do)
        else:
            q = tl.load(q_block + offs_q, mask=d_ok[None, :], other=0.0)
            do = tl.load(do_block + offs_do, mask=d_ok[None, :], other=0.0)
        lse = tl.load(lse_block + offs_m) * LOG2E_C
        delta = tl.load(delta_block + offs_m)
        dk, dv = _dkdv_step(dk, dv, k, v, q, do, lse, delta, qk_scale, 0, False)
        q_block += BLOCK_M * stride_qt
        do_block += BLOCK_M * stride_dot
        lse_block += BLOCK_M
        delta_block += BLOCK_M
    return dk, dv


@triton.jit
def _dkdv_masked_blocks(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qt, stride_dot, offs_n, offs_d,
                        d_ok, first, first_count, second, count, diag, len_q, qk_scale, lower, upper,
                        HAS_LOWER: tl.constexpr, HAS_UPPER: tl.constexpr, BLOCK_M: tl.constexpr,
                        NUM_STAGES: tl.constexpr):
    """Add the contributions of ``count`` query blocks (see block_start) that the mask cuts."""
    for i in tl.range(0, count, num_stages=NUM_STAGES):
        offs_m = block_start(i, first, first_count, second, BLOCK_M) + tl.arange(0, BLOCK_M)
        m_ok = offs_m < len_q
        ok = m_ok[:, None] & d_ok[None, :]
        q = load_rows(q_base, offs_m.to(tl.int64), stride_qt, offs_d, ok)
        do = load_rows(do_base, offs_m.to(tl.int64), stride_dot, offs_d, ok)
        lse = tl.load(lse_base + offs_m, mask=m_ok, other=0.0) * LOG2E_C
        delta = tl.load(delta_base + offs_m, mask=m_ok, other=0.0)
        keep = visible(offs_n, offs_m, diag, lower, upper, HAS_LOWER, HAS_UPPER, len_q)
        dk, dv = _dkdv_step(dk, dv, k, v, q, do, lse, delta, qk_scale, keep, True)
    return dk, dv


@triton.jit
def _dkdv_kernel(
    Q, K, V, dOut, Lse, Delta, dK, dV, cu_seqlens_q, cu_seqlens_k,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh,
    stride_dkt, stride_dkh, stride_dvt, stride_dvh, stride_lse_h,
    tile_end, seq_order, num_seqs, num_kv_heads, group, head_dim, softmax_scale, qk_scale, window_left,
    window_right, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, EVEN_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, NUM_STAGES: tl.constexpr,
):
    # Key blocks first to last: with a causal or left-window mask the first see the most queries.
    # Persistent: each program takes every num_programs-th (tile, head) pair of the schedule,
    # whose real count the device knows (see persistent_programs).
    num_items = tl.load(tile_end + num_seqs - 1) * num_kv_heads
    for item in range(tl.program_id(0), num_items, tl.num_programs(0)):
        slot, kv_head, n_block, q_start, len_q, k_start, len_k = program_tile(
            item, cu_seqlens_q, cu_seqlens_k, tile_end, seq_order, num_seqs, num_kv_heads, BLOCK_N, True, False)
        n_start = n_block * BLOCK_N
        kv_head = kv_head.to(tl.int64)
        offs_n, offs_d, d_ok, key_ok, keys = row_tile(n_start, k_start, len_k, head_dim, BLOCK_N, BLOCK_D)
        k = load_rows(K + kv_head * stride_kh, keys, stride_kt, offs_d, key_ok)
        v = load_rows(V + kv_head * stride_vh, keys, stride_vt, offs_d, key_ok)
        dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
        dv = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
        # Seen from a key, the mask is the forward's with the sides swapped.
        diag = len_q - len_k
        full_lo, n_full, lo, n_before, full_hi, n_masked = visible_range(
            n_start, BLOCK_N, diag, window_right, window_left, HAS_RIGHT, HAS_LEFT, len_q, BLOCK_M)
        q_rows = q_start.to(tl.int64)
        for g in range(0, group):
            head = kv_head * group + g
            q_base = Q + q_rows * stride_qt + head * stride_qh
            do_base = dOut + q_rows * stride_dot + head * stride_doh
            lse_base = Lse + head * stride_lse_h + q_rows
            delta_base = Delta + head * stride_lse_h + q_rows
            dk, dv = _dkdv_full_blocks(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qt, stride_dot,
                                       offs_d, d_ok, full_lo, n_full, qk_scale, EVEN_D, BLOCK_M, NUM_STAGES)
            dk, dv = _dkdv_masked_blocks(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qt, stride_dot,
                                         offs_n, offs_d, d_ok, lo, n_before, full_hi, n_masked, diag, len_q, qk_scale,
                                         window_right, window_left, HAS_RIGHT, HAS_LEFT, BLOCK_M, NUM_STAGES)
        # Every key row of the sequence is written, zeros included (keys no query sees).
        store_rows(dK + kv_head * stride_dkh, keys, stride_dkt, offs_d, dk * softmax_scale, key_ok)
        store_rows(dV + kv_head * stride_dvh, keys, stride_dvt, offs_d, dv, key_ok)


@triton.jit
def _dq_step(dq, q, do, lse, delta, k_t, v_t, qk_scale, keep, MASKED: tl.constexpr):
    """Add one key block's contribution to dq; with MASKED only the pairs in ``keep``
    (BLOCK_M, BLOCK_N) count. ``lse`` in log2 units."""
    s = dot(q, k_t, tl.zeros((q.shape[0], k_t.shape[1]), dtype=tl.float32))
    p = probabilities(s, qk_scale, lse[:, None])
    if MASKED:
        p = tl.where(keep, p, 0.0)
    dp = dot(do, v_t, tl.zeros((q.shape[0], k_t.shape[1]), dtype=tl.float32))
    ds = p * (dp - delta[:, None])
    return dot(to_dtype(ds, k_t.dtype), tl.trans(k_t), dq)


@triton.jit
def _dq_full_blocks(dq, q, do, lse, delta, k_base, v_base, stride_kt, stride_vt, offs_d, d_ok, start, count, qk_scale,
                    EVEN_D: tl.constexpr, BLOCK_N: tl.constexpr, NUM_STAGES: tl.constexpr):
    """Add ``count`` key blocks from ``start`` that every query row sees (see
    :func:`_fwd_full_blocks`)."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_k = offs_n[None, :] * stride_kt + offs_d[:, None]
    offs_v = offs_n[None, :] * stride_vt + offs_d[:, None]
    k_block = k_base + start.to(tl.int64) * stride_kt
    v_block = v_base + start.to(tl.int64) * stride_vt
    for _ in tl.range(0, count, num_stages=NUM_STAGES):
        if EVEN_D:
            k_t = tl.load(k_block + offs_k)
            v_t = tl.load(v_block + offs_v)
        else:
            k_t = tl.load(k_block + offs_k, mask=d_ok[:, None], other=0.0)
            v_t = tl.load(v_block + offs_v, mask=d_ok[:, None], other=0.0)
        dq = _dq_step(dq, q, do, lse, delta, k_t, v_t, qk_scale, 0, False)
        k_block += BLOCK_N * stride_kt
        v_block += BLOCK_N * stride_vt
    return dq


@triton.jit
def _dq_masked_blocks(dq, q, do, lse, delta, k_base, v_base, stride_kt, stride_vt, offs_m, offs_d, d_ok, first,
                      first_count, second, count, diag, len_k, qk_scale, window_left, window_right,
                      HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, BLOCK_N: tl.constexpr,
                      NUM_STAGES: tl.constexpr):
    """Add the contributions of ``count`` key blocks (see block_start) that the mask cuts."""
    for i in tl.range(0, count, num_stages=NUM_STAGES):
        offs_n = block_start(i, first, first_count, second, BLOCK_N) + tl.arange(0, BLOCK_N)
        key_ok = d_ok[:, None] & (offs_n < len_k)[None, :]
        k_t = tl.load(k_base + offs_n[None, :].to(tl.int64) * stride_kt + offs_d[:, None], mask=key_ok, other=0.0)
        v_t = tl.load(v_base + offs_n[None, :].to(tl.int64) * stride_vt + offs_d[:, None], mask=key_ok, other=0.0)
        keep = visible(offs_m, offs_n, diag, window_left, window_right, HAS_LEFT, HAS_RIGHT, len_k)
        dq = _dq_step(dq, q, do, lse, delta, k_t, v_t, qk_scale, keep, True)
    return dq


@triton.jit
def _dq_kernel(
    Q, K, V, dOut, Lse, Delta, dQ, cu_seqlens_q, cu_seqlens_k,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh,
    stride_dqt, stride_dqh, stride_lse_h,
    tile_end, seq_order, num_seqs, num_heads, group, head_dim, softmax_scale, qk_scale, window_left, window_right,
    HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, EVEN_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, NUM_STAGES: tl.constexpr,
):
    # Query blocks last to first: with a causal or right-window mask the last see the most keys.
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
        m_ok = offs_m < len_q
        do = load_rows(dOut + head * stride_doh, rows, stride_dot, offs_d, row_ok)
        lse = tl.load(Lse + head * stride_lse_h + rows, mask=m_ok, other=0.0) * LOG2E_C
        delta = tl.load(Delta + head * stride_lse_h + rows, mask=m_ok, other=0.0)
        dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
        full_lo, n_full, lo, n_before, full_hi, n_masked = visible_range(
            m_start, BLOCK_M, diag, window_left, window_right, HAS_LEFT, HAS_RIGHT, len_k, BLOCK_N)
        dq = _dq_full_blocks(dq, q, do, lse, delta, k_base, v_base, stride_kt, stride_vt, offs_d, d_ok, full_lo, n_full,
                             qk_scale, EVEN_D, BLOCK_N, NUM_STAGES)
        dq = _dq_masked_blocks(dq, q, do, lse, delta, k_base, v_base, stride_kt, stride_vt, offs_m, offs_d, d_ok, lo,
                               n_before, full_hi, n_masked, diag, len_k, qk_scale, window_left, window_right, HAS_LEFT,
                               HAS_RIGHT, BLOCK_N, NUM_STAGES)
        store_rows(dQ + head * stride_dqh, rows, stride_dqt, offs_d, dq * softmax_scale, row_ok)


def bwd_config(head_dim: int, dtype: torch.dtype, *, interpret: bool = INTERPRET) -> dict:
    """Tiles of the two backward kernels: {"dkdv": ..., "dq": ...}, each with BLOCK_M
    queries, BLOCK_N keys, NUM_STAGES and num_warps (see :func:`fwd_config` for the choices)."""
    if interpret:
        tile = dict(BLOCK_M=16, BLOCK_N=16, NUM_STAGES=1, num_warps=4)
        return dict(dkdv=tile, dq=tile)
    if dtype == torch.float32:
        tile = dict(BLOCK_M=32, BLOCK_N=32, NUM_STAGES=2, num_warps=4) if head_dim <= 128 else \
            dict(BLOCK_M=16, BLOCK_N=32, NUM_STAGES=1, num_warps=4)
        return dict(dkdv=tile, dq=dict(tile, BLOCK_M=tile["BLOCK_N"], BLOCK_N=tile["BLOCK_M"]))
    if head_dim <= 64:
        # dK/dV on 64 x 64 tiles, 2 stages: no spills in its loop with Triton 3.6 to 3.9 (32 x 128
        # with 3 stages spills 7 instructions there under Triton 3.6) at the same count per pair.
        # dQ on 128 x 64 tiles: 0.25 warp-instructions per pair in its loop on sm_90, where
        # 128 x 32 took 0.33 (static proxy).
        return dict(dkdv=dict(BLOCK_M=64, BLOCK_N=64, NUM_STAGES=2, num_warps=4),
                    dq=dict(BLOCK_M=128, BLOCK_N=64, NUM_STAGES=3, num_warps=4))
    if head_dim <= 128:
        return dict(dkdv=dict(BLOCK_M=32, BLOCK_N=64, NUM_STAGES=2, num_warps=8),
                    dq=dict(BLOCK_M=64, BLOCK_N=32, NUM_STAGES=2, num_warps=8))
    # D=256: 8 warps share the dk / dv accumulators of the dK/dV kernel.
    return dict(dkdv=dict(BLOCK_M=16, BLOCK_N=32, NUM_STAGES=2, num_warps=8),
                dq=dict(BLOCK_M=32, BLOCK_N=16, NUM_STAGES=2, num_warps=4))


def backward(dout, q, k, v, out, lse, dlse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale,
             window_left, window_right, *, config=None):
    """Launch the three backward kernels.

    Args:
        dout: (total_q, Hq, D) gradient of out; q, k, v, out, lse as the forward used them;
            dlse: (Hq, total_q) gradient of lse, or None.
        window_left, window_right: mask bounds with causal folded in (-1 = unbounded); a side
            that cuts no key counts as -1 (:func:`reachable_window`).
        config: override of :func:`bwd_config`.

    Returns dq (total_q, Hq, D), dk, dv (total_k, Hkv, D) in the inputs' dtypes.
    """
    dout, q, k, v, out = (last_dim_contiguous(x) for x in (dout, q, k, v, out))
    window_left, window_right = reachable_window(window_left, window_right, max_seqlen_q, max_seqlen_k)
    total_q, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    dq, dk, dv = q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)
    batch = cu_seqlens_q.numel() - 1
    if batch == 0 or (total_q == 0 and k.shape[0] == 0):
        return dq, dk, dv
    cfg = config or bwd_config(head_dim, q.dtype)
    block_d = head_block(head_dim)
    lse = lse.contiguous()
    cu_seqlens_q, cu_seqlens_k = cu_seqlens_q.contiguous(), cu_seqlens_k.contiguous()
    delta = torch.empty((num_heads, total_q), dtype=torch.float32, device=q.device)
    if total_q:
        if num_heads > 65535:
            raise ValueError(f"adaptkern.varlen_attention: the backward supports up to 65535 heads, got {num_heads}")
        dlse_arg = dlse if dlse is not None else delta
        _preprocess_kernel[(triton.cdiv(total_q, 64), num_heads)](
            out, dout, dlse_arg, delta, out.stride(0), out.stride(1), dout.stride(0), dout.stride(1),
            dlse_arg.stride(0), dlse_arg.stride(1), total_q, head_dim, HAS_DLSE=dlse is not None, BLOCK_M=64,
            BLOCK_D=block_d,
        )
    qk_scale = softmax_scale * LOG2E
    sms = multiprocessors(q.device)
    common = dict(HAS_LEFT=window_left >= 0, HAS_RIGHT=window_right >= 0, EVEN_D=head_dim == block_d, BLOCK_D=block_d)
    if k.shape[0] and max_seqlen_k:
        seq_order, tile_end, tiles = tile_schedule(cu_seqlens_k, cu_seqlens_q, cfg["dkdv"]["BLOCK_N"], max_seqlen_k,
                                                   k.shape[0])
        check_grid(tiles * num_kv_heads, "the dK/dV backward")
        _dkdv_kernel[(persistent_programs(tiles * num_kv_heads, sms),)](
            q, k, v, dout, lse, delta, dk, dv, cu_seqlens_q, cu_seqlens_k,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), dout.stride(0),
            dout.stride(1), dk.stride(0), dk.stride(1), dv.stride(0), dv.stride(1), lse.stride(0),
            tile_end, seq_order, batch, num_kv_heads, num_heads // num_kv_heads, head_dim, softmax_scale, qk_scale,
            window_left, window_right, **common, **cfg["dkdv"],
        )
    if total_q and max_seqlen_q:
        seq_order, tile_end, tiles = tile_schedule(cu_seqlens_q, cu_seqlens_k, cfg["dq"]["BLOCK_M"], max_seqlen_q,
                                                   total_q)
        check_grid(tiles * num_heads, "the dQ backward")
        _dq_kernel[(persistent_programs(tiles * num_heads, sms),)](
            q, k, v, dout, lse, delta, dq, cu_seqlens_q, cu_seqlens_k,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), dout.stride(0),
            dout.stride(1), dq.stride(0), dq.stride(1), lse.stride(0),
            tile_end, seq_order, batch, num_heads, num_heads // num_kv_heads, head_dim, softmax_scale, qk_scale,
            window_left, window_right, **common, **cfg["dq"],
        )
    return dq, dk, dv
