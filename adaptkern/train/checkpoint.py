"""Checkpoints of a training run: model, optimizer, step, FLOP ledgers and FLOP-signature
caches (one per rank: each holds that rank's own counts, so the exact cross-rank sum
survives a resume), the eval history and every RNG state. The data position is the step
itself (batches are a pure function of the step), so restoring the step restores the data
stream."""

import os
import random

import numpy as np
import torch
import torch.distributed as dist

from . import distributed
from .io import torch_save

CHECKPOINT = "checkpoint.pt"
_FORMAT = "adaptkern.train.checkpoint/1"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _gather(obj):
    """Every rank's ``obj`` as a list (collective under torch.distributed)."""
    if not distributed.active():
        return [obj]
    out = [None] * distributed.world_size()
    dist.all_gather_object(out, obj)
    return out


def save(folder, *, identity: dict, model, optimizer, ledger, flop_cache: list, run_state: dict) -> None:
    """Write ``folder/checkpoint.pt`` atomically (from rank 0; a collective under DDP).

    Args:
        identity: the run's configuration; a resume must present the same one.
        model: the unwrapped module; optimizer: its optimizer.
        ledger: this rank's FlopLedger (gathered from every rank).
        flop_cache: this rank's FLOP-signature cache (``SignatureFlopCache.dump()``;
            gathered from every rank: its per-phase counts are this rank's).
        run_state: step, compute, evals, ... (identical on every rank; rank 0's is saved).
    """
    ledgers = _gather(ledger.to_dict())
    flop_caches = _gather(flop_cache)
    rngs = _gather(rng_state())
    if distributed.is_main():
        torch_save(os.path.join(folder, CHECKPOINT), {
            "format": _FORMAT, "identity": identity, "world_size": distributed.world_size(),
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "ledgers": ledgers, "rng": rngs,
            "flop_caches": flop_caches, "run_state": run_state})
    distributed.barrier()


def load(folder, identity: dict):
    """The checkpoint in ``folder`` (a dict), or None if there is none. Raises ValueError if
    it belongs to a different run (identity or world size differ). ``flop_caches`` holds one
    cache per rank (in checkpoints written before it existed: rank 0's
    ``run_state["flop_cache"]`` for every rank, right while every rank's share is equal)."""
    path = os.path.join(folder, CHECKPOINT)
    if not os.path.exists(path):
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # truncated or corrupt: torch.load raises many kinds (EOFError, RuntimeError ...)
        detail = str(error).split(". ")[0]  # torch's own advice runs on for lines
        raise ValueError(f"{path} cannot be read, it is truncated or corrupt ({type(error).__name__}: {detail}); "
                         "delete it to retrain this run from its start, or resume from another output folder") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != _FORMAT:
        raise ValueError(f"{path}: not an adaptkern training checkpoint")
    if ckpt["identity"] != identity:
        differ = sorted(k for k in set(identity) | set(ckpt["identity"])
                        if identity.get(k) != ckpt["identity"].get(k))
        raise ValueError(f"{path} was written by a different run (differs in: {', '.join(differ)}); use another "
                         "output folder, or delete it to start over")
    if ckpt["world_size"] != distributed.world_size():
        raise ValueError(f"{path} was written by {ckpt['world_size']} processes; resume it with the same number "
                         f"(now {distributed.world_size()})")
    if "flop_caches" not in ckpt:
        ckpt["flop_caches"] = [ckpt["run_state"].pop("flop_cache", [])] * ckpt["world_size"]
    return ckpt
