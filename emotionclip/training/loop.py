"""`train(config)`: EmotionCLIP pre-training on clip manifests (appendix B.2).

One process per device (torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; without
them, a single process). Per optimizer step: `grad_accum_steps` micro-batches,
each `batch_size / (world_size * grad_accum_steps)` clips per rank
(`emotionclip.training.step`). The pieces, each its own module:

    state.setup        device, precision, seed, model, data, loader, optimizer -> TrainState
    checkpoint.load_resume, resume  the newest readable checkpoint back into that state (weights, RNG, position)
    step.optimizer_step  one step of grad-accumulated micro-batches
    run_epoch          steps to the epoch end (or max_steps), step checkpoints, log rows
    finish_epoch       the epoch-end checkpoint, row and probe
"""

from __future__ import annotations

from typing import Any

import torch

from emotionclip.training import checkpoint as ckpt
from emotionclip.training.build import FramesLocation, build_dataset, build_model, load_catalog_for, resolve_precision
from emotionclip.training.config import TrainConfig
from emotionclip.training.dataset import ClipDataset
from emotionclip.training.loader import epoch_batches
from emotionclip.training.metrics import MetricsLogger, Throughput, epoch_row, step_row
from emotionclip.training.optim import group_lrs
from emotionclip.training.probe import probe_epoch_end
from emotionclip.training.state import TrainResult, TrainState, setup, wrap_engine
from emotionclip.training.step import optimizer_step

__all__ = ["train", "run_epoch", "finish_epoch", "TrainResult", "TrainState", "FramesLocation", "build_dataset",
           "build_model", "load_catalog_for", "resolve_precision"]


def train(config: TrainConfig, *, dataset: ClipDataset | None = None, model: Any = None) -> TrainResult:
    """Run (or resume) pre-training. `dataset`/`model` may be passed in (tests,
    notebooks); otherwise they come from the config and the catalog."""
    state = setup(config, dataset=dataset, model=model)
    found = ckpt.load_resume(config)  # the newest readable checkpoint for "latest"
    resumed = found is not None
    if found is not None:
        ckpt.resume(state, *found)
        del found  # the loaded file must not stay in memory for the whole run
    else:
        torch.manual_seed(config.seed + state.info.rank)  # authors' code: seed + rank
    state.engine = wrap_engine(state.model, state.info, config)
    metrics = MetricsLogger(config.out_dir, enabled=state.info.is_main,
                            resume_step=state.step if resumed else None)
    state.model.train()
    try:
        while state.epoch < config.epochs and not state.done:
            run_epoch(state, metrics)
    finally:
        metrics.close()
    return state.result()


def run_epoch(state: TrainState, metrics: MetricsLogger) -> None:
    """Steps from the state's position to its epoch's end, or to max_steps (a step
    checkpoint then); every `ckpt_every_steps` a step checkpoint; at the end
    `finish_epoch`."""
    cfg = state.config
    batches = epoch_batches(state.loader, state.epoch, start=state.sample_in_epoch, seed=cfg.seed)
    epoch_meter, window = Throughput(), Throughput()
    losses: list[float] = []
    while not state.epoch_finished:
        out = optimizer_step(state, batches)
        state.step += 1
        state.step_in_epoch += 1
        state.last_loss = out.loss
        losses.append(out.loss)
        epoch_meter.add(cfg.batch_size, out.data_wait_s)
        window.add(cfg.batch_size, out.data_wait_s)
        if state.step % cfg.log_every_steps == 0 or state.step == 1:
            log_step(state, metrics, out.loss, window)
            window.reset()
        if state.epoch_finished:
            break  # the epoch-end checkpoint follows
        if state.step % cfg.ckpt_every_steps == 0 or state.done:
            ckpt.save_train_checkpoint(state, ckpt.step_checkpoint_name(state.step))
        if state.done:
            break
    del batches  # its workers stop before the checkpoint and the probe
    if state.epoch_finished:
        finish_epoch(state, metrics, losses, epoch_meter)


def log_step(state: TrainState, metrics: MetricsLogger, loss: float, window: Throughput) -> dict[str, Any]:
    row = step_row(state.step, state.epoch, loss, group_lrs(state.optimizer),
                   float(state.model.logit_scale.detach().exp()), window)
    metrics.log_step(row)
    if state.info.is_main:
        state.history.append(row)
    return row


def finish_epoch(state: TrainState, metrics: MetricsLogger, losses: list[float], meter: Throughput) -> dict[str, Any]:
    """The epoch-end checkpoint, its `epochs.jsonl` row (with the probe when due);
    the state moves to the next epoch."""
    path = ckpt.save_train_checkpoint(state, ckpt.epoch_checkpoint_name(state.epoch, state.step))
    row = epoch_row(state.epoch, state.step, losses, meter, path)
    probe = probe_epoch_end(state.model, state.config, state.epoch, state.step, state.device, state.info.is_main)
    if probe is not None:
        row["probe"] = probe
    metrics.log_epoch(row)
    state.epoch += 1
    state.step_in_epoch = 0
    return row
