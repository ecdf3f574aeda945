"""Several GPUs (or CPU processes) with torch's DistributedDataParallel, started by `torchrun`.

    torchrun --nproc_per_node 4 -m tkh.cli train --config configs/small.yaml --data CACHE --out RUN

`torchrun` sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; `setup()` reads them and
joins the process group (NCCL on CUDA, gloo on CPU). Each rank draws its share of the videos with a
DistributedSampler (`tkh.data.EpisodeSampler`), so `train.batch_size` is the global batch and each
rank takes batch_size / world_size episodes.

Why D's per-video matrix W needs no special care: W is an ordinary dense parameter of D, so each rank's
backward writes a dense W.grad with non-zero rows only for the videos of its own episodes, and DDP's
all-reduce averages these dense gradients over ranks. Rows touched on different ranks are thereby
summed (divided by the world size), which is exactly the gradient of the mean loss over the global
batch: the same W.grad one process computes on the whole batch (tested in tests/test_train_processes.py).
A sparse embedding (`sparse=True`) would not be all-reduced by DDP; that is why W is not one.
Only rank 0 writes logs, samples and checkpoints; the logged losses are averaged over the ranks
(`all_mean`), so log.csv shows the global batch's losses whatever the number of ranks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "setup", "teardown", "all_flags", "all_mean"]


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False  # we called init_process_group (so we destroy it at the end)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device_hint: str = "auto") -> DistInfo:
    """Join the process group when torchrun's environment variables say so; a no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, False)
    use_cuda = torch.cuda.is_available() and not device_hint.startswith("cpu")
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank, world, local_rank, True)


def teardown(info: DistInfo, clean: bool = True) -> None:
    """Leave the process group. After a clean run every rank first waits at a barrier: rank 0 still writes
    the last checkpoint and the loss plot when the others are done, and a rank that destroys its gloo
    group (and exits) while a peer is still connected can abort with "terminate called without an active
    exception" (seen in CI). After an error there is no barrier: the other ranks may never reach it."""
    if info.initialized_here and dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()


def all_flags(values: list[float], info: DistInfo, device: torch.device) -> list[float]:
    """Element-wise max of small flags over ranks (stop requests, non-finite losses), so all ranks agree."""
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def all_mean(values: list[float], info: DistInfo, device: torch.device) -> list[float]:
    """Element-wise mean over ranks (loss parts for the log: the global batch's mean, not rank 0's share)."""
    if not info.enabled or not values:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return (t / info.world_size).tolist()
