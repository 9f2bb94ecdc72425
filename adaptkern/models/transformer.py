"""Pre-norm transformer blocks over packed sequences (tokens (T, D) + cu_seqlens)."""

from typing import Optional

import torch
from torch import nn

from ..ops.varlen_attention import varlen_attention


def segment_ids(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """Sequence index of each of the ``total`` packed rows (int64 (T,)), without a host sync."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).to(torch.int64)
    seqs = torch.arange(lengths.numel(), device=cu_seqlens.device)
    return torch.repeat_interleave(seqs, lengths, output_size=total)


def rotate_half_rope(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding of x (T, H, Dh) at integer positions (T,) (Su et al. 2021),
    computed in float32 and returned in x's dtype."""
    half = x.shape[-1] // 2
    freqs = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = positions.to(torch.float32)[:, None] * freqs[None, :]
    cos, sin = angles.cos()[:, None, :], angles.sin()[:, None, :]
    x1, x2 = x[..., :half].float(), x[..., half:2 * half].float()
    rotated = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos, x[..., 2 * half:].float()], dim=-1)
    return rotated.to(x.dtype)


class VarlenSelfAttention(nn.Module):
    """Multi-head self-attention over packed sequences through ``adaptkern.varlen_attention``.

    ``forward(x, cu_seqlens, max_seqlen, positions=None, uniform_seqlen=None)``: when the
    caller knows from Python-side shapes that all S sequences have the same length L
    (``uniform_seqlen=L``, T = S*L), the batch runs as ONE sequence of L tokens with S*H
    heads: heads are independent, so folding the sequence index into the head axis gives
    the same outputs, the same allowed (query, key) pairs and so the same FLOP count
    (4*(S*H)*D*L^2 = S * 4*H*D*L^2), in one op call instead of a loop over S sequences
    (the CPU reference path iterates over sequences in Python).
    """

    def __init__(self, dim: int, num_heads: int, *, causal: bool = False, rope: bool = False,
                 backend: Optional[str] = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"VarlenSelfAttention: dim={dim} must be divisible by num_heads={num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.causal, self.rope, self.backend = causal, rope, backend
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                positions: Optional[torch.Tensor] = None, uniform_seqlen: Optional[int] = None) -> torch.Tensor:
        """x (T, dim) packed; cu_seqlens int32 (S+1,); positions (T,) for RoPE. -> (T, dim)."""
        total = x.shape[0]
        q, k, v = self.qkv(x).view(total, 3, self.num_heads, self.head_dim).unbind(1)
        if self.rope:
            q, k = rotate_half_rope(q, positions), rotate_half_rope(k, positions)
        if uniform_seqlen and total:
            out = self._folded(q, k, v, uniform_seqlen)
        else:
            out = varlen_attention(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, causal=self.causal,
                                   backend=self.backend)
        return self.proj(out.reshape(total, -1))

    def _folded(self, q, k, v, length):
        total, heads, dh = q.shape
        if total % length:
            raise ValueError(f"VarlenSelfAttention: uniform_seqlen={length} does not divide the {total} tokens")
        seqs = total // length

        def fold(t):  # (S*L, H, Dh) -> (L, S*H, Dh)
            return t.reshape(seqs, length, heads, dh).transpose(0, 1).reshape(length, seqs * heads, dh)

        cu = torch.arange(2, dtype=torch.int32, device=q.device) * length  # built on device: no host copy
        out = varlen_attention(fold(q), fold(k), fold(v), cu, cu, length, length, causal=self.causal,
                               backend=self.backend)
        return out.reshape(length, seqs, heads, dh).transpose(0, 1).reshape(total, heads, dh)


class Block(nn.Module):
    """x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, **attn_kwargs):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = VarlenSelfAttention(dim, num_heads, **attn_kwargs)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x, cu_seqlens, max_seqlen, positions=None, uniform_seqlen=None):
        x = x + self.attn(self.norm1(x), cu_seqlens, max_seqlen, positions, uniform_seqlen)
        return x + self.mlp(self.norm2(x))
