"""Reference variable-length attention: exact softmax attention, one sequence at a time.

The spec of ``adaptkern.varlen_attention``, its CPU path and the tests' oracle. Inputs are
packed: q (total_q, Hq, D), k / v (total_k, Hkv, D) and int32 cu_seqlens (S+1,). Reading
cu_seqlens on the host is this path's one sync (documented: the reference is the CPU path).

Mask (DESIGN.md): with ``diag = Lk - Lq``, query i may see key j iff
``i + diag - window_left <= j <= i + diag + window_right`` where -1 leaves a side unbounded
and causal bounds the right side at 0. A row that sees no key gets out 0, lse -inf.
"""

import torch


def effective_window(causal: bool, window_left: int, window_right: int):
    """(left, right) bounds with causal folded into the right one; -1 means unbounded."""
    return window_left, (0 if causal else window_right)


def allowed_mask(len_q: int, len_k: int, window_left: int, window_right: int, device=None) -> torch.Tensor:
    """bool (len_q, len_k): which keys each query may see (causal already folded into the window)."""
    i = torch.arange(len_q, device=device)[:, None]
    j = torch.arange(len_k, device=device)[None, :]
    rel = j - (i + (len_k - len_q))  # key position relative to the query's diagonal
    mask = torch.ones(len_q, len_k, dtype=torch.bool, device=device)
    if window_left >= 0:
        mask &= rel >= -window_left
    if window_right >= 0:
        mask &= rel <= window_right
    return mask


def _compute_dtype(dtype, upcast):
    if not upcast or dtype == torch.float64:
        return dtype
    return torch.float32


def _sequences(cu_seqlens_q, cu_seqlens_k):
    cu_q = cu_seqlens_q.detach().to("cpu", torch.int64).tolist()
    cu_k = cu_seqlens_k.detach().to("cpu", torch.int64).tolist()
    return zip(cu_q[:-1], cu_q[1:], cu_k[:-1], cu_k[1:])


def _heads_first(x, group, dtype):
    """(L, H, D) -> (H * group, L, D): each kv head repeated for the query heads it serves."""
    return x.to(dtype).transpose(0, 1).repeat_interleave(group, dim=0)


def varlen_attention_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale, causal=False,
                             window_left=-1, window_right=-1, *, upcast=True):
    """Attention over packed sequences; differentiable with plain autograd.

    Args:
        q: (total_q, Hq, D); k, v: (total_k, Hkv, D), same dtype, Hq % Hkv == 0.
        cu_seqlens_q, cu_seqlens_k: int32 (S+1,) cumulative lengths.
        softmax_scale: multiplies q @ k^T before the softmax.
        upcast: compute in float32 (float64 stays float64); False computes in q's dtype,
            which is what the tests use as "plain PyTorch in the same dtype".

    Returns out (total_q, Hq, D) in q's dtype and lse (Hq, total_q) in float32
    (float64 for float64 inputs), the natural-log sum of exp(scaled scores).
    """
    total_q, num_heads, _ = q.shape
    group = num_heads // k.shape[1]
    compute = _compute_dtype(q.dtype, upcast)
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    left, right = effective_window(causal, window_left, window_right)
    outs, lses = [], []
    for q0, q1, k0, k1 in _sequences(cu_seqlens_q, cu_seqlens_k):
        qs = q[q0:q1].to(compute).transpose(0, 1)  # (Hq, Lq, D)
        ks, vs = _heads_first(k[k0:k1], group, compute), _heads_first(v[k0:k1], group, compute)
        mask = allowed_mask(q1 - q0, k1 - k0, left, right, device=q.device)
        scores = torch.matmul(qs, ks.transpose(1, 2)) * softmax_scale
        scores = scores.masked_fill(~mask, float("-inf"))
        row_max = scores.amax(dim=-1, keepdim=True).detach() if scores.shape[-1] else scores.sum(-1, keepdim=True)
        # Rows that see no key have max -inf; shifting them by 0 keeps exp(-inf) = 0, not NaN.
        row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
        weights = torch.exp(scores - row_max)
        denom = weights.sum(dim=-1, keepdim=True)
        seen = denom > 0
        safe_denom = torch.where(seen, denom, torch.ones_like(denom))
        out = torch.matmul(weights / safe_denom, vs)  # (Hq, Lq, D)
        lse = torch.where(seen, torch.log(safe_denom) + row_max, torch.full_like(denom, float("-inf")))
        outs.append(out.transpose(0, 1).to(q.dtype))
        lses.append(lse.squeeze(-1).to(lse_dtype))
    if not outs:
        return q.new_empty(q.shape), torch.empty(num_heads, total_q, dtype=lse_dtype, device=q.device)
    return torch.cat(outs, 0), torch.cat(lses, 1)


def varlen_attention_backward(dout, q, k, v, out, lse, dlse, cu_seqlens_q, cu_seqlens_k, softmax_scale,
                              causal=False, window_left=-1, window_right=-1):
    """Gradients of :func:`varlen_attention_forward` from its saved out and lse.

    Args:
        dout: (total_q, Hq, D) gradient of out; dlse: (Hq, total_q) gradient of lse or None.
        q, k, v, out, lse: as the forward took and returned them.

    Returns dq (total_q, Hq, D), dk, dv (total_k, Hkv, D) in the inputs' dtypes. With
    P = softmax probabilities, delta = rowsum(dout * out) - dlse:
    dv = P^T dout, dS = P * (dout v^T - delta), dq = scale dS k, dk = scale dS^T q;
    dk / dv are summed over the query heads sharing a kv head.
    """
    num_heads, num_kv_heads = q.shape[1], k.shape[1]
    group = num_heads // num_kv_heads
    compute = _compute_dtype(q.dtype, True)
    left, right = effective_window(causal, window_left, window_right)
    dq = torch.zeros(q.shape, dtype=compute, device=q.device)
    dk = torch.zeros(k.shape, dtype=compute, device=q.device)
    dv = torch.zeros(v.shape, dtype=compute, device=q.device)
    for q0, q1, k0, k1 in _sequences(cu_seqlens_q, cu_seqlens_k):
        qs = q[q0:q1].to(compute).transpose(0, 1)
        dos = dout[q0:q1].to(compute).transpose(0, 1)
        ks, vs = _heads_first(k[k0:k1], group, compute), _heads_first(v[k0:k1], group, compute)
        row_lse = lse[:, q0:q1].to(compute)[..., None]
        mask = allowed_mask(q1 - q0, k1 - k0, left, right, device=q.device)
        scores = torch.matmul(qs, ks.transpose(1, 2)) * softmax_scale
        # Masked entries and rows that see nothing (lse -inf) have probability exactly 0.
        probs = torch.where(mask, torch.exp(scores - torch.where(torch.isfinite(row_lse), row_lse, 0)), 0)
        delta = (dos * out[q0:q1].to(compute).transpose(0, 1)).sum(-1, keepdim=True)
        if dlse is not None:
            delta = delta - dlse[:, q0:q1].to(compute)[..., None]
        dscores = probs * (torch.matmul(dos, vs.transpose(1, 2)) - delta)
        dq[q0:q1] = (torch.matmul(dscores, ks) * softmax_scale).transpose(0, 1)
        grouped = (num_kv_heads, group, k1 - k0, k.shape[2])
        dk[k0:k1] = (torch.matmul(dscores.transpose(1, 2), qs) * softmax_scale).reshape(grouped).sum(1).transpose(0, 1)
        dv[k0:k1] = torch.matmul(probs.transpose(1, 2), dos).reshape(grouped).sum(1).transpose(0, 1)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)
