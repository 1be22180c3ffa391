"""A run's state: what `setup` builds once (model, data, optimizer, ...) and where
the run is (step, epoch, position in the epoch), which every other piece reads
and advances."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader

from emotionclip.models import SentimentGuidedLoss
from emotionclip.training.build import build_dataset, build_model, load_catalog_for, resolve_precision
from emotionclip.training.config import TrainConfig
from emotionclip.training.distributed import DistInfo, init_distributed
from emotionclip.training.errors import TrainingInputError
from emotionclip.training.inputs import check_inputs
from emotionclip.training.loader import build_loader
from emotionclip.training.optim import WarmupCosine, build_optimizer, build_scheduler
from emotionclip.training.sampler import ResumableSampler


@dataclass
class TrainResult:
    step: int
    epoch: int
    last_loss: float | None
    checkpoint: str | None
    history: list[dict[str, Any]] = field(default_factory=list)  # logged step rows (rank 0)


@dataclass
class TrainState:
    config: TrainConfig
    info: DistInfo
    precision: str  # resolved: bf16, fp16 or fp32
    model: Any  # the bare EmotionCLIP: checkpoints, logit scale, probe
    engine: Any  # what the forward runs through: the model, DDP around it, compiled
    dataset: Any
    sampler: ResumableSampler
    loader: DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: WarmupCosine
    scaler: torch.amp.GradScaler
    loss_fn: SentimentGuidedLoss
    micro_batch: int  # clips per rank and micro-step
    steps_per_epoch: int
    # where the run is
    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    last_loss: float | None = None
    last_checkpoint: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def device(self) -> torch.device:
        return self.info.device

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    @property
    def done(self) -> bool:
        """max_steps reached (the schedule still spans all epochs)."""
        return self.config.max_steps is not None and self.step >= self.config.max_steps

    @property
    def epoch_finished(self) -> bool:
        return self.step_in_epoch >= self.steps_per_epoch

    @property
    def sample_in_epoch(self) -> int:
        """This rank's position in the epoch's sample order (the sampler's start)."""
        return self.step_in_epoch * self.config.grad_accum_steps * self.micro_batch

    def result(self) -> TrainResult:
        return TrainResult(step=self.step, epoch=self.epoch, last_loss=self.last_loss,
                           checkpoint=self.last_checkpoint, history=self.history)


def micro_batch_size(config: TrainConfig, world_size: int) -> int:
    per_step = world_size * config.grad_accum_steps
    if config.batch_size % per_step:
        raise TrainingInputError(f"batch_size {config.batch_size} is not divisible by world_size x grad_accum_steps = {per_step}")
    return config.batch_size // per_step


def setup(config: TrainConfig, *, dataset: Any = None, model: Any = None) -> TrainState:
    """Device, precision and seed; the model and dataset (unless passed in), sampler,
    loader, optimizer, schedule, grad scaler and loss, at step 0. The engine is the
    bare model until `wrap_engine`. Raises `TrainingInputError` when the dataset's
    frame stores are missing or its sentiment logits are not finite."""
    info = init_distributed(config.device, config.dist_timeout_s)
    device = info.device
    precision = resolve_precision(config.precision, device)
    # identical initial weights on every rank (DDP also broadcasts rank 0's)
    torch.manual_seed(config.seed)
    catalog = None
    if model is None or dataset is None:
        catalog = load_catalog_for(config)
    if model is None:
        model = build_model(config, catalog, device)
    model = model.to(device)
    if dataset is None:
        dataset = build_dataset(config, catalog, model)
    check_inputs(dataset)  # broken rows, missing frame stores: one message now, not a crash mid-run

    micro = micro_batch_size(config, info.world_size)
    sampler = ResumableSampler(len(dataset), num_replicas=info.world_size, rank=info.rank, seed=config.seed)
    steps_per_epoch = sampler.per_rank // micro // config.grad_accum_steps
    if steps_per_epoch == 0:
        raise TrainingInputError(f"{len(dataset)} clips are fewer than one batch of {config.batch_size}")
    optimizer = build_optimizer(model, config)
    return TrainState(
        config=config, info=info, precision=precision, model=model, engine=model, dataset=dataset,
        sampler=sampler, loader=build_loader(dataset, sampler, config, device, micro),
        optimizer=optimizer, scheduler=build_scheduler(optimizer, config, steps_per_epoch),
        scaler=torch.amp.GradScaler(device.type, enabled=(precision == "fp16")),
        loss_fn=SentimentGuidedLoss(beta=config.beta, kl_direction=config.kl_direction),
        micro_batch=micro, steps_per_epoch=steps_per_epoch,
    )


def wrap_engine(model: Any, info: DistInfo, config: TrainConfig) -> Any:
    """DDP around the model on several ranks, then torch.compile if asked. After a
    resume: DDP broadcasts rank 0's (resumed) weights."""
    engine: Any = model
    if info.distributed:
        engine = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    if config.compile:
        engine = torch.compile(engine, backend=config.compile_backend)
    return engine
