"""Packing of variable-length sequences: ``adaptkern.pack`` / ``adaptkern.unpack``.

The padded <-> packed row copies are custom ops (``adaptkern::pack_padded``,
``adaptkern::unpack_padded``) with reference, Triton and CUDA backends, autograd (each is
the other's backward), and fake impls for torch.compile. Lists of sequences are packed
with one ``torch.cat``.
"""

import contextlib
import math
from typing import NamedTuple, Optional, Sequence, Union

import torch

from .. import _backend, _ext
from .._checks import (DTypeError, check_bool, check_cu_seqlens, check_int, check_tensor, lengths_from_cu_seqlens,
                       value_checks_enabled)
from ..reference import pack as reference
from . import _eager

_OP = "adaptkern.pack"


class Packed(NamedTuple):
    """A packed batch: ``data`` (total, *feature), ``cu_seqlens`` int32 (S+1,), ``max_seqlen``."""

    data: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int


def cu_seqlens_from_lengths(lengths, device=None) -> torch.Tensor:
    """int32 (S+1,) cumulative lengths [0, l0, l0+l1, ...] from a list or 1-D int tensor.

    Every length must be >= 0 and their sum fit int32 (ValueError otherwise); a tensor's
    values are read on the host for that check while value checks are on (see
    ``adaptkern.set_validation``)."""
    if isinstance(lengths, torch.Tensor):
        check_tensor("cu_seqlens_from_lengths", "lengths", lengths, ndim=1)
        if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
            raise DTypeError(f"cu_seqlens_from_lengths: lengths must be integers, got {lengths.dtype}")
        lengths = lengths.to(device=device or lengths.device, dtype=torch.int64)
        if value_checks_enabled(lengths):
            _check_lengths(lengths.detach().to("cpu").tolist())
    else:
        if not isinstance(lengths, (list, tuple, range)):
            raise TypeError(f"cu_seqlens_from_lengths: lengths must be a list of ints or a 1-D integer tensor, got "
                            f"{type(lengths).__name__}")
        lengths = _check_lengths([check_int("cu_seqlens_from_lengths", f"lengths[{i}]", n, minimum=0)
                                  for i, n in enumerate(lengths)])
        lengths = torch.as_tensor(lengths, dtype=torch.int64, device=device)
    cu = torch.zeros(lengths.numel() + 1, dtype=torch.int64, device=lengths.device)
    torch.cumsum(lengths, 0, out=cu[1:])
    return cu.to(torch.int32)


_INT32_MAX = 2**31 - 1


def _check_lengths(lengths: list) -> list:
    """Python-int lengths, each >= 0, whose sum fits the int32 of cu_seqlens."""
    for i, n in enumerate(lengths):
        if n < 0:
            raise ValueError(f"cu_seqlens_from_lengths: lengths[{i}] must be >= 0, got {n}")
    if sum(lengths) > _INT32_MAX:
        raise ValueError(f"cu_seqlens_from_lengths: the lengths sum to {sum(lengths)}, more than int32 cu_seqlens "
                         f"can hold ({_INT32_MAX})")
    return lengths


def on_device(tensor: torch.Tensor):
    """Context for a kernel launch on ``tensor``: its CUDA device made current (Triton
    compiles and launches on the current device, and csrc launches in its context), so
    tensors on cuda:1 work while cuda:0 is current. A no-op off CUDA."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


def _word_view(x: torch.Tensor) -> torch.Tensor:
    """View a contiguous (..., R) tensor of any dtype as the widest integer words dividing a row."""
    if x.numel() == 0:  # empty tensors may carry any strides; there is no data to reinterpret
        as_bytes = x.new_empty((*x.shape[:-1], x.shape[-1] * x.element_size()), dtype=torch.uint8)
    else:
        as_bytes = x.view(torch.uint8)
    row_bytes = as_bytes.shape[-1]
    for word in (torch.int32, torch.int16):
        if row_bytes % word.itemsize == 0:
            return as_bytes.view(word)
    return as_bytes


def _run_pack(padded, cu_seqlens, total, max_seqlen, backend):
    if backend in ("reference", "cpu"):  # on CPU the reference's one index_select is the fast path
        return reference.pack_padded(padded, cu_seqlens, total)
    if backend == "triton":
        words = _backend.kernels("pack").pack_rows(_word_view(padded), cu_seqlens, total, max_seqlen)
        return words.view(padded.dtype).view(total, padded.shape[2])
    out = padded.new_empty((total, padded.shape[2]))
    _ext.cuda_extension().pack_rows(
        padded.data_ptr(), out.data_ptr(), cu_seqlens.data_ptr(), padded.shape[0], padded.shape[1],
        max_seqlen, padded.shape[2] * padded.element_size(), _ext.stream_handle(padded.device),
    )
    return out


def _run_unpack(packed, cu_seqlens, padded_len, backend):
    if backend in ("reference", "cpu"):
        return reference.unpack_padded(packed, cu_seqlens, padded_len)
    batch = cu_seqlens.numel() - 1
    if backend == "triton":
        words = _backend.kernels("pack").unpack_rows(_word_view(packed), cu_seqlens, padded_len)
        return words.view(packed.dtype).view(batch, padded_len, packed.shape[1])
    out = packed.new_empty((batch, padded_len, packed.shape[1]))
    _ext.cuda_extension().unpack_rows(
        packed.data_ptr(), out.data_ptr(), cu_seqlens.data_ptr(), batch, padded_len,
        packed.shape[1] * packed.element_size(), _ext.stream_handle(packed.device),
    )
    return out


@_eager.custom_op("adaptkern::pack_padded")
def pack_padded(padded: torch.Tensor, cu_seqlens: torch.Tensor, total: int, max_seqlen: int, backend: str) -> torch.Tensor:
    """padded (B, L, R) contiguous -> packed (total, R)."""
    with on_device(padded):
        return _run_pack(padded, cu_seqlens, total, max_seqlen, backend)


@pack_padded.register_fake
def _(padded, cu_seqlens, total, max_seqlen, backend):
    return padded.new_empty((total, padded.shape[2]))


@_eager.custom_op("adaptkern::unpack_padded")
def unpack_padded(packed: torch.Tensor, cu_seqlens: torch.Tensor, padded_len: int, backend: str) -> torch.Tensor:
    """packed (T, R) contiguous -> padded (B, padded_len, R), zeros past each length."""
    with on_device(packed):
        return _run_unpack(packed, cu_seqlens, padded_len, backend)


@unpack_padded.register_fake
def _(packed, cu_seqlens, padded_len, backend):
    return packed.new_empty((cu_seqlens.shape[0] - 1, padded_len, packed.shape[1]))


def _pack_setup(ctx, inputs, output):
    padded, cu_seqlens, _, _, backend = inputs
    ctx.save_for_backward(cu_seqlens)
    ctx.padded_len, ctx.backend = padded.shape[1], backend


def _pack_backward(ctx, grad):
    (cu_seqlens,) = ctx.saved_tensors
    return unpack_padded(grad.contiguous(), cu_seqlens, ctx.padded_len, ctx.backend), None, None, None, None


def _unpack_setup(ctx, inputs, output):
    packed, cu_seqlens, padded_len, backend = inputs
    ctx.save_for_backward(cu_seqlens)
    ctx.total, ctx.padded_len, ctx.backend = packed.shape[0], padded_len, backend


def _unpack_backward(ctx, grad):
    (cu_seqlens,) = ctx.saved_tensors
    grad_packed = pack_padded(grad.contiguous(), cu_seqlens, ctx.total, ctx.padded_len, ctx.backend)
    return grad_packed, None, None, None


pack_padded.register_autograd(_pack_backward, setup_context=_pack_setup)
unpack_padded.register_autograd(_unpack_backward, setup_context=_unpack_setup)


def pack(
    sequences: Union[Sequence[torch.Tensor], torch.Tensor],
    lengths=None,
    *,
    backend: Optional[str] = None,
) -> Packed:
    """Pack variable-length sequences into one (total, *feature) tensor.

    Args:
        sequences: a list of tensors (L_i, *feature) of one dtype and device, or a padded
            tensor (B, L, *feature) whose first ``lengths[b]`` rows are real.
        lengths: required with a padded tensor: B ints (list or 1-D integer tensor, each
            0 <= lengths[b] <= L). Not allowed with a list.
        backend: "reference", "cpu", "triton", "cuda" or None (see DESIGN: dispatch).

    Returns ``Packed(data, cu_seqlens, max_seqlen)``; cu_seqlens is int32 (B+1,) on the
    data's device. Reading a tensor of lengths on the host is this call's one sync.
    """
    if isinstance(sequences, torch.Tensor):
        return _pack_tensor(sequences, lengths, backend)
    if lengths is not None:
        raise ValueError(f"{_OP}: lengths is only used with a padded tensor; a list gives its own lengths")
    if not isinstance(sequences, (list, tuple)) or len(sequences) == 0:
        raise ValueError(f"{_OP}: sequences must be a non-empty list of tensors or a padded tensor")
    first = check_tensor(_OP, "sequences[0]", sequences[0], min_ndim=1)
    for i, seq in enumerate(sequences):
        check_tensor(_OP, f"sequences[{i}]", seq, ndim=first.dim(), dtypes=(first.dtype,), device=first.device)
        if seq.shape[1:] != first.shape[1:]:
            raise ValueError(
                f"{_OP}: sequences[{i}] has feature shape {tuple(seq.shape[1:])}, "
                f"but sequences[0] has {tuple(first.shape[1:])}"
            )
    lengths = [seq.shape[0] for seq in sequences]
    return Packed(torch.cat(list(sequences), 0), cu_seqlens_from_lengths(lengths, first.device), max(lengths))


def _pack_tensor(padded, lengths, backend):
    check_tensor(_OP, "sequences", padded, min_ndim=2)
    if lengths is None:
        raise ValueError(f"{_OP}: lengths is required when sequences is a padded (B, L, ...) tensor")
    batch, padded_len = padded.shape[:2]
    if isinstance(lengths, torch.Tensor):
        lengths = lengths.tolist()
    if len(lengths) != batch:
        raise ValueError(f"{_OP}: lengths has {len(lengths)} entries but sequences has batch size {batch}")
    for i, n in enumerate(lengths):
        n = check_int(_OP, f"lengths[{i}]", n, minimum=0)
        if n > padded_len:
            raise ValueError(f"{_OP}: lengths[{i}]={n} exceeds the padded length {padded_len}")
    lengths = [int(n) for n in lengths]
    total, max_seqlen = sum(lengths), max(lengths, default=0)
    cu_seqlens = cu_seqlens_from_lengths(lengths, padded.device)
    name = _backend.resolve_backend(backend, padded.device, op=_OP, gpu_preference=("cuda", "triton"),
                                    cuda_supported=True)
    feature = padded.shape[2:]
    rows = padded.reshape(batch, padded_len, math.prod(feature)).contiguous()
    data = pack_padded(rows, cu_seqlens, total, max_seqlen, name)
    return Packed(data.reshape(total, *feature), cu_seqlens, max_seqlen)


def unpack(
    data: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: Optional[int] = None,
    *,
    as_list: bool = False,
    backend: Optional[str] = None,
):
    """Inverse of :func:`pack`.

    Args:
        data: (total, *feature) packed rows.
        cu_seqlens: int32 (B+1,) cumulative lengths on data's device.
        max_seqlen: padded length L of the result (>= every length); None reads it from
            cu_seqlens (a host sync).
        as_list: return a list of B views (L_i, *feature) instead of a padded tensor.

    Returns a zero-padded (B, L, *feature) tensor, or the list.
    """
    _UOP = "adaptkern.unpack"
    check_tensor(_UOP, "data", data, min_ndim=1)
    batch = check_cu_seqlens(_UOP, "cu_seqlens", cu_seqlens, total=data.shape[0], total_name="data.shape[0]",
                             max_seqlen=max_seqlen, device=data.device)
    if check_bool(_UOP, "as_list", as_list):
        return list(torch.split(data, lengths_from_cu_seqlens(cu_seqlens), 0))
    if max_seqlen is None:
        max_seqlen = max(lengths_from_cu_seqlens(cu_seqlens), default=0)
    name = _backend.resolve_backend(backend, data.device, op=_UOP, gpu_preference=("cuda", "triton"),
                                    cuda_supported=True)
    feature = data.shape[1:]
    rows = data.reshape(data.shape[0], math.prod(feature)).contiguous()
    padded = unpack_padded(rows, cu_seqlens, int(max_seqlen), name)
    return padded.reshape(batch, int(max_seqlen), *feature)
