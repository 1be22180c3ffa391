"""One optimizer step: `grad_accum_steps` micro-batches (forward under autocast,
SNCE loss over the features of all ranks, scaled backward), then the grad
scaler's step, the schedule and the logit-scale clamp.

The loss of a micro-batch is computed over the features and sentiment logits
of all ranks (gathered, gradients through the local slice) and scaled by the
world size, so that DDP's gradient average equals the gradient of the
global-batch loss; divided by `grad_accum_steps`, the accumulated gradient is
that of the mean micro-batch loss.

Every micro-batch is checked (`check_micro_batch`, one device sync with the
loss read-out): NaN/Inf sentiment logits or soft labels, a batch whose
sentiment weights leave no negative pair (the loss is then exactly 0 and the
step learns nothing) and a non-finite loss stop the run with the batch's clip
ids, before the optimizer step touches the weights.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch

from emotionclip.models import gather_features
from emotionclip.models.loss import pairwise_kl
from emotionclip.training.prefetch import DeviceBatch, prepare_batch
from emotionclip.training.errors import BadBatchError, name_some
from emotionclip.training.optim import clamp_logit_scale
from emotionclip.training.state import TrainState


@dataclass(frozen=True)
class StepOutput:
    loss: float  # mean of the micro-batches' global-batch losses
    data_wait_s: float  # time spent waiting for the loader


def device_batch(batch: dict[str, torch.Tensor], device: torch.device, mean: Sequence[float],
                 std: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(frames, masks, tokens, sentiment) of a collated batch, on `device`, as the model takes them
    (`emotionclip.training.prefetch.prepare_batch`, which the prefetcher runs ahead on a side stream)."""
    return prepare_batch(batch, device, mean, std).tensors()


def micro_step(state: TrainState, batch: dict[str, torch.Tensor] | DeviceBatch, *, sync: bool) -> float:
    """Forward and backward of one micro-batch (the loader's batch, or one the
    `DevicePrefetcher` already put on the device); returns its (unscaled) loss.
    `sync=False` skips DDP's gradient all-reduce (all but the last micro-batch)."""
    if not isinstance(batch, DeviceBatch):
        batch = prepare_batch(batch, state.device, state.model.preprocess_cfg.mean, state.model.preprocess_cfg.std)
    frames, masks, tokens, sentiment = batch.tensors()
    host = batch.batch
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
    # after the backward: its gradients are dropped with the run, and the check's one sync
    # is the loss read-out every step makes anyway
    return check_micro_batch(state, host, s_all, loss)


def check_micro_batch(state: TrainState, batch: dict[str, torch.Tensor], sentiment: torch.Tensor,
                      loss: torch.Tensor) -> float:
    """The micro-batch's loss as a float, once the batch is known to be usable:
    `sentiment` [N, 7] (gathered over the ranks) finite, with finite soft labels
    and KL divergences, at least one negative pair left by the sentiment weights
    (beta > 0), and a finite loss. Otherwise `BadBatchError` (the data's fault) or
    `FloatingPointError` (the model's), naming the step and the clips."""
    loss_fn = state.loss_fn
    n = sentiment.shape[0]
    s = sentiment.float()
    row_ok = torch.isfinite(s).all(dim=1)
    kl = None
    kl_ok = negatives = torch.ones((), dtype=torch.bool, device=s.device)
    if loss_fn.beta > 0 and n > 1:
        kl = pairwise_kl(s, loss_fn.kl_direction)
        kl_ok = torch.isfinite(kl).all()
        off = ~torch.eye(n, dtype=torch.bool, device=s.device)
        # KL = 0 gives an infinite weight: that negative is removed (eq. 6)
        negatives = (kl[off] > 0).any()
    flags = torch.stack([loss.detach().float(), row_ok.all().float(), kl_ok.float(), negatives.float()])
    value, rows_finite, kl_finite, has_negative = flags.tolist()  # the one sync
    step = state.step + 1
    if not rows_finite:
        ids = _clip_ids(state, batch, (~row_ok).nonzero().flatten().tolist())
        raise BadBatchError(f"step {step}: NaN or infinite sentiment logits in clips {name_some(ids)}; re-run the "
                            "sentiment stage for their videos and rebuild the manifests, or drop these rows", ids)
    if not kl_finite:
        assert kl is not None
        # to blame: rows whose log-probabilities overflow (a -inf breaks every KL with that
        # row); failing that, the rows of the non-finite divergences
        culprit = ~torch.isfinite(torch.log_softmax(s, dim=-1)).all(dim=1)
        if not culprit.any():
            finite = torch.isfinite(kl)
            culprit = ~(finite.all(dim=1) & finite.all(dim=0))
        ids = _clip_ids(state, batch, culprit.nonzero().flatten().tolist())
        raise BadBatchError(f"step {step}: the sentiment logits of clips {name_some(ids)} give non-finite soft "
                            "labels (values too extreme for a softmax); check these manifest rows", ids)
    if not has_negative:
        ids = _clip_ids(state, batch, list(range(n)))
        raise BadBatchError(f"step {step}: all {n} clips of the batch have identical sentiment, so the sentiment "
                            f"weights remove every negative pair and the loss is 0 (clips {name_some(ids)}); "
                            "check the manifests' sentiment logits", ids)
    if not math.isfinite(value):
        ids = _clip_ids(state, batch, list(range(n)))
        raise FloatingPointError(f"step {step}: loss is {value} on clips {name_some(ids)}; training diverged "
                                 "(lower the learning rates, or use precision=bf16/fp32)")
    return value


def _clip_ids(state: TrainState, batch: dict[str, torch.Tensor], rows: list[int]) -> list[str]:
    """Clip ids (`video_id:sentence_idx`) of rows of the gathered batch. Under DDP the
    batch's dataset indices are gathered too: every rank reaches this together (they
    all check the same gathered tensors), and every rank holds the whole dataset."""
    (index,) = gather_features(batch["index"].to(state.device))
    ids = getattr(state.dataset, "clip_ids", None)
    flat = index.tolist()
    return [ids[flat[r]] if ids is not None else f"row {flat[r]}" for r in rows]


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
