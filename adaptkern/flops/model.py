"""Exact FLOPs of one training step of a whole model, per layer type and phase.

``count_step(model, loss_fn)`` runs ``loss_fn()`` (the forward, returning a scalar loss),
then ``loss.backward()`` (and ``optimizer.step()`` when given) under
``torch.utils.flop_counter.FlopCounterMode``: PyTorch counts its matmuls, adaptkern's ops
count themselves through their registered formulas (allowed attention pairs from the real
``cu_seqlens``, patch grids, interpolation taps). FlopCounterMode's module tracker says which
module each op ran in (backward included); every op is booked to its innermost module and
that module to a layer type (``LAYER_TYPES``):

    attention     the attention core (QK^T and PV, forward 4*Hq*D per allowed pair)
    attn_linear   the q/k/v and output projections
    mlp           the feed-forward layers
    patch_embed   the per-token patch-embedding product
    patch_resize  the PI-resize of the patch-embedding weight: once per call, not per image
    pos_embed     the positional-embedding interpolation
    embedding     token-embedding lookups (0: a lookup is no multiply-add)
    head          the output layer
    other         anything else, including what ran outside the model (the loss)

``compute=False`` counts without doing the arithmetic: under FlopCounterMode, an inner
dispatch mode answers the heavy floating-point ops (matmuls, convolutions, attention,
softmax, adaptkern's ops) with uninitialized tensors of the shape their meta kernels give,
while everything else, index arithmetic (cu_seqlens, grids, positions) included, runs for
real. FlopCounterMode sees the same ops with the same shapes and index values, so the
counts are identical (tests/test_flops_model.py checks it) and a ViT-L step costs little
more than the per-op Python overhead. The values are meaningless, so this is exact only
for models whose shapes do not depend on floating-point values (no data-dependent
routing); the parameters' gradients are restored afterwards, and no optimizer may run.
"""

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.flop_counter import FlopCounterMode

_OP = "adaptkern.flops.count_step"
LAYER_TYPES = ("attention", "attn_linear", "mlp", "patch_embed", "patch_resize", "pos_embed", "embedding", "head",
               "other")
PHASES = ("forward", "backward", "optimizer")

_aten = torch.ops.aten
_ATTENTION_OPS = {"adaptkern.varlen_attn_fwd", "adaptkern.varlen_attn_bwd"} | {
    f"aten.{name}" for name in (
        "_scaled_dot_product_efficient_attention", "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_efficient_attention_backward",
        "_scaled_dot_product_flash_attention_backward", "_scaled_dot_product_cudnn_attention_backward",
        "_flash_attention_forward", "_flash_attention_backward", "_efficient_attention_forward",
        "_efficient_attention_backward", "_scaled_dot_product_flash_attention_for_cpu")}
_ANSWERED = {_aten.mm, _aten.addmm, _aten.bmm, _aten.baddbmm, _aten.convolution, _aten.convolution_backward,
             _aten._scaled_dot_product_flash_attention_for_cpu, _aten._softmax, _aten._softmax_backward_data,
             _aten._log_softmax, _aten._log_softmax_backward_data}


@dataclass
class StepFlops:
    """FLOPs per phase and layer type: ``counts[phase][layer]`` (ints; absent = 0).

    Supports ``a + b`` and ``k * a`` (int k), so a batch's count can be composed from
    per-sample and per-call parts.
    """

    counts: dict = field(default_factory=dict)

    def get(self, phase=None, layer=None) -> int:
        """FLOPs of one phase (or all) and one layer type (or all)."""
        if phase is not None and phase not in PHASES:
            raise ValueError(f"StepFlops.get: phase must be one of {PHASES} or None, got {phase!r}")
        if layer is not None and layer not in LAYER_TYPES:
            raise ValueError(f"StepFlops.get: layer must be one of {LAYER_TYPES} or None, got {layer!r}")
        return sum(v for p, layers in self.counts.items() if phase in (None, p)
                   for lay, v in layers.items() if layer in (None, lay))

    @property
    def forward(self) -> int:
        return self.get("forward")

    @property
    def backward(self) -> int:
        return self.get("backward")

    @property
    def total(self) -> int:
        """Forward + backward (the optimizer, if counted, is separate: ``get("optimizer")``)."""
        return self.forward + self.backward

    def by_layer(self, phase=None) -> dict:
        """{layer type: FLOPs} over ``phase`` (default forward + backward), every type listed."""
        phases = ("forward", "backward") if phase is None else (phase,)
        return {lay: sum(self.get(p, lay) for p in phases) for lay in LAYER_TYPES}

    def only(self, layers) -> "StepFlops":
        """The counts of the given layer types alone."""
        return StepFlops({p: {lay: v for lay, v in d.items() if lay in layers} for p, d in self.counts.items()})

    def __add__(self, other):
        if not isinstance(other, StepFlops):
            return NotImplemented
        out = {p: dict(d) for p, d in self.counts.items()}
        for p, layers in other.counts.items():
            for lay, v in layers.items():
                out.setdefault(p, {})[lay] = out.get(p, {}).get(lay, 0) + v
        return StepFlops(out)

    def __sub__(self, other):
        return self + (-1) * other

    def __rmul__(self, k):
        if isinstance(k, bool) or not isinstance(k, int):
            return NotImplemented
        return StepFlops({p: {lay: k * v for lay, v in d.items()} for p, d in self.counts.items()})

    def to_dict(self) -> dict:
        out = {p: {lay: self.get(p, lay) for lay in LAYER_TYPES} for p in PHASES}
        out["total"] = self.by_layer()
        return out


def _op_name(op) -> str:
    return str(op)  # OpOverloadPacket: "aten.mm", "adaptkern.varlen_attn_fwd"


def _module_kinds(model: nn.Module) -> dict:
    """{tracker name: (own kind or None, module)}: names as FlopCounterMode's ModuleTracker
    gives them (root class name, then dotted attribute paths)."""
    from ..models.transformer import VarlenSelfAttention
    from ..nn import FlexiPatchEmbed, InterpPosEmbed

    root = type(model).__name__
    kinds = {}
    for path, module in model.named_modules():
        last = path.rsplit(".", 1)[-1]
        if isinstance(module, FlexiPatchEmbed) or last == "patch_embed":
            kind = "patch_embed"
        elif isinstance(module, InterpPosEmbed) or last == "pos_embed":
            kind = "pos_embed"
        elif isinstance(module, nn.Embedding):
            kind = "embedding"
        elif isinstance(module, VarlenSelfAttention) or last in ("attn", "attention", "self_attn"):
            kind = "attention"
        elif last == "mlp":
            kind = "mlp"
        elif path == "head":
            kind = "head"
        else:
            kind = None
        kinds[f"{root}.{path}" if path else root] = kind
    return kinds


def _layer(op: str, name: str, kinds: dict) -> str:
    if op in _ATTENTION_OPS:
        return "attention"
    probe = name
    while probe:
        kind = kinds.get(probe)
        if kind == "attention":
            return "attention" if probe == name else "attn_linear"
        if kind == "patch_embed":
            return "patch_embed" if op.startswith("adaptkern.patch_embed") or "convolution" in op else "patch_resize"
        if kind is not None:
            return kind
        probe = probe.rpartition(".")[0]
    return "other"


def _exclusive(counts: dict) -> dict:
    """{module name: {op: FLOPs}} counted in that module and none of its tracked children;
    what ran outside every module is under "" (FlopCounterMode books an op to every active
    module, so inclusive counts telescope)."""
    names = [n for n in counts if n != "Global"]

    def parent(name):
        probe = name.rpartition(".")[0]
        while probe and probe not in counts:
            probe = probe.rpartition(".")[0]
        return probe  # "" at the top

    out = {n: dict(counts[n]) for n in names}
    out[""] = dict(counts.get("Global", {}))
    for n in names:
        mine = out.setdefault(parent(n), {})
        for op, v in counts[n].items():
            mine[op] = mine.get(op, 0) - v
    for n, ops in out.items():
        for op, v in ops.items():
            if v < 0:
                raise RuntimeError(f"{_OP}: FlopCounterMode's module tracker booked {op} to overlapping modules "
                                   f"(exclusive count {v} in {n or 'the top level'}); per-layer attribution is "
                                   "not possible for this model")
    return out


def _by_layer(exclusive: dict, kinds: dict) -> dict:
    layers = {}
    for name, ops in exclusive.items():
        for op, v in ops.items():
            if v:
                lay = _layer(_op_name(op), name, kinds)
                layers[lay] = layers.get(lay, 0) + v
    return layers


def _snapshot(counter) -> dict:
    return {name: {_op_name(op): v for op, v in ops.items()} for name, ops in counter.get_flop_counts().items()}


def _difference(after: dict, before: dict) -> dict:
    return {name: {op: v - before.get(name, {}).get(op, 0) for op, v in ops.items()} for name, ops in after.items()}


class _ShapesOnly(TorchDispatchMode):
    """Answer the heavy floating-point ops (``_ANSWERED``: matmuls, convolutions, attention,
    (log-)softmax, and adaptkern's ops) with uninitialized outputs shaped by their meta
    kernels; everything else runs for real, so index arithmetic (cu_seqlens, grids,
    positions) and the FLOP formulas (which use no matmul) see true values. An op whose meta
    kernel cannot answer (none registered, data-dependent size) runs for real too."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket in _ANSWERED or func.namespace == "adaptkern":
            tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
            meta = None
            if tensors and all(t.device.type != "meta" for t in tensors):
                try:
                    meta = func(*tree_map(_to_meta, args), **tree_map(_to_meta, kwargs))
                except (NotImplementedError, RuntimeError):
                    meta = None
            outs = [o for o in tree_flatten(meta)[0] if isinstance(o, torch.Tensor)]
            if outs and all(o.is_floating_point() for o in outs):
                device = tensors[0].device
                return tree_map(lambda o: torch.empty_strided(o.shape, o.stride(), dtype=o.dtype, device=device)
                                if isinstance(o, torch.Tensor) else o, meta)
        return func(*args, **kwargs)


def _to_meta(value):
    return value.to("meta") if isinstance(value, torch.Tensor) else value


def count_step(model: nn.Module, loss_fn, *, optimizer=None, compute: bool = True) -> StepFlops:
    """Count one training step exactly, per phase and layer type.

    Args:
        model: the nn.Module the step trains (its submodules name the layer types).
        loss_fn: a zero-argument callable running the forward and returning a scalar loss
            tensor, e.g. ``lambda: F.cross_entropy(model(images, 16), labels)``.
        optimizer: stepped after the backward and booked as phase "optimizer" (its element-
            wise updates have no FLOP formula in FlopCounterMode, so it is usually 0).
        compute: False counts without the arithmetic (see the module doc): identical
            counts, much faster, values meaningless; ``optimizer`` must then be None.

    Returns a StepFlops. The parameters' gradients are left as the step made them with
    ``compute=True``; with ``compute=False`` they are restored to what they were before.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"{_OP}: model must be an nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"{_OP}: loss_fn must be a callable returning the loss, got {type(loss_fn).__name__}")
    if optimizer is not None and not compute:
        raise ValueError(f"{_OP}: optimizer must be None with compute=False (its step would write "
                         "meaningless values into the parameters)")
    kinds = _module_kinds(model)
    saved = None if compute else [(p, p.grad) for p in model.parameters()]
    if saved is not None:
        for p, _ in saved:
            p.grad = None
    phases = {}
    try:
        with contextlib.nullcontext() if compute else _ShapesOnly():
            with FlopCounterMode(display=False) as counter:
                loss = loss_fn()
                if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                    shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else ""
                    raise ValueError(f"{_OP}: loss_fn must return a scalar tensor, got {type(loss).__name__}{shape}")
                marks = [_snapshot(counter)]
                loss.backward()
                marks.append(_snapshot(counter))
                if optimizer is not None:
                    optimizer.step()
                marks.append(_snapshot(counter))
    finally:
        if saved is not None:
            for p, grad in saved:
                p.grad = grad
    previous = {}
    for phase, mark in zip(PHASES, marks):
        phases[phase] = _by_layer(_exclusive(_difference(mark, previous)), kinds)
        previous = mark
    return StepFlops({p: d for p, d in phases.items() if d})


def num_params(model: nn.Module, *, embedding: bool = True) -> int:
    """Parameters of ``model``; ``embedding=False`` leaves out the input embeddings (token
    embedding tables, patch embedding, positional embedding): Kaplan et al.'s N."""
    from ..nn import FlexiPatchEmbed, InterpPosEmbed

    if embedding:
        return sum(p.numel() for p in model.parameters())
    skip = {id(p) for m in model.modules() if isinstance(m, (nn.Embedding, FlexiPatchEmbed, InterpPosEmbed))
            for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)
