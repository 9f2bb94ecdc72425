"""Variable-length attention on CPU tensors.

float32 and float64 run the compiled tiled kernel of :mod:`adaptkern.cpu.native` (every
sequence and head in one parallel call, masked tiles skipped) when it is available. Otherwise,
and for float16 / bfloat16, PyTorch's CPU flash-attention kernel is composed:
sequences are bucketed by (Lq, Lk): each bucket is one batched call of
``aten._scaled_dot_product_flash_attention_for_cpu`` (forward, returns lse) or its
``_backward``. Packed tensors are (total, H, D), which is the kernel's preferred memory
layout (B, L, H, D) seen as (B, H, L, D): a bucket of consecutive sequences is a view.

Mask semantics are the reference's (:mod:`adaptkern.reference.varlen_attention`):
bottom-right causal and sliding windows become an additive mask, except causal with
Lq == Lk, which is the kernel's own ``is_causal`` (it skips masked key blocks of 512). A row
that sees no key gets out 0, lse -inf and zero gradients. GQA reads the kv heads in place
where the kernel supports it (probed once), else repeats them.
"""

import torch

from ..reference.varlen_attention import allowed_mask, effective_window
from . import native

_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default
_flash_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward.default
_PROBED = {}


def native_gqa() -> bool:
    """Whether this torch's CPU flash kernel takes fewer kv heads than query heads (and gets
    the same result as with repeated kv heads); probed once on a tiny input."""
    if "gqa" not in _PROBED:
        generator = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, heads, 3, 8, generator=generator) for heads in (2, 1, 1))
        try:
            grouped = _flash(q, k, v)[0]
            _PROBED["gqa"] = torch.equal(grouped, _flash(q, k.expand(1, 2, 3, 8), v.expand(1, 2, 3, 8))[0])
        except RuntimeError:
            _PROBED["gqa"] = False
    return _PROBED["gqa"]


def buckets(cu_seqlens_q, cu_seqlens_k):
    """{(Lq, Lk): [(q_start, k_start), ...]} over the sequences with Lq > 0 and Lk > 0."""
    cu_q, cu_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    groups = {}
    for q0, q1, k0, k1 in zip(cu_q[:-1], cu_q[1:], cu_k[:-1], cu_k[1:]):
        if q1 > q0 and k1 > k0:
            groups.setdefault((q1 - q0, k1 - k0), []).append((q0, k0))
    return groups


def _split(x, dim, count, length):
    """``x.unflatten(dim, (count, length))`` as a plain view (Tensor.unflatten's Python
    wrapper costs more than the view itself)."""
    shape = list(x.shape)
    shape[dim:dim + 1] = count, length
    return x.view(shape)


class _Rows:
    """The packed rows of one bucket's n sequences of one length: gather them as (n, L, ...)
    (a view when they are consecutive) and scatter (n, L, ...) results back."""

    def __init__(self, starts, length):
        self.n, self.length, self.first = len(starts), length, starts[0]
        self.consecutive = all(b - a == length for a, b in zip(starts, starts[1:]))
        if not self.consecutive:
            self.index = (torch.tensor(starts)[:, None] + torch.arange(length)).flatten()

    def gather(self, x, dim=0):
        if self.consecutive:
            rows = x.narrow(dim, self.first, self.n * self.length)
        else:
            rows = x.index_select(dim, self.index)
        return _split(rows, dim, self.n, self.length)

    def scatter(self, dest, values, dim=0):
        values = values.flatten(dim, dim + 1)
        if self.consecutive:
            dest.narrow(dim, self.first, self.n * self.length).copy_(values)
        else:
            dest.index_copy_(dim, self.index, values)


def _heads_first(rows):
    """(n, L, H, D) rows -> the kernel's (n, H, L, D) view; the last dim must be dense."""
    rows = rows if rows.stride(-1) == 1 else rows.contiguous()
    return rows.transpose(1, 2)


def _mask(len_q, len_k, left, right, dtype):
    """(is_causal, additive mask or None, bool (Lq,) rows that see a key or None if all do)."""
    if left < 0 and right < 0:
        return False, None, None
    if left < 0 and right == 0 and len_q == len_k:
        return True, None, None
    allowed = allowed_mask(len_q, len_k, left, right)
    seen = allowed.any(1)
    mask = torch.zeros(len_q, len_k, dtype=dtype).masked_fill_(~allowed, float("-inf"))
    return False, mask, None if bool(seen.all()) else seen


def _kv(k, v, group):
    if group == 1 or native_gqa():
        return k, v
    return k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)


def _destination(like, shape, covered, whole, fill=0.0, dtype=None):
    """The tensor bucket results are scattered into: none when one bucket is everything (its
    result is returned as is), uninitialised when the buckets cover every row, else filled
    with ``fill`` (rows of sequences without keys / queries). Fresh large buffers cost page
    faults on every call, so the common cases allocate nothing or write each byte once."""
    if whole:
        return None
    dtype = dtype or like.dtype
    return like.new_empty(shape, dtype=dtype) if covered else like.new_full(shape, fill, dtype=dtype)


def _layout(groups, total_q, total_k):
    """(rows of q covered, rows of k covered, one consecutive bucket from row 0 covers both)."""
    covered_q = sum(len(starts) * len_q for (len_q, _), starts in groups.items()) == total_q
    covered_k = sum(len(starts) * len_k for (_, len_k), starts in groups.items()) == total_k
    whole = len(groups) == 1 and covered_q and covered_k and next(iter(groups.values()))[0] == (0, 0)
    return covered_q, covered_k, whole


def uniform_lengths(cu_seqlens_q, cu_seqlens_k, total_q, total_k):
    """(S, Lq, Lk) when every one of the S sequences has Lq > 0 queries and Lk > 0 keys: the
    packed tensors are then (S, L, H, D) batches as they are, one call without bookkeeping.
    Else None."""
    cu_q = cu_seqlens_q.tolist()
    cu_k = cu_q if cu_seqlens_k is cu_seqlens_q else cu_seqlens_k.tolist()
    count = len(cu_q) - 1
    if count < 1 or total_q % count or total_k % count or not total_q or not total_k:
        return None
    len_q, len_k = total_q // count, total_k // count
    if cu_q != list(range(0, total_q + 1, len_q)) or cu_k != list(range(0, total_k + 1, len_k)):
        return None
    return count, len_q, len_k


def _bucket_forward(qs, ks, vs, group, left, right, softmax_scale, lse_dtype):
    """One bucket: (n, Lq, H, D) queries and (n, Lk, Hkv, D) keys / values -> out
    (n, Lq, H, D) and lse (n, H, Lq)."""
    len_q, len_k = qs.shape[1], ks.shape[1]
    is_causal, mask, seen = _mask(len_q, len_k, left, right, qs.dtype)
    ks, vs = _kv(_heads_first(ks), _heads_first(vs), group)
    o, l = _flash(_heads_first(qs), ks, vs, 0.0, is_causal, attn_mask=mask, scale=softmax_scale)
    o, l = o.transpose(1, 2), l.to(lse_dtype)
    if seen is not None:
        o = torch.where(seen[:, None, None], o, 0)
        l = torch.where(seen, l, float("-inf"))
    return o, l


def _packed_lse(lse):
    """(n, H, L) lse of one bucket covering every row -> (H, n*L), dense as the fake impl
    promises (the kernel's own is (n, L, H) in memory)."""
    return lse.transpose(0, 1).flatten(1).contiguous()


_NATIVE_DTYPES = (torch.float32, torch.float64)


def _compiled(dtype):
    """The compiled kernel's module for ``dtype``, or None (then the flash kernel is composed)."""
    return native.extension() if dtype in _NATIVE_DTYPES else None


def _offsets(cu_seqlens_q, cu_seqlens_k):
    """int32 contiguous cu_seqlens for the compiled kernel, which checks their values itself."""
    if cu_seqlens_q.dim() != 1 or cu_seqlens_q.numel() < 1 or cu_seqlens_k.shape != cu_seqlens_q.shape:
        raise ValueError(f"cu_seqlens_q and cu_seqlens_k must be (S+1,) tensors of the same length, got "
                         f"{tuple(cu_seqlens_q.shape)} and {tuple(cu_seqlens_k.shape)}")
    return tuple(cu.to(torch.int32).contiguous() for cu in (cu_seqlens_q, cu_seqlens_k))


def _native_forward(ext, q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale, left, right):
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    cu_q, cu_k = _offsets(cu_seqlens_q, cu_seqlens_k)
    out, lse = torch.empty_like(q), q.new_empty((q.shape[1], q.shape[0]))
    ext.varlen_attention_forward(q.dtype == torch.float64, q.data_ptr(), k.data_ptr(), v.data_ptr(), cu_q.data_ptr(),
                                 cu_k.data_ptr(), cu_q.shape[0] - 1, q.shape[0], k.shape[0], q.shape[1], k.shape[1],
                                 q.shape[2], softmax_scale, left, right, out.data_ptr(), lse.data_ptr())
    return out, lse


def _native_backward(ext, dout, q, k, v, out, lse, dlse, cu_seqlens_q, cu_seqlens_k, softmax_scale, left, right):
    dout, q, k, v, out, lse = (x.contiguous() for x in (dout, q, k, v, out, lse))
    dlse = None if dlse is None else dlse.to(lse.dtype).contiguous()
    cu_q, cu_k = _offsets(cu_seqlens_q, cu_seqlens_k)
    num_heads, num_kv_heads, head_dim = q.shape[1], k.shape[1], q.shape[2]
    dq = torch.empty_like(q)
    # One dk / dv slice per query head; a GQA group's slices are summed below.
    dk, dv = (k.new_empty((k.shape[0], num_heads, head_dim)) for _ in range(2))
    ext.varlen_attention_backward(q.dtype == torch.float64, dout.data_ptr(), q.data_ptr(), k.data_ptr(),
                                  v.data_ptr(), out.data_ptr(), lse.data_ptr(), 0 if dlse is None else dlse.data_ptr(),
                                  cu_q.data_ptr(), cu_k.data_ptr(), cu_q.shape[0] - 1, q.shape[0], k.shape[0],
                                  num_heads, num_kv_heads, head_dim, softmax_scale, left, right, dq.data_ptr(),
                                  dk.data_ptr(), dv.data_ptr())
    if num_kv_heads != num_heads:
        dk, dv = (_split(g, 1, num_kv_heads, num_heads // num_kv_heads).sum(2) for g in (dk, dv))
    return dq, dk, dv


def varlen_attention_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale, causal=False, window_left=-1,
                             window_right=-1):
    """out (total_q, Hq, D) in q's dtype and lse (Hq, total_q) float32 (float64 for float64)
    from q (total_q, Hq, D), k / v (total_k, Hkv, D) and int32 cu_seqlens (S+1,)."""
    total_q, num_heads, _ = q.shape
    group = num_heads // k.shape[1]
    left, right = effective_window(causal, window_left, window_right)
    ext = _compiled(q.dtype)
    if ext is not None:
        return _native_forward(ext, q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale, left, right)
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    uniform = uniform_lengths(cu_seqlens_q, cu_seqlens_k, total_q, k.shape[0])
    if uniform is not None:
        count, len_q, len_k = uniform
        o, l = _bucket_forward(_split(q, 0, count, len_q), _split(k, 0, count, len_k),
                               _split(v, 0, count, len_k), group, left, right, softmax_scale, lse_dtype)
        return o.reshape(q.shape), _packed_lse(l)
    groups = buckets(cu_seqlens_q, cu_seqlens_k)
    covered, _, whole = _layout(groups, total_q, k.shape[0])
    out = _destination(q, q.shape, covered, whole)
    lse = _destination(q, (num_heads, total_q), covered, whole, float("-inf"), lse_dtype)
    for (len_q, len_k), starts in groups.items():
        rows_q, rows_k = _Rows([s[0] for s in starts], len_q), _Rows([s[1] for s in starts], len_k)
        o, l = _bucket_forward(rows_q.gather(q), rows_k.gather(k), rows_k.gather(v), group, left, right,
                               softmax_scale, lse_dtype)
        if whole:
            return o.reshape(q.shape), _packed_lse(l)
        rows_q.scatter(out, o)
        rows_q.scatter(lse, l.transpose(0, 1), dim=1)
    return out, lse


def _with_lse_gradient(q, k, v, out, dout, dlse):
    """Inputs (n, H, L, D+1) that make the kernel's backward include d lse: with q, k, v
    padded by a zero column, out by -1 and dout by dlse, its rowsum(dout * out) is
    rowsum(dout * out) - dlse, which is the whole effect of lse's gradient (d lse / d scores
    = the probabilities). The extra column of each gradient is dropped afterwards."""
    def pad(x, value):
        return torch.cat([x, x.new_full((*x.shape[:-1], 1), value)], -1)
    return pad(q, 0), pad(k, 0), pad(v, 0), pad(out, -1), torch.cat([dout, dlse[..., None].to(dout.dtype)], -1)


def _bucket_backward(dos, qs, ks, vs, os_, ls, dls, num_kv_heads, left, right, softmax_scale):
    """One bucket: (n, L, H, D) dout / q / out, (n, L, Hkv, D) k / v, lse and dlse (H, n, Lq)
    (dlse or None) -> dq (n, Lq, H, D), dk / dv (n, Lk, Hkv, D)."""
    len_q, len_k, num_heads, head_dim = qs.shape[1], ks.shape[1], qs.shape[2], qs.shape[3]
    group = num_heads // num_kv_heads
    is_causal, mask, seen = _mask(len_q, len_k, left, right, qs.dtype)
    qs, os_, dos = _heads_first(qs), _heads_first(os_), _heads_first(dos)
    ks, vs = _kv(_heads_first(ks), _heads_first(vs), group)
    ls, dls = ls.transpose(0, 1), None if dls is None else dls.transpose(0, 1)  # (n, H, Lq)
    if seen is not None:
        # No key: probabilities exp(-inf - lse) must be 0, so lse 0 there, and nothing flows back.
        ls = torch.where(seen, ls, 0)
        dos = torch.where(seen[:, None], dos, 0)
        dls = None if dls is None else torch.where(seen, dls, 0)
    if dls is not None:
        qs, ks, vs, os_, dos = _with_lse_gradient(qs, ks, vs, os_, dos, dls)
    gq, gk, gv = _flash_backward(dos, qs, ks, vs, os_, ls.contiguous(), 0.0, is_causal, attn_mask=mask,
                                 scale=softmax_scale)
    if dls is not None:  # drop the extra column
        gq, gk, gv = (g[..., :head_dim] for g in (gq, gk, gv))
    gq, gk, gv = gq.transpose(1, 2), gk.transpose(1, 2), gv.transpose(1, 2)  # (n, L, H, D)
    if gk.shape[2] != num_kv_heads:
        gk, gv = (_split(g, 2, num_kv_heads, group).sum(3) for g in (gk, gv))
    return gq, gk, gv


def _packed(grad, shape):
    """(n, L, H, D) gradient of one bucket covering every row -> ``shape``, dense as the fake
    impl promises (a view unless lse's gradient widened the head dim)."""
    return grad.reshape(shape).contiguous()


def varlen_attention_backward(dout, q, k, v, out, lse, dlse, cu_seqlens_q, cu_seqlens_k, softmax_scale,
                              causal=False, window_left=-1, window_right=-1):
    """Gradients (dq, dk, dv) of :func:`varlen_attention_forward`, by the kernel's own
    backward per bucket; dlse (Hq, total_q) or None."""
    num_kv_heads = k.shape[1]
    left, right = effective_window(causal, window_left, window_right)
    ext = _compiled(q.dtype)
    if ext is not None:
        return _native_backward(ext, dout, q, k, v, out, lse, dlse, cu_seqlens_q, cu_seqlens_k, softmax_scale, left,
                                right)
    uniform = uniform_lengths(cu_seqlens_q, cu_seqlens_k, q.shape[0], k.shape[0])
    if uniform is not None:
        count, len_q, len_k = uniform
        rows_q = [_split(x, 0, count, len_q) for x in (dout, q)]
        rows_k = [_split(x, 0, count, len_k) for x in (k, v)]
        gq, gk, gv = _bucket_backward(*rows_q, *rows_k, _split(out, 0, count, len_q), _split(lse, 1, count, len_q),
                                      None if dlse is None else _split(dlse, 1, count, len_q), num_kv_heads,
                                      left, right, softmax_scale)
        return _packed(gq, q.shape), _packed(gk, k.shape), _packed(gv, v.shape)
    groups = buckets(cu_seqlens_q, cu_seqlens_k)
    covered_q, covered_k, whole = _layout(groups, q.shape[0], k.shape[0])
    dq = _destination(q, q.shape, covered_q, whole)
    dk, dv = (_destination(k, k.shape, covered_k, whole) for _ in range(2))
    for (len_q, len_k), starts in groups.items():
        rows_q, rows_k = _Rows([s[0] for s in starts], len_q), _Rows([s[1] for s in starts], len_k)
        gq, gk, gv = _bucket_backward(rows_q.gather(dout), rows_q.gather(q), rows_k.gather(k), rows_k.gather(v),
                                      rows_q.gather(out), rows_q.gather(lse, dim=1),
                                      None if dlse is None else rows_q.gather(dlse, dim=1), num_kv_heads, left,
                                      right, softmax_scale)
        if whole:
            return _packed(gq, q.shape), _packed(gk, k.shape), _packed(gv, v.shape)
        rows_q.scatter(dq, gq)
        rows_k.scatter(dk, gk)
        rows_k.scatter(dv, gv)
    return dq, dk, dv
