"""torch.distributed helpers for the training loop: works unchanged under ``torchrun``
(DistributedDataParallel; gloo on CPU, nccl on GPU) and as a single process."""

import os

import torch
import torch.distributed as dist


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def setup(device: torch.device) -> torch.device:
    """Join the process group torchrun describes (WORLD_SIZE > 1 in the environment), if
    not joined yet: nccl for CUDA (one GPU per local rank), gloo otherwise. Returns the
    device this rank trains on."""
    device = torch.device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not active():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % max(torch.cuda.device_count(), 1))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def collective_device(device: torch.device) -> torch.device:
    """Where tensors for collectives live: the GPU under nccl, the CPU under gloo."""
    return device if active() and dist.get_backend() == "nccl" else torch.device("cpu")


def sum_ints(values, device) -> list:
    """Exact sum over ranks of a list of non-negative ints below 2^62 each (int64 all_reduce);
    the values themselves in a single process."""
    values = [int(v) for v in values]
    if not active():
        return values
    tensor = torch.tensor(values, dtype=torch.int64, device=collective_device(device))
    dist.all_reduce(tensor)
    return [int(v) for v in tensor.cpu().tolist()]


def sum_floats(values, device) -> list:
    """Sum over ranks of a list of floats (float64 all_reduce)."""
    values = [float(v) for v in values]
    if not active():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=collective_device(device))
    dist.all_reduce(tensor)
    return tensor.cpu().tolist()


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` when a process group is active."""
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model, torch.nn.parallel.DistributedDataParallel) \
        else model


def barrier() -> None:
    if active():
        dist.barrier()
