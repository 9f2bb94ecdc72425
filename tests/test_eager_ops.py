"""adaptkern.ops._eager: in plain eager mode an op runs its implementation and registered
autograd directly; anywhere else (dispatch modes such as FlopCounterMode, autocast, tensor
subclasses, functorch transforms, a tensor in a list that needs a gradient) it goes through
the custom op. Both routes must give bit-identical results and gradients, and each route
must be taken where it should be."""

import contextlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import adaptkern as ak
from adaptkern.ops import _eager
from adaptkern.ops import interp_pos_embed as interp_ops
from adaptkern.ops import patch_embed as patch_ops
from adaptkern.ops import varlen_attention as attention_ops


class _PassThrough(TorchDispatchMode):
    """A dispatch mode that changes nothing but makes every op go through the dispatcher."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def _count_op_calls(monkeypatch, *ops):
    """{op name: number of calls that went through the custom op} while the block runs."""
    counts = {}
    for op in ops:
        counts[op.op._qualname] = 0

        def counted(*args, _op=op.op):
            counts[_op._qualname] += 1
            return _op(*args)
        monkeypatch.setattr(op, "op", counted)
    yield counts


def _attention_case(requires):
    lengths = [5, 0, 3, 7]
    cu = ak.cu_seqlens_from_lengths(lengths)
    total = sum(lengths)
    tensors = [torch.randn(total, 4, 8), torch.randn(total, 2, 8), torch.randn(total, 2, 8)]
    grad_out, grad_lse = torch.randn(total, 4, 8), torch.randn(4, total)
    return lengths, cu, tensors, grad_out, grad_lse


def _attention_run(cu, lengths, tensors, grad_out, grad_lse, requires):
    leaves = [t.clone().requires_grad_(r) for t, r in zip(tensors, requires)]
    out, lse = ak.varlen_attention(*leaves, cu, cu, max(lengths), max(lengths), causal=True, window_size=(3, -1),
                                   return_lse=True, backend="cpu")
    finite = torch.isfinite(lse)
    ((out * grad_out).sum() + (lse[finite] * grad_lse[finite]).sum()).backward()
    return [out.detach(), lse.detach()] + [leaf.grad for leaf in leaves]


@pytest.mark.parametrize("requires", [(True, True, True), (True, False, False), (False, True, False),
                                      (False, False, True)])
def test_attention_direct_route_matches_the_op_bitwise(monkeypatch, requires):
    lengths, cu, tensors, grad_out, grad_lse = _attention_case(requires)
    with _count_op_calls(monkeypatch, attention_ops.varlen_attn_fwd, attention_ops.varlen_attn_bwd) as counts:
        direct = _attention_run(cu, lengths, tensors, grad_out, grad_lse, requires)
        assert counts == {"adaptkern::varlen_attn_fwd": 0, "adaptkern::varlen_attn_bwd": 0}
        with _PassThrough():
            through_op = _attention_run(cu, lengths, tensors, grad_out, grad_lse, requires)
        assert counts == {"adaptkern::varlen_attn_fwd": 1, "adaptkern::varlen_attn_bwd": 1}
    for name, a, b in zip(("out", "lse", "dq", "dk", "dv"), direct, through_op):
        assert (a is None) == (b is None), name
        if a is not None:
            assert torch.equal(a, b), name
    for grad, needed in zip(direct[2:], requires):
        assert (grad is not None) == needed


def test_flop_counter_sees_the_ops_even_when_the_forward_ran_directly():
    lengths, cu, (q, k, v), grad_out, _ = _attention_case(None)
    q.requires_grad_(True)
    out = ak.varlen_attention(q, k, v, cu, cu, max(lengths), max(lengths), causal=True, backend="cpu")
    with FlopCounterMode(display=False) as counter:
        out.backward(grad_out)
    counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    assert counts["adaptkern.varlen_attn_bwd"] == ak.flops.attention_backward_flops(cu, cu, 4, 8, causal=True)
    with FlopCounterMode(display=False) as counter:
        ak.varlen_attention(q, k, v, cu, cu, max(lengths), max(lengths), causal=True, backend="cpu")
    counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    assert counts["adaptkern.varlen_attn_fwd"] == ak.flops.attention_flops(cu, cu, 4, 8, causal=True)


def test_patch_embed_routes_and_gradients(monkeypatch):
    weight = torch.randn(6, 3, 4, 4, requires_grad=True)
    bias = torch.randn(6, requires_grad=True)
    images = [torch.randn(3, 8, 12), torch.randn(3, 16, 8)]
    ops = (patch_ops.patch_embed_packed, patch_ops.patch_embed_packed_grad_input,
           patch_ops.patch_embed_packed_grad_weight)

    def run(images_grad):
        leaves = [x.clone().requires_grad_(images_grad) for x in images]
        for p in (weight, bias):
            p.grad = None
        tokens = ak.flexi_patch_embed_packed(leaves, weight, bias, 4, backend="cpu").tokens
        (tokens * torch.arange(tokens.numel()).view_as(tokens).sin()).sum().backward()
        return [tokens.detach(), weight.grad, bias.grad] + [x.grad for x in leaves]

    with _count_op_calls(monkeypatch, *ops) as counts:
        direct = run(False)  # only weight and bias need gradients: the direct route
        assert set(counts.values()) == {0}
        with _PassThrough():
            through_op = run(False)
        assert counts["adaptkern::patch_embed_packed"] == 1
        # Images in a list that need gradients: autograd.Function cannot track them, the op does.
        with_images = run(True)
        assert counts["adaptkern::patch_embed_packed"] == 2
    for a, b in zip(direct, through_op):
        assert (a is None and b is None) or torch.equal(a, b)
    assert all(g is not None for g in with_images)
    for a, b in zip(direct[:3], with_images[:3]):
        assert torch.equal(a, b)


def test_interp_routes_match(monkeypatch):
    pos = torch.randn(5, 5, 8, requires_grad=True)
    grids = torch.tensor([[3, 4], [6, 2]], dtype=torch.int32)
    cu = torch.tensor([0, 13, 26], dtype=torch.int32)
    tokens = torch.randn(26, 8, requires_grad=True)

    def run():
        pos.grad = tokens.grad = None
        out = ak.add_interp_pos_embed(tokens, pos, grids, cu, num_prefix_tokens=1, backend="cpu")
        (out * out).sum().backward()
        return out.detach(), pos.grad, tokens.grad

    ops = (interp_ops.add_interp_pos_embed_op, interp_ops.interp_pos_embed_backward_op)
    with _count_op_calls(monkeypatch, *ops) as counts:
        direct = run()
        assert set(counts.values()) == {0}
        with _PassThrough():
            through_op = run()
        assert set(counts.values()) == {1}
    for a, b in zip(direct, through_op):
        assert torch.equal(a, b)


def test_route_conditions():
    x = torch.randn(3, requires_grad=True)
    assert _eager._route((x, 1, "cpu"), True) == "function"
    assert _eager._route((x, 1, "cpu"), False) == "op"  # no registered autograd: the op decides
    assert _eager._route((x.detach(), None), True) == "impl"
    with torch.no_grad():
        assert _eager._route((x,), True) == "impl"
    with torch.autocast("cpu"):
        assert _eager._route((x,), True) == "op"
    with FlopCounterMode(display=False):
        assert _eager._route((x,), True) == "op"
    with torch.device("cpu"):  # a torch function mode
        assert _eager._route((x,), True) == "op"
    assert _eager._route(([x.detach(), x.detach()], x), True) == "function"
    assert _eager._route(([x, x.detach()],), True) == "op"

    class Sub(torch.Tensor):
        pass
    assert _eager._route((x.detach().as_subclass(Sub),), True) == "op"
    seen = []
    torch.func.vmap(lambda t: seen.append(_eager._route((t,), True)) or t)(torch.zeros(2, 3))
    assert seen == ["op"]
    assert _eager._route((torch.empty(2, device="meta"),), True) == "op"


def test_direct_route_under_activation_checkpointing():
    lengths, cu, tensors, grad_out, _ = _attention_case(None)

    def attend(q, k, v):
        return ak.varlen_attention(q, k, v, cu, cu, max(lengths), max(lengths), causal=True, backend="cpu")

    grads = []
    for checkpointed in (False, True):
        leaves = [t.clone().requires_grad_() for t in tensors]
        if checkpointed:
            out = torch.utils.checkpoint.checkpoint(attend, *leaves, use_reentrant=False)
        else:
            out = attend(*leaves)
        out.backward(grad_out)
        grads.append([leaf.grad for leaf in leaves])
    for plain, recomputed in zip(*grads):
        assert torch.equal(plain, recomputed)


def test_ops_returning_lists_go_through_the_op_when_a_graph_is_needed(monkeypatch):
    # autograd.Function does not track tensors in a returned list: double backward of the
    # packed patch embedding's grad_input op must go through the op.
    assert patch_ops.patch_embed_packed_grad_input._list_output
    assert not patch_ops.patch_embed_packed._list_output and not attention_ops.varlen_attn_fwd._list_output
    images = [torch.randn(3, 8, 8), torch.randn(3, 4, 8)]
    weight = torch.randn(5, 3, 4, 4)
    grad = torch.randn(6, 5, requires_grad=True)
    with _count_op_calls(monkeypatch, patch_ops.patch_embed_packed_grad_input) as counts:
        grads = patch_ops.patch_embed_packed_grad_input(grad, images, weight, "cpu")
    assert counts["adaptkern::patch_embed_packed_grad_input"] == 1
    sum((g * g).sum() for g in grads).backward()
    assert grad.grad is not None and grad.grad.abs().sum() > 0


def test_a_torch_without_the_mode_predicates_always_calls_the_op(monkeypatch):
    x = torch.randn(3, requires_grad=True)
    assert _eager._route((x,), True) == "function"
    monkeypatch.setattr(_eager, "_MODES", None)
    assert _eager._route((x,), True) == "op" and _eager._route((x.detach(),), True) == "op"


def test_route_reads_every_argument_that_can_hold_a_tensor(monkeypatch):
    # Op.__call__ shows _route only the tensor-typed arguments (Tensor, Optional[Tensor],
    # List[Tensor]), read from the implementation's annotations.
    assert attention_ops.varlen_attn_bwd._tensor_args == (True,) * 9 + (False,) * 7
    assert patch_ops.patch_embed_packed._tensor_args == (True, True, True, False)

    class Sub(torch.Tensor):
        pass

    lengths, cu, tensors, grad_out, grad_lse = _attention_case(None)
    q, k, v = tensors
    out, lse = attention_ops.varlen_attn_fwd(q, k, v, cu, cu, 7, 7, 0.3, True, -1, -1, "cpu")
    args = [grad_out, q, k, v, out, lse, grad_lse, cu, cu, 7, 7, 0.3, True, -1, -1, "cpu"]
    images = [torch.randn(3, 8, 8), torch.randn(3, 4, 8).as_subclass(Sub)]  # a subclass inside the list
    with _count_op_calls(monkeypatch, attention_ops.varlen_attn_bwd, patch_ops.patch_embed_packed) as counts:
        attention_ops.varlen_attn_bwd(*args)
        assert counts["adaptkern::varlen_attn_bwd"] == 0  # plain tensors: run directly
        for position in (0, 6, 8):  # the first, the optional dlse, the last tensor argument
            attention_ops.varlen_attn_bwd(*args[:position], args[position].as_subclass(Sub), *args[position + 1:])
        patch_ops.patch_embed_packed(images, torch.randn(5, 3, 4, 4), None, "cpu")
    assert counts == {"adaptkern::varlen_attn_bwd": 3, "adaptkern::patch_embed_packed": 1}
