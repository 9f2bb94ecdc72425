"""``ak.varlen_attn``: PyTorch's name and convention for variable-length attention
(``torch.nn.attention.varlen.varlen_attn``, torch 2.13), on adaptkern's varlen_attention.

Code written against torch's API switches by its import alone; unlike torch's (CUDA only,
flash-attention kernels), this one runs on every backend, CPU included, in float32/64 too.
"""

from typing import NamedTuple, Optional, Tuple

import torch

from .._checks import check_bool
from .varlen_attention import varlen_attention

_OP = "adaptkern.varlen_attn"

try:  # torch's own request type where it exists, so either can be passed
    from torch.nn.attention.varlen import AuxRequest
except ImportError:  # pragma: no cover - torch without varlen_attn
    class AuxRequest(NamedTuple):
        """Which auxiliary outputs varlen_attn returns: ``lse`` (log-sum-exp)."""

        lse: bool = False


def varlen_attn(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu_seq_q: torch.Tensor,
                cu_seq_k: Optional[torch.Tensor], max_q: int, max_k: int, *, return_aux=None,
                scale: Optional[float] = None, window_size: Tuple[int, int] = (-1, -1), enable_gqa: bool = False,
                seqused_k: Optional[torch.Tensor] = None, block_table: Optional[torch.Tensor] = None,
                num_splits: Optional[int] = None, backend: Optional[str] = None):
    """Variable-length attention with torch.nn.attention.varlen.varlen_attn's arguments.

    Args:
        query: (T_q, H_q, D); key, value: (T_k, H_kv, D).
        cu_seq_q, cu_seq_k: int32 (N+1,) cumulative sequence lengths.
        max_q, max_k: longest query / key sequence.
        return_aux: an ``AuxRequest`` (torch's or ``ak.AuxRequest``); with ``lse=True`` the
            result is ``(out, lse)``, lse (T_q, H_q) float32 (natural log).
        scale: softmax scale, default D ** -0.5.
        window_size: (left, right), -1 unbounded: (-1, -1) full attention, (-1, 0) causal,
            (W, 0) causal with a sliding window; bottom-right aligned when T_q != T_k per
            sequence (query i of Lq sees key j iff i + Lk - Lq - left <= j <= i + Lk - Lq + right).
        enable_gqa: must be True when H_q != H_kv (H_q % H_kv == 0).
        seqused_k, block_table, num_splits: paged / split-KV inference options of torch's
            flash kernel: NotImplementedError if given.
        backend: adaptkern's backend choice (None: by device).

    Returns out (T_q, H_q, D) in query's dtype, or (out, lse) as above. Gradients flow to
    query, key and value.
    """
    for name, given in (("seqused_k", seqused_k), ("block_table", block_table), ("num_splits", num_splits)):
        if given is not None:
            raise NotImplementedError(f"{_OP}: {name} (paged / split-KV inference) is not supported")
    check_bool(_OP, "enable_gqa", enable_gqa)
    if cu_seq_k is None:
        raise NotImplementedError(f"{_OP}: cu_seq_k=None (torch's paged-KV form) is not supported; pass cu_seq_k")
    if isinstance(query, torch.Tensor) and isinstance(key, torch.Tensor) and query.ndim == key.ndim == 3:
        heads_q, heads_kv = query.shape[1], key.shape[1]
        if heads_q != heads_kv and not enable_gqa:
            raise ValueError(f"{_OP}: query has H_q={heads_q} heads and key H_kv={heads_kv}; set enable_gqa=True "
                             "for grouped-query attention")
    if not isinstance(window_size, (tuple, list)) or len(window_size) != 2:
        raise ValueError(f"{_OP}: window_size must be a pair (left, right), got {window_size!r}")
    window = tuple(window_size)
    causal = window == (-1, 0)
    want_lse = return_aux is not None and bool(getattr(return_aux, "lse", False))
    result = varlen_attention(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, softmax_scale=scale,
                              causal=causal, window_size=(-1, -1) if causal else window, return_lse=want_lse,
                              backend=backend)
    if want_lse:
        out, lse = result
        return out, lse.transpose(0, 1)
    return result
