"""The run's one DataLoader, and how each epoch starts on it.

The loader is built once per run. An epoch's order comes from the sampler
(`ResumableSampler.set_epoch(epoch, start=...)`; the loader iterates it in this
process and sends index batches to the workers) and its random crops and frame
choices from the dataset (`ClipDataset.set_epoch`). Workers copy the dataset
when they start, so they are not persistent: every `iter(loader)` forks fresh
ones that see the epoch just set. Persistent workers would keep epoch 0's copy.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader

from emotionclip.training.config import TrainConfig
from emotionclip.training.dataset import collate_clips
from emotionclip.training.sampler import ResumableSampler


def build_loader(dataset: Any, sampler: ResumableSampler, config: TrainConfig, device: torch.device,
                 batch_size: int, collate_fn: Callable[[Any], Any] = collate_clips) -> DataLoader:
    """Micro-batches of `batch_size` clips in the sampler's order (`collate_clips`:
    batches built in the workers pass through uncopied)."""
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=config.num_workers,
        collate_fn=collate_fn, pin_memory=config.pin_memory and device.type == "cuda", drop_last=True,
        # own generator (re-seeded each epoch): creating an iterator must not consume the global RNG
        generator=torch.Generator(),
        persistent_workers=False, prefetch_factor=4 if config.num_workers else None,
    )


def epoch_batches(loader: DataLoader, epoch: int, start: int, seed: int) -> Iterator[Any]:
    """An iterator over `epoch` from this rank's `start`-th sample on. Sets the
    epoch on the sampler and the dataset before `iter()`, where the workers fork."""
    loader.sampler.set_epoch(epoch, start=start)
    loader.dataset.set_epoch(epoch)
    # the workers' base seed, as when each epoch had a loader of its own
    loader.generator.manual_seed(seed + epoch)
    return iter(loader)
