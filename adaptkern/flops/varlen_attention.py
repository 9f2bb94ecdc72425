"""Exact FLOPs of variable-length attention, from cu_seqlens and the mask.

Only the (query, key) pairs the mask allows are counted. Per allowed pair and query head
the forward does two multiply-adds per head-dim element (q.k in QK^T, p*v in PV):
4 * D FLOPs. The backward counts 2.5x the forward: five matmuls of that size (QK^T
recomputed, dV, dP, dQ, dK) against the forward's two, the convention flash-attention's
benchmarks (benchmarks/benchmark_flash_attention.py) use for TFLOP/s.
"""

import numbers

import numpy as np
import torch

from .._checks import _check_cu_values, check_int, lengths_from_cu_seqlens
from ..reference.varlen_attention import effective_window

_OP = "adaptkern.flops.attention_flops"


def _lengths(name, cu_seqlens) -> list:
    if isinstance(cu_seqlens, torch.Tensor):
        if cu_seqlens.dim() != 1 or cu_seqlens.dtype.is_floating_point or cu_seqlens.dtype.is_complex:
            raise ValueError(f"{_OP}: {name} must be a 1-D integer tensor, got {cu_seqlens.dtype} "
                             f"of shape {tuple(cu_seqlens.shape)}")
        values = cu_seqlens.detach().to("cpu", torch.int64)  # the one host copy; the checks below read it
    elif isinstance(cu_seqlens, (list, tuple, range, np.ndarray)):
        values = torch.tensor([check_int(_OP, f"{name}[{i}]", v, minimum=0) for i, v in enumerate(cu_seqlens)],
                              dtype=torch.int64)
    else:
        raise TypeError(f"{_OP}: {name} must be a 1-D integer tensor or a list of ints, got "
                        f"{type(cu_seqlens).__name__}")
    if values.dim() != 1 or values.numel() < 1:
        raise ValueError(f"{_OP}: {name} must hold at least one entry (0)")
    _check_cu_values(_OP, name, values, None, None, None, None)
    return lengths_from_cu_seqlens(values)


def check_window(op: str, window_size, causal: bool = False):
    """Validated ``window_size`` as (left, right) ints with ``causal`` folded into right
    (-1 = unbounded side): TypeError for a non-int side or a non-bool causal, ValueError for
    anything else."""
    if not isinstance(causal, (bool, np.bool_)):
        raise TypeError(f"{op}: causal must be a bool, got {type(causal).__name__} {causal!r}")
    if not isinstance(window_size, (tuple, list)) or len(window_size) != 2:
        raise ValueError(f"{op}: window_size must be a pair (left, right), got {window_size!r}")
    for side, value in zip(("left", "right"), window_size):
        if isinstance(value, bool) or not isinstance(value, (numbers.Integral, torch.SymInt)):
            raise TypeError(f"{op}: window_size {side} must be an int, got {type(value).__name__}")
        if value < -1:
            raise ValueError(f"{op}: window_size {side} must be >= -1 (-1 = unbounded), got {value}")
    return effective_window(bool(causal), int(window_size[0]), int(window_size[1]))


def allowed_pairs(lengths_q, lengths_k, *, causal=False, window_size=(-1, -1)) -> int:
    """Number of (query, key) pairs the mask allows, summed over sequences.

    ``lengths_q`` / ``lengths_k``: per-sequence lengths (equal counts). Vectorized over query
    rows: row i of a sequence sees keys [max(0, i+diag-left), min(Lk-1, i+diag+right)],
    diag = Lk - Lq; O(total_q) time and memory, no (Lq, Lk) mask.
    """
    lengths_q = np.asarray(lengths_q, dtype=np.int64)
    lengths_k = np.asarray(lengths_k, dtype=np.int64)
    if lengths_q.shape != lengths_k.shape:
        raise ValueError(f"{_OP}: cu_seqlens_q and cu_seqlens_k describe {lengths_q.size} and "
                         f"{lengths_k.size} sequences; they must describe the same batch")
    left, right = check_window(_OP, window_size, causal)
    if left < 0 and right < 0:
        return int(np.dot(lengths_q, lengths_k))
    seq = np.repeat(np.arange(lengths_q.size), lengths_q)
    starts = np.cumsum(lengths_q) - lengths_q
    row = np.arange(seq.size, dtype=np.int64) - starts[seq]
    len_k = lengths_k[seq]
    centre = row + len_k - lengths_q[seq]  # the key on this row's diagonal
    first = np.maximum(0, centre - left) if left >= 0 else np.zeros_like(centre)
    last = np.minimum(len_k - 1, centre + right) if right >= 0 else len_k - 1
    return int(np.clip(last - first + 1, 0, None).sum())


def attention_flops(cu_seqlens_q, cu_seqlens_k, num_heads, head_dim, *, causal=False, window_size=(-1, -1)) -> int:
    """Forward FLOPs of variable-length attention: 4 * num_heads * head_dim per allowed pair.

    Args:
        cu_seqlens_q, cu_seqlens_k: (S+1,) cumulative lengths (int tensor or list of ints).
        num_heads: query heads Hq (GQA shares kv heads; the work is per query head).
        head_dim: D.
        causal, window_size: the mask, as ``ak.varlen_attention`` takes it.
    """
    for name, value in (("num_heads", num_heads), ("head_dim", head_dim)):
        check_int(_OP, name, value, minimum=0)
    pairs = allowed_pairs(_lengths("cu_seqlens_q", cu_seqlens_q), _lengths("cu_seqlens_k", cu_seqlens_k),
                          causal=causal, window_size=window_size)
    return 4 * int(num_heads) * int(head_dim) * pairs


def attention_backward_flops(cu_seqlens_q, cu_seqlens_k, num_heads, head_dim, *, causal=False,
                             window_size=(-1, -1)) -> int:
    """Backward FLOPs: 2.5x :func:`attention_flops` (exact: the forward count is a multiple of 4)."""
    forward = attention_flops(cu_seqlens_q, cu_seqlens_k, num_heads, head_dim, causal=causal,
                              window_size=window_size)
    return forward * 5 // 2
