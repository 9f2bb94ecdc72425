"""Resampled positional-embedding interpolation: ``ak.interp_pos_embed`` and the fused
``ak.add_interp_pos_embed``.

Custom ops: ``adaptkern::interp_pos_embed`` (the resampled blocks alone),
``adaptkern::add_interp_pos_embed`` (added to packed tokens), and the gradient for the
grid, ``adaptkern::interp_pos_embed_backward``, shared by both and its own op so
FlopCounterMode counts it. The gradient for the tokens is the identity. Backends:
reference (separable resize matrices), cpu (:mod:`adaptkern.cpu.interp_pos_embed`), Triton
and CUDA (weights computed in the kernels).
"""

from typing import Optional

import torch
from torch.utils.flop_counter import register_flop_formula

from .. import _backend, _ext
from .._checks import DTypeError, check_bool, check_cu_seqlens, check_int, check_tensor, value_checks_enabled
from ..cpu import interp_pos_embed as cpu
from ..flops.interp_pos_embed import interp_pos_embed_flops
from ..reference import interp_pos_embed as reference
from . import _eager
from .pack import on_device
from .pos_embed_layout import add_prefix_pos, read_pos_embed, resolve_interpolation

_OP = "adaptkern.interp_pos_embed"
_ADD_OP = "adaptkern.add_interp_pos_embed"
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# dtype codes of csrc/interp_pos_embed.h
_CUDA_DTYPE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
# csrc/interp_pos_embed.cu: one warp's weights, (Gh + Gw) floats, within 48 KiB of shared memory.
_CUDA_MAX_GRID_SUM = 12288


def _run_forward(tokens, pos_embed, grid_sizes, cu_seqlens, total, num_prefix_tokens, mode, antialias,
                 align_corners, backend):
    opts = dict(mode=mode, antialias=antialias, align_corners=align_corners)
    if backend == "reference":
        if tokens is None:
            return reference.interp_pos_embed(pos_embed, grid_sizes, **opts).to(pos_embed.dtype)
        return reference.add_interp_pos_embed(tokens, pos_embed, grid_sizes, cu_seqlens, num_prefix_tokens, **opts)
    if backend == "cpu":
        return cpu.add_interp_pos_embed(tokens, pos_embed, grid_sizes, cu_seqlens, num_prefix_tokens, total=total,
                                        **opts)
    out_dtype = pos_embed.dtype if tokens is None else tokens.dtype
    out = pos_embed.new_empty((total, pos_embed.shape[2]), dtype=out_dtype)
    if backend == "triton":
        return _backend.kernels("interp_pos_embed").interp_forward(
            pos_embed, grid_sizes, cu_seqlens, out, tokens=tokens, num_prefix_tokens=num_prefix_tokens, **opts)
    if out.numel() and grid_sizes.shape[0]:
        base_h, base_w, dim = pos_embed.shape
        _ext.cuda_extension().interp_pos_embed_forward(
            pos_embed.data_ptr(), _CUDA_DTYPE[pos_embed.dtype], 0 if tokens is None else tokens.data_ptr(),
            out.data_ptr(), _CUDA_DTYPE[out_dtype], grid_sizes.data_ptr(), cu_seqlens.data_ptr(),
            grid_sizes.shape[0], total, base_h, base_w, dim, num_prefix_tokens, mode == "bicubic", antialias,
            align_corners, _ext.stream_handle(out.device))
    return out


@_eager.custom_op("adaptkern::interp_pos_embed")
def interp_pos_embed_op(pos_embed: torch.Tensor, grid_sizes: torch.Tensor, cu_seqlens: torch.Tensor, total: int,
                        mode: str, antialias: bool, align_corners: bool, backend: str) -> torch.Tensor:
    """pos_embed (Gh, Gw, D) contiguous -> (total, D) in its dtype; sequence i's block starts
    at cu_seqlens[i] (int32, S+1)."""
    with on_device(pos_embed):
        return _run_forward(None, pos_embed, grid_sizes, cu_seqlens, total, 0, mode, antialias, align_corners,
                            backend)


@interp_pos_embed_op.register_fake
def _(pos_embed, grid_sizes, cu_seqlens, total, mode, antialias, align_corners, backend):
    return pos_embed.new_empty((total, pos_embed.shape[2]))


@_eager.custom_op("adaptkern::add_interp_pos_embed")
def add_interp_pos_embed_op(tokens: torch.Tensor, pos_embed: torch.Tensor, grid_sizes: torch.Tensor,
                            cu_seqlens: torch.Tensor, num_prefix_tokens: int, mode: str, antialias: bool,
                            align_corners: bool, backend: str) -> torch.Tensor:
    """tokens (T, D) contiguous + each sequence's resampled grid on its patch tokens, in tokens' dtype."""
    with on_device(tokens):
        return _run_forward(tokens, pos_embed, grid_sizes, cu_seqlens, tokens.shape[0], num_prefix_tokens, mode,
                            antialias, align_corners, backend)


@add_interp_pos_embed_op.register_fake
def _(tokens, pos_embed, grid_sizes, cu_seqlens, num_prefix_tokens, mode, antialias, align_corners, backend):
    return torch.empty_like(tokens)


@_eager.custom_op("adaptkern::interp_pos_embed_backward")
def interp_pos_embed_backward_op(grad: torch.Tensor, grid_sizes: torch.Tensor, cu_seqlens: torch.Tensor,
                                 num_prefix_tokens: int, base_h: int, base_w: int, mode: str, antialias: bool,
                                 align_corners: bool, backend: str) -> torch.Tensor:
    """Gradient (Gh, Gw, D) for pos_embed from grad (T, D) contiguous; float32 (float64 for a
    float64 grad on the reference backend)."""
    opts = dict(mode=mode, antialias=antialias, align_corners=align_corners)
    if backend == "reference":
        return reference.interp_pos_embed_backward(grad, grid_sizes, cu_seqlens, num_prefix_tokens, base_h, base_w,
                                                   **opts)
    if backend == "cpu":
        return cpu.interp_pos_embed_backward(grad, grid_sizes, cu_seqlens, num_prefix_tokens, base_h, base_w, **opts)
    with on_device(grad):
        if backend == "triton":
            return _backend.kernels("interp_pos_embed").interp_backward(
                grad, grid_sizes, cu_seqlens, base_h, base_w, num_prefix_tokens=num_prefix_tokens, **opts)
        dim = grad.shape[1]
        out = grad.new_zeros((base_h, base_w, dim), dtype=torch.float32)
        if out.numel() and grid_sizes.shape[0] and grad.shape[0]:
            _ext.cuda_extension().interp_pos_embed_backward(
                grad.data_ptr(), _CUDA_DTYPE[grad.dtype], out.data_ptr(), grid_sizes.data_ptr(),
                cu_seqlens.data_ptr(), grid_sizes.shape[0], base_h, base_w, dim, num_prefix_tokens, mode == "bicubic",
                antialias, align_corners, _ext.stream_handle(grad.device))
        return out


@interp_pos_embed_backward_op.register_fake
def _(grad, grid_sizes, cu_seqlens, num_prefix_tokens, base_h, base_w, mode, antialias, align_corners, backend):
    dtype = reference.compute_dtype(grad.dtype) if backend in ("reference", "cpu") else torch.float32
    return grad.new_empty((base_h, base_w, grad.shape[1]), dtype=dtype)


def _grad_pos(ctx, grad, num_prefix_tokens):
    grid_sizes, cu_seqlens = ctx.saved_tensors
    grad_pos = interp_pos_embed_backward_op(grad.contiguous(), grid_sizes, cu_seqlens, num_prefix_tokens,
                                            *ctx.base_grid, *ctx.options)
    return grad_pos.to(ctx.pos_dtype)


def _interp_setup(ctx, inputs, output):
    pos_embed, grid_sizes, cu_seqlens, _, mode, antialias, align_corners, backend = inputs
    ctx.save_for_backward(grid_sizes, cu_seqlens)
    ctx.base_grid, ctx.pos_dtype = tuple(pos_embed.shape[:2]), pos_embed.dtype
    ctx.options = (mode, antialias, align_corners, backend)


def _interp_backward(ctx, grad):
    grad_pos = _grad_pos(ctx, grad, 0) if ctx.needs_input_grad[0] else None
    return grad_pos, None, None, None, None, None, None, None


def _add_setup(ctx, inputs, output):
    tokens, pos_embed, grid_sizes, cu_seqlens, num_prefix_tokens, mode, antialias, align_corners, backend = inputs
    ctx.save_for_backward(grid_sizes, cu_seqlens)
    ctx.base_grid, ctx.pos_dtype, ctx.num_prefix_tokens = tuple(pos_embed.shape[:2]), pos_embed.dtype, num_prefix_tokens
    ctx.options = (mode, antialias, align_corners, backend)


def _add_backward(ctx, grad):
    grad_pos = _grad_pos(ctx, grad, ctx.num_prefix_tokens) if ctx.needs_input_grad[1] else None
    grad_tokens = grad if ctx.needs_input_grad[0] else None
    return grad_tokens, grad_pos, None, None, None, None, None, None, None


interp_pos_embed_op.register_autograd(_interp_backward, setup_context=_interp_setup)
add_interp_pos_embed_op.register_autograd(_add_backward, setup_context=_add_setup)


def _op_flops(grid_sizes, base_grid, dim, mode, antialias, align_corners):
    return interp_pos_embed_flops(grid_sizes, base_grid, dim, interpolation=mode, antialias=antialias,
                                  align_corners=align_corners)


@register_flop_formula(torch.ops.adaptkern.interp_pos_embed, get_raw=True)
def _(pos_embed, grid_sizes, cu_seqlens, total, mode, antialias, align_corners, backend, *args, **kwargs):
    return _op_flops(grid_sizes, pos_embed.shape[:2], pos_embed.shape[2], mode, antialias, align_corners)


@register_flop_formula(torch.ops.adaptkern.add_interp_pos_embed, get_raw=True)
def _(tokens, pos_embed, grid_sizes, cu_seqlens, num_prefix_tokens, mode, antialias, align_corners, backend, *args,
      **kwargs):
    return _op_flops(grid_sizes, pos_embed.shape[:2], pos_embed.shape[2], mode, antialias, align_corners)


@register_flop_formula(torch.ops.adaptkern.interp_pos_embed_backward, get_raw=True)
def _(grad, grid_sizes, cu_seqlens, num_prefix_tokens, base_h, base_w, mode, antialias, align_corners, backend,
      *args, **kwargs):
    return _op_flops(grid_sizes, (base_h, base_w), grad.shape[1], mode, antialias, align_corners)


# ----------------------------------------------------------------------------- public API

def _check_options(op, mode, antialias, align_corners):
    if mode not in reference.MODES:
        raise ValueError(f"{op}: interpolation must be one of {reference.MODES}, got {mode!r}")
    check_bool(op, "antialias", antialias)
    check_bool(op, "align_corners", align_corners)


def _check_grid_inputs(op, pos_embed, grid_sizes):
    check_tensor(op, "pos_embed", pos_embed, ndim=3, dtypes=_DTYPES)
    if pos_embed.shape[0] < 1 or pos_embed.shape[1] < 1:
        raise ValueError(f"{op}: pos_embed must be a (Gh, Gw, D) grid with Gh, Gw >= 1, got {tuple(pos_embed.shape)}")
    check_tensor(op, "grid_sizes", grid_sizes, ndim=2, dtypes=(torch.int32,), device=pos_embed.device)
    if grid_sizes.shape[1] != 2:
        raise ValueError(f"{op}: grid_sizes must have shape (S, 2) (rows, cols), got {tuple(grid_sizes.shape)}")


def _grid_values(op, grid_sizes):
    """(h, w) per sequence read on the host, each checked >= 0 (one host read). A 0 is an
    image without patches, as flexi_patch_embed_packed gives for a zero-size image."""
    grids = grid_sizes.detach().to("cpu", torch.int64)
    if grids.numel() and int(grids.min()) < 0:
        i = int(torch.nonzero((grids < 0).any(1))[0])
        raise ValueError(f"{op}: grid_sizes[{i}] = {tuple(grids[i].tolist())}: grid sizes must be >= 0")
    return grids


def _resolve(op, backend, pos_embed, tokens=None):
    name = _backend.resolve_backend(backend, pos_embed.device, op=op, gpu_preference=("triton", "cuda"),
                                    cuda_supported=True)
    if name in ("reference", "cpu"):
        return name
    for arg, tensor in (("tokens", tokens), ("pos_embed", pos_embed)):
        if tensor is not None and tensor.dtype not in _KERNEL_DTYPES:
            raise DTypeError(f"{op}: backend {name!r} takes float16, bfloat16 or float32 {arg}, got "
                             f"{str(tensor.dtype).replace('torch.', '')} (float64 runs on backend='reference')")
    if pos_embed.numel() >= 2**31:
        raise ValueError(f"{op}: pos_embed has {pos_embed.numel()} elements; backend {name!r} indexes it with "
                         "32-bit offsets (< 2**31)")
    if name == "cuda" and sum(pos_embed.shape[:2]) > _CUDA_MAX_GRID_SUM:
        raise ValueError(f"{op}: backend 'cuda' keeps per-row weights of the base grid in shared memory and takes "
                         f"Gh + Gw <= {_CUDA_MAX_GRID_SUM}, got pos_embed of shape {tuple(pos_embed.shape)}")
    return name


def interp_pos_embed(pos_embed: torch.Tensor, grid_sizes: torch.Tensor, *, interpolation: str = "bicubic",
                     antialias: bool = True, align_corners: bool = False, backend: Optional[str] = None,
                     total_tokens: Optional[int] = None, num_prefix_tokens: int = 0, base_grid=None,
                     mode: Optional[str] = None) -> torch.Tensor:
    """The base positional-embedding grid resampled to every sequence's own grid, packed.

    Sequence i's block equals ``F.interpolate(pos_embed.permute(2, 0, 1)[None].float(),
    size=(h_i, w_i), mode=interpolation, antialias=antialias, align_corners=align_corners)[0]
    .permute(1, 2, 0).reshape(-1, D)``, computed in float32 (float64 for float64 input on the
    reference backend) and returned in pos_embed's dtype.

    Args:
        pos_embed: (Gh, Gw, D) base grid; float16, bfloat16, float32 (float64: reference).
            timm's layouts are read too (see ``adaptkern.ops.pos_embed_layout``): (1, Gh, Gw, D),
            and (1, P + Gh*Gw, D) with P = 0 or num_prefix_tokens prefix entries (left out
            here) and the grid base_grid=(Gh, Gw) or the square one the count implies.
        grid_sizes: int32 (S, 2), (h_i, w_i) >= 0 per sequence (0: no tokens), on pos_embed's device.
        interpolation: "bilinear" or "bicubic" (``mode=`` is its deprecated alias).
        antialias: widen the filter when downsampling.
        align_corners: as F.interpolate's.
        backend: "reference", "cpu", "triton", "cuda" or None (see DESIGN: dispatch).
        total_tokens: sum of h_i*w_i when known; otherwise it is read from grid_sizes (a host
            sync on a GPU, and needed under torch.compile(fullgraph=True)).

    Returns (sum_i h_i*w_i, D) in pos_embed's dtype, row-major per sequence.
    """
    mode = resolve_interpolation(_OP, interpolation, mode)
    pos_embed, _ = read_pos_embed(_OP, pos_embed, num_prefix_tokens, base_grid)
    _check_options(_OP, mode, antialias, align_corners)
    _check_grid_inputs(_OP, pos_embed, grid_sizes)
    if value_checks_enabled(grid_sizes):
        grids = _grid_values(_OP, grid_sizes)
        total = int(grids.prod(1).sum())
        if total_tokens is not None and check_int(_OP, "total_tokens", total_tokens, minimum=0) != total:
            raise ValueError(f"{_OP}: total_tokens={total_tokens} but grid_sizes hold {total} tokens")
    elif total_tokens is not None:
        total = check_int(_OP, "total_tokens", total_tokens, minimum=0)
    else:
        total = int(grid_sizes.to(torch.int64).prod(1).sum())  # host read for the output shape
    name = _resolve(_OP, backend, pos_embed)
    lengths = grid_sizes[:, 0].to(torch.int64) * grid_sizes[:, 1]
    cu_seqlens = torch.zeros(grid_sizes.shape[0] + 1, dtype=torch.int32, device=pos_embed.device)
    cu_seqlens[1:] = torch.cumsum(lengths, 0)
    return interp_pos_embed_op(pos_embed.contiguous(), grid_sizes.contiguous(), cu_seqlens, total, mode,
                               antialias, align_corners, name)


def add_interp_pos_embed(tokens: torch.Tensor, pos_embed: torch.Tensor, grid_sizes: torch.Tensor,
                         cu_seqlens: torch.Tensor, *, num_prefix_tokens: int = 0, interpolation: str = "bicubic",
                         antialias: bool = True, align_corners: bool = False,
                         backend: Optional[str] = None, base_grid=None, mode: Optional[str] = None) -> torch.Tensor:
    """tokens + every sequence's resampled positional embedding, in one pass.

    Each packed sequence is ``num_prefix_tokens`` prefix tokens (class / register tokens:
    nothing added) followed by its h_i*w_i patch tokens, row-major, which get
    ``interp_pos_embed(pos_embed, grid_sizes, ...)``'s block i. The sum is computed in
    float32 and rounded once to tokens' dtype. A pos_embed in timm's flat layout with its
    own prefix entries, (1, num_prefix_tokens + Gh*Gw, D) (timm's default
    no_embed_class=False), adds those entries to every sequence's prefix tokens, as timm does.

    Args:
        tokens: (T, D) packed tokens; float16, bfloat16, float32 (float64: reference).
        pos_embed: (Gh, Gw, D) base grid, same device (any of those dtypes), or a timm layout
            (see interp_pos_embed; base_grid=(Gh, Gw) names its grid).
        grid_sizes: int32 (S, 2), (h_i, w_i) >= 0 (0: no patch tokens).
        cu_seqlens: int32 (S+1,): cu_seqlens[i+1] - cu_seqlens[i] == num_prefix_tokens + h_i*w_i.
        num_prefix_tokens, interpolation, antialias, align_corners, backend, base_grid: see
            above and interp_pos_embed (``mode=`` is interpolation's deprecated alias).

    Returns (T, D) in tokens' dtype. Gradients flow to tokens (identity) and pos_embed.
    Validating grid_sizes against cu_seqlens reads both on the host (see set_validation).
    """
    mode = resolve_interpolation(_ADD_OP, interpolation, mode)
    pos_embed, prefix_pos = read_pos_embed(_ADD_OP, pos_embed, num_prefix_tokens, base_grid)
    _check_options(_ADD_OP, mode, antialias, align_corners)
    check_tensor(_ADD_OP, "tokens", tokens, ndim=2, dtypes=_DTYPES)
    _check_grid_inputs(_ADD_OP, pos_embed, grid_sizes)
    check_tensor(_ADD_OP, "pos_embed", pos_embed, device=tokens.device)
    if tokens.shape[1] != pos_embed.shape[2]:
        raise ValueError(f"{_ADD_OP}: tokens has {tokens.shape[1]} channels but pos_embed has D={pos_embed.shape[2]}")
    num_prefix_tokens = check_int(_ADD_OP, "num_prefix_tokens", num_prefix_tokens, minimum=0)
    num_seqs = check_cu_seqlens(_ADD_OP, "cu_seqlens", cu_seqlens, total=tokens.shape[0],
                                total_name="tokens.shape[0]", device=tokens.device)
    if num_seqs != grid_sizes.shape[0]:
        raise ValueError(f"{_ADD_OP}: cu_seqlens describes {num_seqs} sequences but grid_sizes has "
                         f"{grid_sizes.shape[0]}")
    if value_checks_enabled(grid_sizes, cu_seqlens):
        grids = _grid_values(_ADD_OP, grid_sizes)
        lengths = cu_seqlens.detach().to("cpu", torch.int64).diff()
        expected = num_prefix_tokens + grids.prod(1)
        if not torch.equal(lengths, expected):
            i = int(torch.nonzero(lengths != expected)[0])
            raise ValueError(
                f"{_ADD_OP}: sequence {i} has {int(lengths[i])} tokens in cu_seqlens but num_prefix_tokens + h*w = "
                f"{num_prefix_tokens} + {int(grids[i, 0])}*{int(grids[i, 1])} = {int(expected[i])} from grid_sizes")
    name = _resolve(_ADD_OP, backend, pos_embed, tokens)
    out = add_interp_pos_embed_op(tokens.contiguous(), pos_embed.contiguous(), grid_sizes.contiguous(),
                                  cu_seqlens.contiguous(), num_prefix_tokens, mode, antialias, align_corners, name)
    return out if prefix_pos is None else add_prefix_pos(out, prefix_pos, cu_seqlens)
