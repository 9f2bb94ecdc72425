"""Variable-length attention: ``adaptkern.varlen_attention`` and the drop-in
``adaptkern.flash_attn_varlen_func``.

Two custom ops, ``adaptkern::varlen_attn_fwd`` -> (out, lse) and
``adaptkern::varlen_attn_bwd`` -> (dq, dk, dv), with reference, cpu and Triton backends, fake
impls for torch.compile, autograd (the backward op is its own custom op so FlopCounterMode
sees it) and FLOP formulas from :mod:`adaptkern.flops.varlen_attention`.
"""

import math
import numbers
import os
from typing import Optional

import torch
from torch.utils.flop_counter import register_flop_formula

from .. import _backend
from .._checks import DTypeError, check_bool, check_cu_seqlens, check_int, check_tensor, lengths_from_cu_seqlens
from ..cpu import varlen_attention as cpu
from ..flops.varlen_attention import allowed_pairs, check_window
from ..reference import varlen_attention as reference
from . import _eager
from .pack import on_device

_OP = "adaptkern.varlen_attention"
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MIN_HEAD_DIM, MAX_HEAD_DIM = 8, 256


def _lse_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


@_eager.custom_op("adaptkern::varlen_attn_fwd")
def varlen_attn_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int, max_seqlen_k: int, softmax_scale: float, causal: bool, window_left: int,
    window_right: int, backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q (total_q, Hq, D), k/v (total_k, Hkv, D) -> out (total_q, Hq, D), lse (Hq, total_q)."""
    if backend == "triton":
        with on_device(q):
            return _backend.kernels("varlen_attention").forward(
                q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale,
                *reference.effective_window(causal, window_left, window_right),
            )
    if backend == "cpu":
        return cpu.varlen_attention_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale, causal, window_left,
                                            window_right)
    return reference.varlen_attention_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale, causal,
                                              window_left, window_right)


@varlen_attn_fwd.register_fake
def _(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale, causal, window_left,
      window_right, backend):
    lse = q.new_empty((q.shape[1], q.shape[0]), dtype=_lse_dtype(q.dtype))
    return q.new_empty(q.shape), lse


@_eager.custom_op("adaptkern::varlen_attn_bwd")
def varlen_attn_bwd(
    dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
    dlse: Optional[torch.Tensor], cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor, max_seqlen_q: int,
    max_seqlen_k: int, softmax_scale: float, causal: bool, window_left: int, window_right: int, backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dq, dk, dv) of varlen_attn_fwd; dlse (Hq, total_q) may be None."""
    if backend == "triton":
        with on_device(q):
            return _backend.kernels("varlen_attention_bwd").backward(
                dout, q, k, v, out, lse, dlse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                softmax_scale, *reference.effective_window(causal, window_left, window_right),
            )
    if backend == "cpu":
        return cpu.varlen_attention_backward(dout, q, k, v, out, lse, dlse, cu_seqlens_q, cu_seqlens_k, softmax_scale,
                                             causal, window_left, window_right)
    return reference.varlen_attention_backward(dout, q, k, v, out, lse, dlse, cu_seqlens_q, cu_seqlens_k,
                                               softmax_scale, causal, window_left, window_right)


@varlen_attn_bwd.register_fake
def _(dout, q, k, v, out, lse, dlse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale,
      causal, window_left, window_right, backend):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup(ctx, inputs, output):
    q, k, v, cu_seqlens_q, cu_seqlens_k = inputs[:5]
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k)
    ctx.mask_args = inputs[5:11]  # max_seqlen_q, max_seqlen_k, softmax_scale, causal, window_left, window_right
    ctx.backend = inputs[11]
    # An unused lse then arrives as None, not as a tensor of zeros the kernels would read.
    ctx.set_materialize_grads(False)


def _backward(ctx, dout, dlse):
    q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k = ctx.saved_tensors
    if dout is None:  # only lse was used
        dout = torch.zeros_like(out)
    dq, dk, dv = varlen_attn_bwd(dout, q, k, v, out, lse, dlse, cu_seqlens_q, cu_seqlens_k, *ctx.mask_args,
                                 ctx.backend)
    return (dq, dk, dv) + (None,) * 9


varlen_attn_fwd.register_autograd(_backward, setup_context=_setup)


def _readable(t):
    return not (t.device.type == "meta" or isinstance(t, torch._subclasses.fake_tensor.FakeTensor)
                or isinstance(t, torch._subclasses.functional_tensor.FunctionalTensor))


def _pair_count(q, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, window_left, window_right):
    """Allowed pairs; while tracing (fake cu_seqlens) every sequence counts as max_seqlen long,
    the upper bound torch's own flash-attention formula uses in that case."""
    if _readable(cu_seqlens_q) and _readable(cu_seqlens_k):
        lengths_q, lengths_k = lengths_from_cu_seqlens(cu_seqlens_q), lengths_from_cu_seqlens(cu_seqlens_k)
    else:
        batch = cu_seqlens_q.shape[0] - 1
        lengths_q, lengths_k = [int(max_seqlen_q)] * batch, [int(max_seqlen_k)] * batch
    return allowed_pairs(lengths_q, lengths_k, causal=causal, window_size=(window_left, window_right))


@register_flop_formula(torch.ops.adaptkern.varlen_attn_fwd, get_raw=True)
def _fwd_flops(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale, causal,
               window_left, window_right, backend, *args, out_val=None, **kwargs) -> int:
    pairs = _pair_count(q, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, window_left, window_right)
    return 4 * q.shape[1] * q.shape[2] * pairs


@register_flop_formula(torch.ops.adaptkern.varlen_attn_bwd, get_raw=True)
def _bwd_flops(dout, q, k, v, out, lse, dlse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
               softmax_scale, causal, window_left, window_right, backend, *args, out_val=None, **kwargs) -> int:
    pairs = _pair_count(q, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, window_left, window_right)
    return 10 * q.shape[1] * q.shape[2] * pairs  # 2.5 x the forward's 4 * Hq * D per pair


def _check_inputs(op, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k):
    check_tensor(op, "q", q, ndim=3, dtypes=_DTYPES)
    check_tensor(op, "k", k, ndim=3, dtypes=(q.dtype,), device=q.device)
    check_tensor(op, "v", v, ndim=3, dtypes=(q.dtype,), device=q.device)
    total_q, num_heads, head_dim = q.shape
    if k.shape != v.shape:
        raise ValueError(f"{op}: k and v must have the same shape (total_k, Hkv, D), got {tuple(k.shape)} "
                         f"and {tuple(v.shape)}")
    if k.shape[2] != head_dim:
        raise ValueError(f"{op}: k has head dim {k.shape[2]} but q has {head_dim}; they must match")
    if not MIN_HEAD_DIM <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"{op}: q has head dim D={head_dim}; supported head dims are {MIN_HEAD_DIM} to "
                         f"{MAX_HEAD_DIM}")
    if num_heads == 0 or k.shape[1] == 0 or num_heads % k.shape[1]:
        raise ValueError(f"{op}: the number of heads of k ({k.shape[1]}) must divide that of q ({num_heads}) "
                         "and both must be >= 1")
    max_seqlen_q = check_int(op, "max_seqlen_q", max_seqlen_q, minimum=0)
    max_seqlen_k = check_int(op, "max_seqlen_k", max_seqlen_k, minimum=0)
    batch = check_cu_seqlens(op, "cu_seqlens_q", cu_seqlens_q, total=total_q, total_name="q.shape[0]",
                             max_seqlen=max_seqlen_q, max_seqlen_name="max_seqlen_q", device=q.device)
    if cu_seqlens_k is cu_seqlens_q and k.shape[0] == total_q and max_seqlen_k == max_seqlen_q:
        batch_k = batch  # self-attention: the check above covered it, one host sync instead of two
    else:
        batch_k = check_cu_seqlens(op, "cu_seqlens_k", cu_seqlens_k, total=k.shape[0], total_name="k.shape[0]",
                                   max_seqlen=max_seqlen_k, max_seqlen_name="max_seqlen_k", device=q.device)
    if batch != batch_k:
        raise ValueError(f"{op}: cu_seqlens_q describes {batch} sequences but cu_seqlens_k describes {batch_k}; "
                         "they must describe the same batch")
    return max_seqlen_q, max_seqlen_k


def _attention(op, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale, causal,
               window_size, backend):
    """Validate, dispatch, run: (out, lse)."""
    max_seqlen_q, max_seqlen_k = _check_inputs(op, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    check_bool(op, "causal", causal)
    window_left, window_right = check_window(op, window_size, causal)
    if softmax_scale is None:
        softmax_scale = q.shape[2] ** -0.5
    elif isinstance(softmax_scale, bool) or not isinstance(softmax_scale, numbers.Real):
        raise TypeError(f"{op}: softmax_scale must be a float or None, got {type(softmax_scale).__name__}")
    elif not math.isfinite(softmax_scale):
        raise ValueError(f"{op}: softmax_scale must be finite, got {softmax_scale}")
    name = _backend.resolve_backend(backend, q.device, op=op)
    if name == "triton" and q.dtype not in _TRITON_DTYPES and backend is None and not os.environ.get(_backend.ENV_VAR):
        name = "reference"  # the default picks triton on CUDA, which has no float64 kernels
    if name == "triton" and q.dtype not in _TRITON_DTYPES:
        raise DTypeError(f"{op}: q has dtype {q.dtype}; backend='triton' supports float16, bfloat16 and float32 "
                         "(float64 runs on backend='reference')")
    return varlen_attn_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, float(softmax_scale),
                           causal, window_left, window_right, name)


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    *,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
    window_size=(-1, -1),
    return_lse: bool = False,
    backend: Optional[str] = None,
):
    """Softmax attention over packed variable-length sequences, without padding.

    Args:
        q: (total_q, Hq, D) queries of all sequences, concatenated; float16, bfloat16,
            float32 (float64 on the reference backend). D from 8 to 256.
        k, v: (total_k, Hkv, D), q's dtype and device; Hq % Hkv == 0 (GQA / MQA: query
            head h reads kv head h // (Hq / Hkv)).
        cu_seqlens_q, cu_seqlens_k: int32 (S+1,) cumulative lengths, [0, ..., total].
            Zero-length sequences are allowed; lengths of q and k may differ.
        max_seqlen_q, max_seqlen_k: ints >= the longest query / key sequence.
        softmax_scale: defaults to D ** -0.5.
        causal: bottom-right aligned: query i of a sequence with Lq queries and Lk keys
            sees key j iff j <= i + Lk - Lq.
        window_size: (left, right); query i sees key j iff
            i + Lk - Lq - left <= j <= i + Lk - Lq + right (-1 = unbounded side).
        return_lse: also return lse.
        backend: "reference", "cpu", "triton" or None (CUDA tensors -> triton, except
            float64 -> reference; CPU tensors -> cpu; anything else -> reference).

    Returns out (total_q, Hq, D) in q's dtype; with return_lse also lse (Hq, total_q)
    float32 (natural log of the softmax denominator). A row that sees no key has out 0,
    lse -inf and zero gradients. Value checks of cu_seqlens cost one host sync per distinct
    tensor: one when cu_seqlens_k is cu_seqlens_q (self-attention), else two (see
    ``adaptkern.set_validation``).
    """
    check_bool(_OP, "return_lse", return_lse)
    out, lse = _attention(_OP, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale,
                          causal, window_size, backend)
    return (out, lse) if return_lse else out


def flash_attn_varlen_func(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
    block_table=None,
    *,
    backend=None,
):
    """Drop-in for flash-attn 2's ``flash_attn_varlen_func`` (same names, order, defaults).

    Tensors and masks as :func:`varlen_attention`. Supported: dropout_p=0 only (the
    attention is exact; anything else raises NotImplementedError), softcap=0, no
    alibi_slopes, no block_table (each raises NotImplementedError when set).
    ``deterministic`` is accepted and always honoured: the backward never uses atomics.
    ``return_attn_probs=True`` returns (out, softmax_lse, None): lse (Hq, total_q) float32
    as flash-attn gives it; the probability matrix (a testing aid in flash-attn) is not
    materialized, hence None.
    """
    op = "adaptkern.flash_attn_varlen_func"
    if dropout_p != 0:
        raise NotImplementedError(f"{op}: dropout_p={dropout_p} is not supported: adaptkern's attention has no "
                                  "dropout; pass dropout_p=0.0")
    if softcap != 0:
        raise NotImplementedError(f"{op}: softcap={softcap} is not supported; pass softcap=0.0")
    if alibi_slopes is not None:
        raise NotImplementedError(f"{op}: alibi_slopes is not supported; pass alibi_slopes=None")
    if block_table is not None:
        raise NotImplementedError(f"{op}: block_table (paged KV cache) is not supported; pass block_table=None")
    check_bool(op, "deterministic", deterministic)
    check_bool(op, "return_attn_probs", return_attn_probs)
    out, lse = _attention(op, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale,
                          causal, window_size, backend)
    return (out, lse, None) if return_attn_probs else out
