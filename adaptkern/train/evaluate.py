"""Held-out evaluation: the mean loss over the task's fixed held-out set, summed exactly
over ranks, with the evaluation's FLOPs booked in the ledger under phase "eval" (kind
"eval", so they never count as training compute)."""

import math

import torch

from . import distributed


def evaluate(task, model, shape, ledger, index: int, flops, device, *, with_error: bool = False):
    """Mean held-out loss of ``model`` (the unwrapped module) at ``shape``; with
    ``with_error`` also its standard error (per-example loss std / sqrt(count): the eval's
    own noise, what a fixed held-out set of this size leaves).

    Each rank scores its share of the held-out set; losses, squares and counts are summed
    over ranks (one float64 all_reduce, and one host sync at the end, not per batch).
    """
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    squares = torch.zeros((), dtype=torch.float64, device=device)
    count = spent = samples = tokens = 0
    with torch.no_grad():
        for batch in task.eval_batches(shape, distributed.rank(), distributed.world_size(), device):
            # Uniform batches: shape, images/windows and tokens fix the forward's FLOPs.
            key = repr(("eval", shape, batch.samples, batch.tokens))
            losses, f = flops.forward(key, lambda: task.loss(model, batch, shape, reduction="none"))
            losses = losses.double()
            total += losses.sum()
            squares += (losses * losses).sum()
            count += task.eval_count(batch)
            spent, samples, tokens = spent + f, samples + batch.samples, tokens + batch.tokens
    ledger.record(index, shape, {"eval": spent}, samples=samples, tokens=tokens, kind="eval")
    model.train(was_training)
    loss_sum, square_sum, n = distributed.sum_floats([float(total), float(squares), count], device)
    if n == 0:
        raise ValueError(f"evaluate: the held-out set of {type(task).__name__} is empty")
    mean = loss_sum / n
    if not with_error:
        return mean
    variance = max(square_sum / n - mean * mean, 0.0) * n / max(n - 1, 1)
    return mean, math.sqrt(variance / n)
