"""Batches of episodes for one rank, resumable at any step, and moving them to the training device.

Each epoch is one episode per training video in an order shuffled by (seed, epoch) and split over ranks
by `tkh.data.EpisodeSampler`; the incomplete last batch is dropped. Episodes are a pure function of
(seed, epoch, video), so resuming at a position gives exactly the batches the uninterrupted run would
have seen.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, default_collate

from tkh.data import EpisodeSampler
from tkh.errors import ConfigError
from tkh.precision import Policy
from tkh.train import distributed

__all__ = ["EpisodeBatches", "fixed_batch", "to_device"]


class EpisodeBatches:
    """Endless batches of episodes for this rank, starting at (epoch, batch_in_epoch) (see the module doc).

    Iterating yields (batch, (epoch, next batch in epoch)): the position to save after that batch."""

    def __init__(self, dataset, batch_per_rank: int, info: distributed.DistInfo, seed: int, num_workers: int,
                 fixed: bool, epoch: int, batch_in_epoch: int, pin: bool) -> None:
        self.dataset, self.b, self.fixed = dataset, batch_per_rank, fixed
        self.sampler = EpisodeSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed)
        self.num_workers, self.pin = num_workers, pin
        self.start = (epoch, batch_in_epoch)
        self.per_epoch = len(self.sampler) // self.b
        if self.per_epoch == 0:
            raise ConfigError(f"train.batch_size {self.b * info.world_size} is larger than the {len(dataset)} training "
                              f"videos ({len(self.sampler)} per rank); lower train.batch_size or add videos")

    def _index_batches(self) -> Iterator[tuple[list[tuple[int, int]], tuple[int, int]]]:
        epoch, j = self.start
        while True:
            self.sampler.set_epoch(0 if self.fixed else epoch)
            order = list(self.sampler)  # [(video, epoch), ...] for this rank
            while j < self.per_epoch:
                idx = order[j * self.b:(j + 1) * self.b]
                j += 1
                yield idx, ((epoch, j) if j < self.per_epoch else (epoch + 1, 0))
            epoch, j = epoch + 1, 0

    def __iter__(self) -> Iterator[tuple[dict[str, torch.Tensor], tuple[int, int]]]:
        index_batches = self._index_batches()
        positions: list[tuple[int, int]] = []

        def batches() -> Iterator[list[tuple[int, int]]]:
            for idx, pos in index_batches:
                positions.append(pos)
                yield idx

        loader = DataLoader(self.dataset, batch_sampler=batches(), num_workers=self.num_workers,
                            pin_memory=self.pin, worker_init_fn=_ignore_sigint if self.num_workers else None,
                            persistent_workers=False, prefetch_factor=2 if self.num_workers else None)
        for batch in loader:
            yield batch, positions.pop(0)


def _ignore_sigint(_: int) -> None:
    # Ctrl-C reaches the whole process group; the main process stops gracefully, workers must not die first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def to_device(batch: dict[str, Any], device: torch.device, policy: Policy) -> dict[str, torch.Tensor]:
    """A collated batch on `device`, its images in the policy's memory format."""
    return {k: policy.tensor(torch.as_tensor(v).to(device, non_blocking=True)) for k, v in batch.items()}


def fixed_batch(dataset, device: torch.device, policy: Policy, n: int = 4) -> dict[str, torch.Tensor]:
    """Fixed episodes (epoch 0) of the first n training videos, for comparable sample grids."""
    items = [dataset[(i, 0)] for i in range(min(n, len(dataset)))]
    return to_device(default_collate(items), device, policy)
