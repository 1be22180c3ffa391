"""A resumable, deterministic distributed sampler.

The order of an epoch depends only on (seed, epoch): a resumed run that starts
at sample `start` of the epoch sees exactly the samples an uninterrupted run
would have seen from there on, and skipping costs nothing (no frames decoded).
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    """Shuffled (or sequential) indices, split over `num_replicas` ranks.

    Like `DistributedSampler(drop_last=True)`: every rank gets
    `len(dataset) // num_replicas` indices, rank r takes positions r, r+R, ...
    of the epoch's permutation. `set_epoch(epoch, start=k)` makes the next
    iteration begin at this rank's k-th index. A DataLoader iterates its sampler
    in the main process, so one loader serves the whole run: `set_epoch` before
    each `iter(loader)` is enough, whatever its workers.
    """

    def __init__(self, num_samples: int, *, num_replicas: int = 1, rank: int = 0,
                 seed: int = 0, shuffle: bool = True) -> None:
        if num_samples < num_replicas:
            raise ValueError(f"{num_samples} samples cannot feed {num_replicas} ranks")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside [0, {num_replicas})")
        self.num_samples_total = num_samples
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.start = 0

    @property
    def per_rank(self) -> int:
        return self.num_samples_total // self.num_replicas

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        if not 0 <= start <= self.per_rank:
            raise ValueError(f"start {start} outside [0, {self.per_rank}]")
        self.epoch = epoch
        self.start = start

    def epoch_indices(self, epoch: int) -> list[int]:
        """This rank's full index list for `epoch`."""
        n = self.num_samples_total
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        order = order[: self.per_rank * self.num_replicas]  # drop the tail evenly
        return order[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices(self.epoch)[self.start :])

    def __len__(self) -> int:
        return self.per_rank - self.start
