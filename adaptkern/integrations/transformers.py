"""adaptkern's varlen attention as a transformers attention implementation
(``pip install adaptkern[transformers]``).

    import adaptkern as ak
    ak.integrations.transformers.register()
    model = AutoModelForCausalLM.from_pretrained(name, attn_implementation="adaptkern")

Every attention layer then calls ``ak.varlen_attention``. The sequences it sees are, in
this order of precedence (as transformers' flash_attention_2 path reads them):

1. ``cu_seq_lens_q`` / ``cu_seq_lens_k`` / ``max_length_q`` / ``max_length_k`` keyword
   arguments (transformers' padding-free collator, ``DataCollatorWithFlattening``);
2. a 2-D padding ``attention_mask`` (B, L_k): the padding is dropped, never computed;
3. ``position_ids`` of one packed row that restart (at their minimum, usually 0) where a new
   sequence begins;
4. otherwise every batch row is one sequence.

Cases 2 and 3 read the sequence lengths on the host (one sync per attention call, as
transformers' own flash-attention path does); case 1 with Python-int max lengths and
case 4 need none. Causal masks are bottom-right aligned (a query block at the end of its keys, as with a KV
cache), sliding windows map to ``window_size``, GQA/MQA run without repeating K/V.
Dropout in training, ``softcap`` and attention sinks raise NotImplementedError.
"""

import torch

from ..ops.varlen_attention import varlen_attention

NAME = "adaptkern"
_OP = "adaptkern.integrations.transformers"


def _cu_from_lengths(lengths):
    cu = torch.zeros(lengths.shape[0] + 1, dtype=torch.int32, device=lengths.device)
    cu[1:] = torch.cumsum(lengths, 0)
    return cu


def _sequences(batch, len_q, len_k, device, attention_mask, kwargs):
    """(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, rows_q, rows_k): rows_* are
    the flattened (B*L) rows that are real tokens, or None when all are."""
    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    max_q, max_k = kwargs.get("max_length_q"), kwargs.get("max_length_k")
    if cu_q is not None and cu_k is not None:
        max_q = int(max_q) if max_q is not None else int(cu_q.diff().max())
        max_k = int(max_k) if max_k is not None else int(cu_k.diff().max())
        return cu_q.to(torch.int32), cu_k.to(torch.int32), max_q, max_k, None, None
    if attention_mask is not None:
        if attention_mask.ndim != 2:
            raise ValueError(f"{_OP}: attention_mask must be a 2-D padding mask (B, L_k) (register() sets "
                             f"transformers to build one), got shape {tuple(attention_mask.shape)}")
        keep_k = attention_mask[:, -len_k:].bool()
        keep_q = keep_k[:, -len_q:]
        lengths_q, lengths_k = keep_q.sum(1, dtype=torch.int32), keep_k.sum(1, dtype=torch.int32)
        rows_q = torch.nonzero(keep_q.reshape(-1)).squeeze(1)
        rows_k = torch.nonzero(keep_k.reshape(-1)).squeeze(1)
        return (_cu_from_lengths(lengths_q), _cu_from_lengths(lengths_k), int(lengths_q.max()),
                int(lengths_k.max()), rows_q, rows_k)
    position_ids = kwargs.get("position_ids")
    if position_ids is not None and batch == 1 and len_q == len_k and len_q > 1:
        position_ids = position_ids.reshape(-1)[-len_q:]
        starts = torch.nonzero(position_ids == position_ids.min()).squeeze(1).to(torch.int32)
        cu = torch.cat([starts, torch.tensor([len_q], dtype=torch.int32, device=device)])
        if int(cu[0]) != 0:
            cu = torch.cat([torch.zeros(1, dtype=torch.int32, device=device), cu])
        max_len = int(cu.diff().max())
        return cu, cu, max_len, max_len, None, None
    cu_q = torch.arange(batch + 1, dtype=torch.int32, device=device) * len_q
    cu_k = torch.arange(batch + 1, dtype=torch.int32, device=device) * len_k
    return cu_q, cu_k, len_q, len_k, None, None


def attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                      sliding_window=None, softcap=None, is_causal=None, **kwargs):
    """transformers' attention-function signature: query (B, Hq, L_q, D), key / value
    (B, Hkv, L_k, D) -> (attn_output (B, L_q, Hq, D), None)."""
    if dropout:
        raise NotImplementedError(f"{_OP}: attention dropout is not supported (set attention_dropout=0)")
    if softcap is not None:
        raise NotImplementedError(f"{_OP}: softcap is not supported")
    if kwargs.get("s_aux") is not None:
        raise NotImplementedError(f"{_OP}: attention sinks (s_aux) are not supported")
    batch, heads, len_q, head_dim = query.shape
    len_k = key.shape[2]
    causal = getattr(module, "is_causal", True) if is_causal is None else bool(is_causal)
    window = (-1, -1) if sliding_window is None else (sliding_window - 1, sliding_window - 1)
    cu_q, cu_k, max_q, max_k, rows_q, rows_k = _sequences(batch, len_q, len_k, query.device, attention_mask, kwargs)
    q = query.transpose(1, 2).reshape(batch * len_q, heads, head_dim)
    k = key.transpose(1, 2).reshape(batch * len_k, key.shape[1], head_dim)
    v = value.transpose(1, 2).reshape(batch * len_k, value.shape[1], value.shape[3])
    if rows_q is not None:
        q, k, v = q[rows_q], k[rows_k], v[rows_k]
    out = varlen_attention(q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale=scaling, causal=causal,
                           window_size=window)
    if rows_q is not None:
        out = out.new_zeros((batch * len_q, heads, out.shape[-1])).index_copy(0, rows_q, out)
    return out.reshape(batch, len_q, heads, out.shape[-1]), None


def register(name: str = NAME) -> str:
    """Register adaptkern's attention with transformers' ``AttentionInterface`` (and the
    padding-mask builder flash_attention_2 uses with ``AttentionMaskInterface``) under
    ``name``; then ``attn_implementation=name`` selects it. Returns the name."""
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"{_OP} needs transformers: pip install 'adaptkern[transformers]' ({err})") from err
    AttentionInterface.register(name, attention_forward)
    AttentionMaskInterface.register(name, flash_attention_mask)
    return name
