"""One optimizer step: `grad_accum_steps` micro-batches (forward under autocast,
SNCE loss over the features of all ranks, scaled backward), then the grad
scaler's step, the schedule and the logit-scale clamp.

The loss of a micro-batch is computed over the features and sentiment logits
of all ranks (gathered, gradients through the local slice) and scaled by the
world size, so that DDP's gradient average equals the gradient of the
global-batch loss; divided by `grad_accum_steps`, the accumulated gradient is
that of the mean micro-batch loss.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch

from emotionclip.models import gather_features
from emotionclip.models.transforms import normalize_frames
from emotionclip.training.dataset import batch_masks
from emotionclip.training.optim import clamp_logit_scale
from emotionclip.training.state import TrainState


@dataclass(frozen=True)
class StepOutput:
    loss: float  # mean of the micro-batches' global-batch losses
    data_wait_s: float  # time spent waiting for the loader


def device_batch(batch: dict[str, torch.Tensor], device: torch.device, mean: Sequence[float],
                 std: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(frames, masks, tokens, sentiment) of a collated batch, on `device`, as the model takes them."""
    # frames come as an HWC buffer seen as [B, T, 3, S, S]: made contiguous on the device
    frames = normalize_frames(batch["frames"].to(device, non_blocking=True), mean, std).contiguous()
    masks = batch_masks(batch, device).float()  # rasterised here from crop-space boxes
    tokens = batch["tokens"].to(device, non_blocking=True)
    sentiment = batch["sentiment"].to(device, non_blocking=True).float()
    return frames, masks, tokens, sentiment


def micro_step(state: TrainState, batch: dict[str, torch.Tensor], *, sync: bool) -> float:
    """Forward and backward of one micro-batch; returns its (unscaled) loss.
    `sync=False` skips DDP's gradient all-reduce (all but the last micro-batch)."""
    frames, masks, tokens, sentiment = device_batch(
        batch, state.device, state.model.preprocess_cfg.mean, state.model.preprocess_cfg.std)
    engine, dtype = state.engine, state.amp_dtype
    ctx = engine.no_sync() if (state.info.distributed and not sync and hasattr(engine, "no_sync")) \
        else contextlib.nullcontext()
    with ctx:
        with torch.autocast(state.device.type, dtype=dtype, enabled=dtype is not None):
            v, t, scale = engine(frames, masks, tokens)
        v_all, t_all, s_all = gather_features(v, t, sentiment)
        loss = state.loss_fn(v_all, t_all, s_all, scale.float())
        # x world: DDP averages gradients; the global-batch loss sums them
        state.scaler.scale(loss * state.info.world_size / state.config.grad_accum_steps).backward()
    return float(loss.detach())


def optimizer_step(state: TrainState, batches: Iterator[Any]) -> StepOutput:
    """Take `grad_accum_steps` micro-batches from `batches` and make one optimizer
    step. Leaves the run's counters (`state.step`, ...) to the caller."""
    accum = state.config.grad_accum_steps
    step_loss, wait = 0.0, 0.0
    for k in range(accum):
        t0 = time.perf_counter()
        batch = next(batches)
        wait += time.perf_counter() - t0
        step_loss += micro_step(state, batch, sync=k == accum - 1) / accum
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.optimizer.zero_grad(set_to_none=True)
    state.scheduler.step()
    clamp_logit_scale(state.model.named_parameters(), state.config.logit_scale_max)
    return StepOutput(loss=step_loss, data_wait_s=wait)
