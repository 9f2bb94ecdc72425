"""Exact FLOPs of one training step of a whole model, per layer type and phase.

``count_step(model, loss_fn)`` runs ``loss_fn()`` (the forward, returning a scalar loss),
then ``loss.backward()`` (and ``optimizer.step()`` when given) under a dispatch mode that
counts every op with the formulas ``FlopCounterMode`` uses (``flop_registry``): PyTorch's for
its matmuls, adaptkern's registered ones for its ops (allowed attention pairs from the real
``cu_seqlens``, patch grids, interpolation taps), so the totals equal FlopCounterMode's.
Each op is booked to the modules it ran in (in the backward: the modules whose forward
made the autograd node being run), and a layer type follows from the structure of those
calls, not from module names (``_Attribution.by_layer``), so timm, transformers and any
other model work as they are (``LAYER_TYPES``):

    attention     the attention core (QK^T and PV, forward 4*Hq*D per allowed pair)
    attn_linear   the q/k/v and output projections
    mlp           the feed-forward layers
    patch_embed   the per-token patch-embedding product
    patch_resize  the PI-resize of the patch-embedding weight: once per call, not per image
    pos_embed     the positional-embedding interpolation
    embedding     token-embedding lookups (0: a lookup is no multiply-add)
    head          the output layer
    other         anything else, including what ran outside the model (the loss)

``compute=False`` counts without doing the arithmetic: under the counter, an outer
dispatch mode answers the heavy floating-point ops (matmuls, convolutions, attention,
softmax, adaptkern's ops) with uninitialized tensors of the shape their meta kernels give,
while everything else, index arithmetic (cu_seqlens, grids, positions) included, runs for
real. The counter sees the same ops with the same shapes and index values, so the
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
from torch.utils.flop_counter import flop_registry

from .._checks import check_bool

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
        "_efficient_attention_backward", "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_flash_attention_for_cpu_backward")}
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


_PATCH_OPS = ("adaptkern.patch_embed", "aten.convolution")
# PyTorch's CPU flash attention (what SDPA runs on CPU) has no formula in FlopCounterMode;
# it is counted with torch's own formulas for the CUDA flash op (same leading arguments:
# grad_out / query, key, value; like them, blind to the causal mask).
_EXTRA_FORMULAS = {
    _aten._scaled_dot_product_flash_attention_for_cpu: flop_registry.get(_aten._scaled_dot_product_flash_attention),
    _aten._scaled_dot_product_flash_attention_for_cpu_backward:
        flop_registry.get(_aten._scaled_dot_product_flash_attention_backward),
}
_POS_OPS = ("adaptkern.interp_pos_embed", "adaptkern.add_interp_pos_embed")


class _Attribution(TorchDispatchMode):
    """Counts every op with PyTorch's FLOP formulas (``flop_registry``: the formulas
    FlopCounterMode uses, adaptkern's registered ones included) and books it to the chain
    of modules it ran in: in the forward the modules being called (global forward hooks),
    in the backward the modules whose forward created the autograd node being run
    (autograd sequence numbers, recorded per module call). Nothing depends on module names
    or on what a module returns, so pass-through modules (nn.Identity, Dropout) and tuple
    outputs are fine."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.members = {id(m) for m in model.modules()}
        self.root = id(model)
        self.stack = []  # chain of (module id, call index) being called
        self.calls = []  # per call: [first autograd seq, end seq, chain]
        self.records = []  # (phase, chain, op, flops)
        self.phase = "forward"
        self._cache = {}

    # -- module calls ------------------------------------------------------------
    def _pre(self, module, args):
        if id(module) in self.members:
            index = len(self.calls)
            chain = tuple(self.stack) + ((id(module), index),)
            self.calls.append([torch._C._autograd._get_sequence_nr(), None, chain])
            self.stack.append((id(module), index))

    def _post(self, module, args, output):
        if id(module) in self.members and self.stack and self.stack[-1][0] == id(module):
            _, index = self.stack.pop()
            self.calls[index][1] = torch._C._autograd._get_sequence_nr()

    @contextlib.contextmanager
    def hooks(self):
        pre = nn.modules.module.register_module_forward_pre_hook(self._pre)
        post = nn.modules.module.register_module_forward_hook(self._post, always_call=True)
        try:
            with self:
                yield self
        finally:
            pre.remove()
            post.remove()

    def _backward_chain(self):
        node = torch._C._current_autograd_node()
        if node is None:
            return ()
        seq = node._sequence_nr()
        if seq not in self._cache:
            inside = [c for c in self.calls if c[1] is not None and c[0] <= seq < c[1]]
            self._cache[seq] = max(inside, key=lambda c: len(c[2]))[2] if inside else ()
        return self._cache[seq]

    # -- ops -----------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func.overloadpacket) or _EXTRA_FORMULAS.get(func.overloadpacket)
        if formula is not None:
            flops = formula(*args, **kwargs, out_val=out)
            chain = tuple(self.stack) if self.phase == "forward" else self._backward_chain()
            self.records.append((self.phase, chain, _op_name(func.overloadpacket), int(flops)))
        return out

    # -- layer types ---------------------------------------------------------------
    def by_layer(self) -> dict:
        """{phase: {layer type: FLOPs}} from the records, by the structure of the calls.

        The innermost module that ran an attention core is an attention module (its other
        products are attn_linear); its parent is a block (products in a block outside the
        attention module: mlp); the innermost module that ran a patch projection (adaptkern's
        patch embedding or a convolution) holds the patch embedding (its other products are
        the PI-resize); products in the model after the last block: head; the rest: other."""
        kinds = {"attention": set(), "patch": set()}
        forward_chains = [(op, chain) for phase, chain, op, _ in self.records if phase == "forward"]
        for op, chain in forward_chains:
            kind = "attention" if op in _ATTENTION_OPS else "patch" if op.startswith(_PATCH_OPS) else None
            inner = chain[-1][0] if chain else self.root
            if kind and inner != self.root:
                kinds[kind].add(inner)
        blocks = set()
        for call in self.calls:
            chain = call[2]
            if chain[-1][0] in kinds["attention"] and len(chain) > 1 and chain[-2][0] != self.root:
                blocks.add(chain[-2][0])
        block_end = max((c[1] for c in self.calls if c[2][-1][0] in blocks and c[1] is not None), default=None)
        out = {}
        for phase, chain, op, flops in self.records:
            if flops:
                layer = self._layer(op, chain, kinds, blocks, block_end)
                out.setdefault(phase, {})
                out[phase][layer] = out[phase].get(layer, 0) + flops
        return out

    def _layer(self, op, chain, kinds, blocks, block_end):
        if op in _ATTENTION_OPS:
            return "attention"
        if op.startswith(_PATCH_OPS):
            return "patch_embed"
        if op.startswith(_POS_OPS):
            return "pos_embed"
        if op.startswith("aten.embedding"):
            return "embedding"
        modules = {m for m, _ in chain}
        if modules & kinds["attention"]:
            return "attn_linear"
        if modules & kinds["patch"]:
            return "patch_resize"
        if modules & blocks:
            return "mlp"
        if chain and block_end is not None and self.calls[chain[-1][1]][0] >= block_end:
            return "head"
        return "other"


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
    check_bool(_OP, "compute", compute)
    if optimizer is not None and not compute:
        raise ValueError(f"{_OP}: optimizer must be None with compute=False (its step would write "
                         "meaningless values into the parameters)")
    saved = None if compute else [(p, p.grad) for p in model.parameters()]
    if saved is not None:
        for p, _ in saved:
            p.grad = None
    counter = _Attribution(model)
    try:
        with contextlib.nullcontext() if compute else _ShapesOnly():
            with counter.hooks():
                loss = loss_fn()
                if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                    shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else ""
                    raise ValueError(f"{_OP}: loss_fn must return a scalar tensor, got {type(loss).__name__}{shape}")
                counter.phase = "backward"
                loss.backward()
                if optimizer is not None:
                    counter.phase = "optimizer"
                    optimizer.step()
    finally:
        if saved is not None:
            for p, grad in saved:
                p.grad = grad
    return StepFlops(counter.by_layer())


def num_params(model: nn.Module, *, embedding: bool = True) -> int:
    """Parameters of ``model``; ``embedding=False`` leaves out the input embeddings (token
    embedding tables, patch embedding, positional embedding): Kaplan et al.'s N."""
    from ..nn import FlexiPatchEmbed, InterpPosEmbed

    if not isinstance(model, nn.Module):
        raise TypeError(f"adaptkern.flops.num_params: model must be an nn.Module, got {type(model).__name__}")
    if check_bool("adaptkern.flops.num_params", "embedding", embedding):
        return sum(p.numel() for p in model.parameters())
    skip = {id(p) for m in model.modules() if isinstance(m, (nn.Embedding, FlexiPatchEmbed, InterpPosEmbed))
            for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)
