"""The training loop under DistributedDataParallel: 2 CPU processes (gloo) training on
rank shards of each global batch end with the parameters, eval losses and summed FLOP
ledger of one process training on the whole batch; a resumed run books every rank's own
FLOPs even when the ranks' counts differ."""

import datetime
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from adaptkern.flops import FlopLedger
from adaptkern.train import RunConfig, ShapeSchedule, SyntheticGlyphs, VisionTask, distributed, train_run

# base patch 4 = the trained patch: no PI-resize matmul, which every rank would count once
# per call (a real per-process cost, but it would break the equality checked here).
MODEL = dict(dim=16, depth=1, num_heads=2, base_patch_size=4, pos_grid=(4, 4))


def _task(seed):
    return VisionTask(SyntheticGlyphs(seed=seed, image_size=16, num_eval=24), batch_size=8, eval_batch_size=16,
                      model=MODEL)


def _config(seed, eval_points):
    return RunConfig(budget=10**15, seed=seed, max_steps=4, eval_points=eval_points, warmup_steps=2,
                     progress=False)


def _worker(rank, world_size, init_file, out, seed, eval_points):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=120))
    try:
        result = train_run(_task(seed), ShapeSchedule.static("p4"), _config(seed, eval_points), out)
        if rank == 0:
            torch.save({"evals": result.evals, "ledger": result.ledger.to_dict(), "compute": result.compute},
                       os.path.join(out, "result.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_two_gloo_processes_match_one_process(tmp_path, seed):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        probe = train_run(_task(seed), ShapeSchedule.static("p4"), RunConfig(budget=1, n_evals=0, progress=False),
                          tmp_path / "probe")
        eval_points = (1, int(2.5 * probe.compute))  # after steps 1 and 3
        single = train_run(_task(seed), ShapeSchedule.static("p4"), _config(seed, eval_points), tmp_path / "single")
    finally:
        torch.set_num_threads(threads)
    os.environ.pop("WORLD_SIZE", None)
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "ddp"), seed, eval_points), nprocs=2,
             join=True)
    ddp = torch.load(tmp_path / "ddp" / "result.pt", weights_only=False)
    summed = FlopLedger.from_dict(ddp["ledger"])
    # each rank counted its own 4 images; their exact sum is the 8-image single-process count
    assert summed == single.ledger
    assert ddp["compute"] == single.compute == single.ledger.total(phase=["forward", "backward"])
    assert summed.counts("p4") == {"steps": 4, "samples": 32, "tokens": 32 * 16}
    assert [e["step"] for e in ddp["evals"]] == [e["step"] for e in single.evals] == [1, 3]
    for got, want in zip(ddp["evals"], single.evals):
        assert abs(got["loss"] - want["loss"]) <= 1e-5 * abs(want["loss"])
    # DDP averages the two half-batch gradients = the full-batch gradient: same parameters
    p_ddp = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=False)["model"]
    p_single = torch.load(tmp_path / "single" / "checkpoint.pt", weights_only=False)["model"]
    dim = MODEL["dim"]
    # Adam divides each gradient by its own running size, so a parameter whose gradient is a
    # small sum of cancelling terms (rounded differently over two ranks than in one process)
    # moves by about lr x that sum's relative rounding error more or less: 1.7e-6 = lr x 9e-4
    # once (torch 2.11, ADAPTKERN_TEST_SEED=1655131172). A wrong gradient moves it by ~lr.
    atol = 1e-2 * _config(seed, eval_points).lr
    for key in p_single:
        a, b = p_ddp[key], p_single[key]
        if key.endswith("attn.qkv.bias"):
            # The key bias cancels in the softmax: its gradient is rounding noise that Adam
            # blows up to +-lr steps of either sign. Compare the query and value biases.
            a, b = torch.cat([a[:dim], a[2 * dim:]]), torch.cat([b[:dim], b[2 * dim:]])
        torch.testing.assert_close(a, b, rtol=1e-4, atol=atol, msg=key)


class _UnevenTask:
    """A task whose rank 1 spends an extra (constant) matmul in every loss: the ranks' FLOP
    counts differ, as they may for any per-rank work the signature does not show."""

    def __init__(self, task):
        self._task = task

    def __getattr__(self, name):
        return getattr(self._task, name)

    def loss(self, model, batch, shape, **kwargs):
        loss = self._task.loss(model, batch, shape, **kwargs)
        if distributed.rank() == 1:
            loss = loss + 0 * (torch.ones(16, 16) @ torch.ones(16, 16)).sum()
        return loss


def _uneven_worker(rank, world_size, init_file, out, seed):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=120))
    try:
        for folder, steps in (("straight", [4]), ("resumed", [2, 4])):
            for max_steps in steps:
                config = RunConfig(budget=10**15, seed=seed, max_steps=max_steps, n_evals=0, warmup_steps=2,
                                   progress=False)
                train_run(_UnevenTask(_task(seed)), ShapeSchedule.static("p4"), config, os.path.join(out, folder))
    finally:
        dist.destroy_process_group()


def test_resume_books_each_ranks_own_flops(tmp_path, seed):
    os.environ.pop("WORLD_SIZE", None)
    mp.spawn(_uneven_worker, args=(2, str(tmp_path / "init"), str(tmp_path), seed), nprocs=2, join=True)
    straight = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)
    resumed = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)
    ranks = [FlopLedger.from_dict(d) for d in straight["ledgers"]]
    assert ranks[1].total(phase="forward") == ranks[0].total(phase="forward") + 4 * 2 * 16**3  # the extra matmul
    assert [FlopLedger.from_dict(d) for d in resumed["ledgers"]] == ranks
    assert resumed["run_state"]["compute"] == straight["run_state"]["compute"]
