"""A packed causal language model whose context length may change between steps: sequences
of any lengths share one (T,) token tensor; rotary positions restart in every sequence."""

from typing import Optional

import torch
from torch import nn

from .._checks import check_int
from .transformer import Block, segment_ids


class PackedLM(nn.Module):
    """Decoder-only LM over packed sequences.

    Rotary position embeddings (no learned positions), so any context length works and a
    context switch changes nothing but the packing.
    """

    def __init__(self, *, vocab_size: int, dim: int = 64, depth: int = 2, num_heads: int = 4,
                 mlp_ratio: float = 4.0, backend: Optional[str] = None):
        super().__init__()
        check_int("PackedLM", "vocab_size", vocab_size)
        check_int("PackedLM", "depth", depth, minimum=0)
        self.config = dict(vocab_size=vocab_size, dim=dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio)
        self.backend = backend
        self.embed = nn.Embedding(vocab_size, dim)
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio, causal=True, rope=True, backend=backend) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size, bias=False)

    def forward(self, tokens: torch.Tensor, cu_seqlens: Optional[torch.Tensor] = None,
                max_seqlen: Optional[int] = None) -> torch.Tensor:
        """Logits for every position.

        tokens: (T,) int64 of S packed sequences with cu_seqlens int32 (S+1,) and
            max_seqlen -> logits (T, V); or (B, L) int64, B sequences of L tokens each
            (no cu_seqlens) -> logits (B, L, V), run as one packed batch.
        """
        if tokens.dim() == 2:
            if cu_seqlens is not None:
                raise ValueError("PackedLM: tokens of shape (B, L) take no cu_seqlens (pass tokens (T,) to pack)")
            batch, length = tokens.shape
            positions = torch.arange(length, device=tokens.device).repeat(batch)
            logits = self._run(tokens.reshape(-1), None, length, positions, uniform=length)
            return logits.view(batch, length, -1)
        if tokens.dim() != 1 or cu_seqlens is None or max_seqlen is None:
            raise ValueError(f"PackedLM: tokens must be (T,) with cu_seqlens and max_seqlen, or (B, L); got shape "
                             f"{tuple(tokens.shape)}, cu_seqlens {'None' if cu_seqlens is None else 'given'}")
        total = tokens.shape[0]
        positions = torch.arange(total, device=tokens.device) - cu_seqlens.to(torch.int64)[
            segment_ids(cu_seqlens, total)]
        return self._run(tokens, cu_seqlens, max_seqlen, positions, uniform=None)

    def _run(self, tokens, cu_seqlens, max_seqlen, positions, uniform):
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x, cu_seqlens, max_seqlen, positions, uniform_seqlen=uniform)
        return self.head(self.norm(x))
