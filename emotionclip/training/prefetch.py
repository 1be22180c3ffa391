"""Batches on the device before the step that needs them.

`DevicePrefetcher` wraps the loader's iterator. On CUDA it takes batch k+1 from
the loader as it hands out batch k and, on a side stream, uploads it (pinned
host memory, non_blocking), normalises the frames and rasterises the subject
masks there (`prepare_batch`), so the upload and those kernels overlap step k
instead of opening step k+1. Measured before it on an H200: loader-fed training
at 0.88 of a batch resident on the GPU (README, Benchmarks), the 154 MB uint8
batch uploaded on the critical path.

Nothing is freed early: the consumer's stream waits on the side stream's event
before it touches a batch, and every device tensor is `record_stream`-ed on the
consumer's stream, so the caching allocator does not hand its memory to the
side stream while the step still reads it. The host batch stays referenced by
the `DeviceBatch` (its `batch`) until the consumer lets go of it; pinned host
blocks are kept by PyTorch's host allocator until their copy has completed.

On CPU it is a pass-through with the same interface: each `next` takes one
batch from the loader and prepares it in place, nothing ahead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch

from emotionclip.models.transforms import normalize_frames
from emotionclip.training.dataset import batch_masks


@dataclass
class DeviceBatch:
    """A micro-batch as the model takes it, on the device: frames normalised
    float [B, T, 3, S, S] (contiguous), masks float [B, T, S, S], tokens long,
    sentiment float [B, 7]; `batch` is the loader's batch it came from (dataset
    `index`, kept on the host)."""

    frames: torch.Tensor
    masks: torch.Tensor
    tokens: torch.Tensor
    sentiment: torch.Tensor
    batch: dict[str, Any]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.frames, self.masks, self.tokens, self.sentiment


def prepare_batch(batch: dict[str, Any], device: torch.device, mean: Sequence[float],
                  std: Sequence[float]) -> DeviceBatch:
    """The loader's batch on `device`: uint8 frames uploaded then normalised there,
    masks rasterised there from the crop-space rectangles (`batch_masks`)."""
    # frames come as an HWC buffer seen as [B, T, 3, S, S]: made contiguous on the device
    frames = normalize_frames(batch["frames"].to(device, non_blocking=True), mean, std).contiguous()
    masks = batch_masks(batch, device).float()
    tokens = batch["tokens"].to(device, non_blocking=True)
    sentiment = batch["sentiment"].to(device, non_blocking=True).float()
    return DeviceBatch(frames, masks, tokens, sentiment, batch)


class DevicePrefetcher:
    """Iterator of `DeviceBatch`es over `batches` (the loader's iterator), in its
    order; on CUDA one batch ahead on a side stream. An error the loader raises
    while fetching ahead is raised at the `next` that would have returned that
    batch, as without the prefetcher."""

    def __init__(self, batches: Iterator[dict[str, Any]], device: torch.device | str, mean: Sequence[float],
                 std: Sequence[float], *, ahead: bool | None = None) -> None:
        self.batches = batches
        self.device = torch.device(device)
        self.mean, self.std = tuple(mean), tuple(std)
        # ahead: one batch fetched early (default: on CUDA only; on CPU it would only
        # hold a batch longer). The side stream exists on CUDA only.
        self.ahead = self.device.type == "cuda" if ahead is None else bool(ahead)
        self.stream = torch.cuda.Stream(self.device) if self.ahead and self.device.type == "cuda" else None
        self._next: tuple[DeviceBatch, torch.cuda.Event | None] | None = None
        self._error: BaseException | None = None
        self._started = False

    def __iter__(self) -> "DevicePrefetcher":
        return self

    def __next__(self) -> DeviceBatch:
        if not self.ahead:
            return prepare_batch(next(self.batches), self.device, self.mean, self.std)
        if not self._started:
            self._started = True
            self._fetch()
        if self._next is None:
            error, self._error = self._error, None
            raise error if error is not None else StopIteration
        item, ready = self._next
        self._next = None
        if ready is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(ready)  # the step's kernels start after the upload and preparation
            for t in item.tensors():
                t.record_stream(current)  # made on the side stream, used on this one: not reused before
        self._fetch()  # the next batch's upload overlaps the step about to run
        return item

    def _fetch(self) -> None:
        try:
            batch = next(self.batches)
        except StopIteration:
            return
        except Exception as e:  # noqa: BLE001  # raised when the consumer reaches this batch
            self._error = e
            return
        if self.stream is None:
            self._next = (prepare_batch(batch, self.device, self.mean, self.std), None)
            return
        # No wait on the current stream: the side stream reads host memory and writes
        # fresh blocks of its own pool (the ones the current stream used are record_stream-ed).
        with torch.cuda.stream(self.stream):
            item = prepare_batch(batch, self.device, self.mean, self.std)
            ready = torch.cuda.Event()
            ready.record(self.stream)
        self._next = (item, ready)

    def close(self) -> None:
        """Drop the batch fetched ahead and the loader's iterator (its workers stop)."""
        self._next = None
        close = getattr(self.batches, "close", None)
        self.batches = iter(())
        if close is not None:
            close()
