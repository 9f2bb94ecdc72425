"""Prefix tokens (class / register tokens) for packed sequences."""

from typing import Optional

import torch

from .._checks import check_cu_seqlens, check_int, check_tensor
from ..ops.pack import Packed

_OP = "adaptkern.prepend_prefix_tokens"


def prepend_prefix_tokens(tokens: torch.Tensor, cu_seqlens: torch.Tensor, prefix: torch.Tensor,
                          max_seqlen: Optional[int] = None) -> Packed:
    """Put ``prefix`` tokens in front of every packed sequence.

    Args:
        tokens: (T, D) packed tokens.
        cu_seqlens: int32 (S+1,) of tokens' sequences (zero-length ones allowed).
        prefix: (P, D), the same P tokens for every sequence (timm's class + register tokens),
            or (S, P, D), per sequence. Its dtype is cast to tokens'.
        max_seqlen: tokens' longest sequence, if known: the result's is max_seqlen + P.
            Without it the result's max_seqlen is read from cu_seqlens (one host sync).

    Returns Packed(data (T + S*P, D), cu_seqlens int32 (S+1,), max_seqlen). Differentiable
    with respect to tokens and prefix; no host sync when max_seqlen is given.
    """
    check_tensor(_OP, "tokens", tokens, ndim=2)
    num_seqs = check_cu_seqlens(_OP, "cu_seqlens", cu_seqlens, total=tokens.shape[0], total_name="tokens.shape[0]",
                                device=tokens.device)
    check_tensor(_OP, "prefix", prefix, device=tokens.device)
    if prefix.ndim == 2:
        prefix = prefix.expand(num_seqs, *prefix.shape)
    if prefix.ndim != 3 or prefix.shape[0] != num_seqs or prefix.shape[2] != tokens.shape[1]:
        raise ValueError(f"{_OP}: prefix must be (P, D) or (S, P, D) with S={num_seqs}, D={tokens.shape[1]}, got "
                         f"{tuple(prefix.shape)}")
    num_prefix, dim = prefix.shape[1], tokens.shape[1]
    total = tokens.shape[0]
    cu = cu_seqlens.to(torch.int64)
    index = torch.arange(total, device=tokens.device)
    sequence = torch.searchsorted(cu[1:], index, right=True)  # each token's sequence
    new_cu = cu + num_prefix * torch.arange(num_seqs + 1, device=tokens.device)
    token_rows = index + num_prefix * (sequence + 1)
    prefix_rows = (new_cu[:-1, None] + torch.arange(num_prefix, device=tokens.device)).reshape(-1)
    out = tokens.new_zeros((total + num_seqs * num_prefix, dim))
    out = out.index_copy(0, token_rows, tokens).index_copy(0, prefix_rows,
                                                           prefix.reshape(-1, dim).to(tokens.dtype))
    if max_seqlen is None:
        max_seqlen = int(cu.diff().max()) if num_seqs else 0
    else:
        max_seqlen = check_int(_OP, "max_seqlen", max_seqlen, minimum=0)
    return Packed(out, new_cu.to(torch.int32), max_seqlen + num_prefix if num_seqs else 0)
