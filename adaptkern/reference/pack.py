"""Reference packing: padded (B, L, R) <-> packed (total, R) through a flat row index."""

import torch


def packed_row_index(cu_seqlens: torch.Tensor, total: int, padded_len: int) -> torch.Tensor:
    """For each packed row t, its flat row b * padded_len + r in the padded layout (int64)."""
    cu = cu_seqlens.to(torch.int64)
    t = torch.arange(total, device=cu.device)
    seq = torch.searchsorted(cu, t, right=True) - 1
    return seq * padded_len + (t - cu[seq])


def pack_padded(padded: torch.Tensor, cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    batch, padded_len, row = padded.shape
    index = packed_row_index(cu_seqlens, total, padded_len)
    return padded.reshape(batch * padded_len, row).index_select(0, index)


def unpack_padded(packed: torch.Tensor, cu_seqlens: torch.Tensor, padded_len: int) -> torch.Tensor:
    batch = cu_seqlens.numel() - 1
    index = packed_row_index(cu_seqlens, packed.shape[0], padded_len)
    padded = packed.new_zeros((batch * padded_len, packed.shape[1]))
    padded.index_copy_(0, index, packed)
    return padded.reshape(batch, padded_len, packed.shape[1])
