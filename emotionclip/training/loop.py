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

import time
from typing import Any

import torch

from emotionclip.core.progress import ProgressHook, Tracker, track
from emotionclip.training import checkpoint as ckpt
from emotionclip.training.build import FramesLocation, build_dataset, build_model, load_catalog_for, resolve_precision
from emotionclip.training.config import TrainConfig, compile_enabled, write_config
from emotionclip.training.distributed import check_same_on_all_ranks
from emotionclip.training.dataset import ClipDataset
from emotionclip.training.loader import epoch_batches
from emotionclip.training.prefetch import DevicePrefetcher
from emotionclip.training.metrics import MetricsLogger, Throughput, epoch_row, step_row
from emotionclip.training.optim import group_lrs
from emotionclip.training.probe import probe_epoch_end
from emotionclip.training.state import TrainResult, TrainState, setup, wrap_engine
from emotionclip.training.step import optimizer_step

__all__ = ["train", "run_epoch", "finish_epoch", "TrainResult", "TrainState", "FramesLocation", "build_dataset",
           "build_model", "load_catalog_for", "resolve_precision"]


def train(config: TrainConfig, *, dataset: ClipDataset | None = None, model: Any = None,
          progress: ProgressHook | None = None) -> TrainResult:
    """Run (or resume) pre-training. `dataset`/`model` may be passed in (tests,
    notebooks); otherwise they come from the config and the catalog. `progress`
    (else the hook of `emotionclip.core.progress.use`) gets the optimizer steps on
    rank 0, with loss and clips/s. Rank 0 writes the config into out_dir
    (`train_config.json`) before the first step."""
    state = setup(config, dataset=dataset, model=model)
    found = ckpt.load_resume(config)  # the newest readable checkpoint for "latest"
    # every rank must continue from the same one (several nodes: a shared out_dir)
    check_same_on_all_ranks(f"{found[0].rsplit('/', 1)[-1]} (step {found[1]['step']})" if found else "a fresh start",
                            "the checkpoint to resume from",
                            "every node must see the same out_dir (a shared folder) for --resume latest")
    resumed = found is not None
    if found is not None:
        ckpt.resume(state, *found)
        del found  # the loaded file must not stay in memory for the whole run
    else:
        torch.manual_seed(config.seed + state.info.rank)  # authors' code: seed + rank
    # compile "auto": on for CUDA, off for CPU (TrainConfig.compile)
    state.engine = wrap_engine(state.model, state.info,
                               config.model_copy(update={"compile": compile_enabled(config.compile, state.device)}))
    state.first_step_s = None  # the first step's wall time (compilation included), logged once
    metrics = MetricsLogger(config.out_dir, enabled=state.info.is_main,
                            resume_step=state.step if resumed else None)
    if state.info.is_main:  # every run's hyper-parameters next to its metrics (torchrun's launcher wrote it too)
        write_config(config)
    state.model.train()
    bar = step_tracker(state, progress)
    try:
        with bar:
            while state.epoch < config.epochs and not state.done:
                run_epoch(state, metrics, bar)
    finally:
        metrics.close()
    return state.result()


def step_tracker(state: TrainState, progress: ProgressHook | None = None) -> Tracker:
    """The run's progress in optimizer steps, out of every epoch's (or max_steps);
    silent on ranks other than 0."""
    cfg = state.config
    total = cfg.epochs * state.steps_per_epoch
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    if not state.info.is_main:
        return Tracker(None, "train")
    return track("train", total, "steps", hook=progress, completed=state.step)


def run_epoch(state: TrainState, metrics: MetricsLogger, bar: Tracker | None = None) -> None:
    """Steps from the state's position to its epoch's end, or to max_steps (a step
    checkpoint then); every `ckpt_every_steps` a step checkpoint; at the end
    `finish_epoch`. `bar`: advanced by each step."""
    cfg = state.config
    # on CUDA the next batch is uploaded and prepared on a side stream during each step
    batches = DevicePrefetcher(epoch_batches(state.loader, state.epoch, start=state.sample_in_epoch, seed=cfg.seed),
                               state.device, state.model.preprocess_cfg.mean, state.model.preprocess_cfg.std)
    epoch_meter, window = Throughput(), Throughput()
    losses: list[float] = []
    while not state.epoch_finished:
        t_step = time.perf_counter()
        out = optimizer_step(state, batches)
        if getattr(state, "first_step_s", 0) is None:
            state.first_step_s = time.perf_counter() - t_step
        state.step += 1
        state.step_in_epoch += 1
        state.last_loss = out.loss
        losses.append(out.loss)
        epoch_meter.add(cfg.batch_size, out.data_wait_s)
        window.add(cfg.batch_size, out.data_wait_s)
        if state.step % cfg.log_every_steps == 0 or state.step == 1:
            log_step(state, metrics, out.loss, window)
            window.reset()
        if bar is not None:
            bar.update(completed=state.step, epoch=state.epoch, loss=out.loss,
                       clips_per_s=epoch_meter.rates()["clips_per_s"])
        if state.epoch_finished:
            break  # the epoch-end checkpoint follows
        if state.step % cfg.ckpt_every_steps == 0 or state.done:
            ckpt.save_train_checkpoint(state, ckpt.step_checkpoint_name(state.step))
        if state.done:
            break
    batches.close()  # its workers stop before the checkpoint and the probe
    del batches
    if state.epoch_finished:
        finish_epoch(state, metrics, losses, epoch_meter)


def log_step(state: TrainState, metrics: MetricsLogger, loss: float, window: Throughput) -> dict[str, Any]:
    row = step_row(state.step, state.epoch, loss, group_lrs(state.optimizer),
                   float(state.model.logit_scale.detach().exp()), window)
    first = getattr(state, "first_step_s", None)
    if first is not None and not getattr(state, "first_step_logged", False):
        # the run's first step in this process: with torch.compile, its compilation
        state.first_step_logged = True
        row["first_step_s"] = first
        row["compiled"] = hasattr(state.engine, "_orig_mod")  # torch.compile's wrapper
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
