"""Custom ops that skip torch.library's Python layers in plain eager mode.

A ``torch.library.custom_op`` call runs several Python layers before and after its
implementation: the autograd kernel, a redispatch, output alias checks, and for every
forward with gradients ``fill_defaults``, which rebuilds the schema's argument list once
per argument (47 us for a 12-argument op on this 2-core machine). On CPU they cost about
as much as a small attention call itself (benchmarks/eager_overhead.py measures them).

:class:`Op` wraps one custom op and its Python implementation. Calling it runs the
implementation directly, with the op's own registered ``setup_context`` and
``backward`` in one ``torch.autograd.Function``, when that is indistinguishable from
calling the op: CPU or CUDA tensors, no tensor subclass, no torch.compile / export
tracing, no dispatch mode (FlopCounterMode, FakeTensorMode, ...), no torch function mode,
no functorch transform, no autocast. Anywhere else it calls the op, so FLOP counting,
tracing and fake tensors see the custom op as before. The results are the same either
way: the same code runs.
"""

import inspect
import itertools
import typing

import torch

_PLAIN = (torch.Tensor, torch.nn.Parameter)
# Whether a dispatch mode, a torch function mode or a functorch transform is active: private
# torch predicates (torch 2.11 to 2.13 have them); a torch without one always calls the op.
_MODES = tuple(getattr(torch._C, name, None) for name in (
    "_len_torch_dispatch_stack", "_is_torch_function_mode_enabled", "_are_functorch_transforms_active"))
_MODES = _MODES if all(_MODES) else None


def _route(args, differentiable):
    """How to run an op on ``args`` (its arguments, or just those that can hold tensors):
    "op" (through the dispatcher), "impl" (the implementation, no graph to record) or
    "function" (the implementation and the op's autograd in one autograd.Function)."""
    if torch.compiler.is_compiling():  # first: Dynamo traces this code and must see nothing else
        return "op"
    if _MODES is None or any(active() for active in _MODES):
        return "op"
    on_cpu = on_cuda = requires_grad = list_requires_grad = False
    for arg in args:
        in_list = type(arg) is list or type(arg) is tuple
        for tensor in arg if in_list else (arg,):
            if not isinstance(tensor, torch.Tensor):
                continue
            if type(tensor) not in _PLAIN:  # a subclass
                return "op"
            if tensor.is_cpu:
                on_cpu = True
            elif tensor.is_cuda:
                on_cuda = True
            else:  # meta and other devices go through the op
                return "op"
            if tensor.requires_grad:
                requires_grad = True
                list_requires_grad |= in_list
    if (on_cpu and torch.is_autocast_enabled("cpu")) or (on_cuda and torch.is_autocast_enabled("cuda")):
        return "op"
    if not (requires_grad and torch.is_grad_enabled()):
        return "impl"
    # No autograd to run here, or a tensor in a list needs a gradient (autograd.Function
    # does not track tensors in lists): the op handles these.
    return "function" if differentiable and not list_requires_grad else "op"


class _Function(torch.autograd.Function):
    """An :class:`Op`'s implementation with its registered autograd; the Op comes last."""

    @staticmethod
    def forward(ctx, *args):
        op, args = args[-1], args[:-1]
        output = op.impl(*args)
        op.setup_context(ctx, args, output)
        ctx.op_backward = op.backward
        return output

    @staticmethod
    def backward(ctx, *grads):
        needs_input_grad = ctx.needs_input_grad
        ctx.needs_input_grad = needs_input_grad[:-1]  # as the op's backward sees it
        try:
            grads = ctx.op_backward(ctx, *grads)
        finally:
            ctx.needs_input_grad = needs_input_grad
        grads = grads if isinstance(grads, tuple) else (grads,)
        # A list argument's gradient (its tensors need none on this route) is None here.
        return (*(None if isinstance(g, (list, tuple)) else g for g in grads), None)


def _holds_tensors(hint):
    """Whether an argument annotated ``hint`` can hold a tensor (Tensor, Optional[Tensor],
    list[Tensor], ...)."""
    return hint is torch.Tensor or any(_holds_tensors(arg) for arg in typing.get_args(hint))


def custom_op(name):
    """Decorator: ``@custom_op("adaptkern::name")`` on an implementation gives its :class:`Op`."""
    return lambda impl: Op(name, impl)


class Op:
    """A custom op named ``name`` (``torch.library.custom_op``, no mutated arguments) made
    from ``impl``, callable like the op. ``register_autograd`` and ``register_fake`` as on
    the op; the op itself is ``.op`` (``torch.ops.<name>`` is the same op)."""

    def __init__(self, name, impl):
        self.op = torch.library.custom_op(name, impl, mutates_args=())
        self.impl, self.setup_context, self.backward = impl, None, None
        hints = typing.get_type_hints(impl)
        # A list of tensors returned is not tracked by autograd.Function: the op handles it.
        self._list_output = typing.get_origin(hints.get("return")) is list
        # Which positional arguments _route has to look at (the others are ints, floats, strings).
        self._tensor_args = tuple(_holds_tensors(hints.get(param)) for param in inspect.signature(impl).parameters)

    def register_fake(self, fn):
        return self.op.register_fake(fn)

    def register_autograd(self, backward, *, setup_context):
        self.op.register_autograd(backward, setup_context=setup_context)
        self.backward, self.setup_context = backward, setup_context

    def __call__(self, *args):
        differentiable = self.backward is not None and not self._list_output
        route = _route(itertools.compress(args, self._tensor_args), differentiable)
        if route == "impl":
            return self.impl(*args)
        if route == "function":
            return _Function.apply(*args, self)
        return self.op(*args)
