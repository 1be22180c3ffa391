"""`train(config)`: EmotionCLIP pre-training on clip manifests (appendix B.2).

One process per device (torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; without
them, a single process). Per optimizer step: `grad_accum_steps` micro-batches,
each `batch_size / (world_size * grad_accum_steps)` clips per rank; the loss of
a micro-batch is computed over the features and sentiment logits of all ranks
(gathered, gradients through the local slice) and scaled by the world size so
that DDP's gradient average equals the gradient of the global-batch loss.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader

from emotionclip.training import checkpoint as ckpt
from emotionclip.training.ablations import apply_encoder_setup
from emotionclip.training.config import TrainConfig
from emotionclip.training.dataset import ClipDataset, batch_masks, collate_clips, normalize_frames
from emotionclip.training.distributed import all_gather_objects, barrier, init_distributed
from emotionclip.training.metrics import MetricsLogger
from emotionclip.training.probe import probe_due, run_epoch_probe
from emotionclip.training.optim import build_optimizer, build_scheduler, clamp_logit_scale, group_lrs
from emotionclip.training.sampler import ResumableSampler

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    step: int
    epoch: int
    last_loss: float | None
    checkpoint: str | None
    history: list[dict[str, Any]] = field(default_factory=list)  # logged step rows (rank 0)


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto: bf16 where the GPU supports it, else fp16 (+ grad scaler), fp32 on
    CPU; an explicit bf16/fp16 is honoured on CPU too (slow there, but it runs
    the same mixed-precision and grad-scaler code as a GPU)."""
    if device.type != "cuda":
        return precision if precision in ("bf16", "fp16") else "fp32"
    if precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return precision


def build_model(config: TrainConfig, catalog: Any, device: torch.device):
    """EmotionCLIP from the config (or the catalog profile's OpenCLIP model), with the
    config's encoder initialisation and freezing (Table 3) and image normalisation."""
    from emotionclip.models import EmotionCLIP, PreprocessConfig
    from emotionclip.models.transforms import NORMALIZATIONS

    name = config.clip_model or catalog.models.clip_model
    pretrained = config.clip_pretrained
    if pretrained is None and config.clip_model is None and catalog.models.clip_pretrained:
        pretrained = catalog.model_ref("clip_pretrained")
    if config.init_text == "random" and config.init_frame == "random":
        pretrained = None  # nothing of the OpenCLIP weights is used
    mean, std = NORMALIZATIONS[config.normalization]
    preprocess = PreprocessConfig(resize=config.resize, crop=config.image_size, box_conf_threshold=config.box_conf,
                                  mean=mean, std=std)
    model = EmotionCLIP.from_openclip(
        name, pretrained, subject_mode=config.subject_mode, saam_layers=config.saam_layers,
        temporal=config.temporal, max_frames=config.num_frames, temporal_dropout=config.temporal_dropout,
        preprocess=preprocess,
    )
    apply_encoder_setup(model, config)
    if config.grad_checkpointing:
        model.clip.set_grad_checkpointing(True)
    return model.to(device)


def build_dataset(config: TrainConfig, catalog: Any, model: Any, train: bool = True) -> ClipDataset:
    from emotionclip.core.manifest_store import read_manifests
    from emotionclip.models import get_tokenizer

    manifest = read_manifests(config.manifests)
    return ClipDataset(
        manifest,
        FramesLocation(catalog),
        # the tokenizer object, not model.tokenize: workers must not receive the model
        get_tokenizer(model.config.clip_model, int(getattr(model.clip, "context_length", 77))),
        preprocess=model.preprocess_cfg,
        train=train,
        num_frames=config.num_frames,
        seed=config.seed,
        max_replacements=config.max_replacements,
    )


class FramesLocation:
    """Picklable video_id -> frame store location (for DataLoader workers)."""

    def __init__(self, catalog: Any):
        self.catalog = catalog

    def __call__(self, video_id: str) -> str:
        return self.catalog.artifact("frames", video_id)


def load_catalog_for(config: TrainConfig):
    from emotionclip.core.catalog import load_catalog

    return load_catalog(config.catalog, profile=config.profile, data_root=config.data_root)


def _find_resume(config: TrainConfig) -> str | None:
    if not config.resume:
        return None
    if config.resume == "latest":
        return ckpt.latest_checkpoint(config.out_dir)  # nothing yet: a fresh start
    return config.resume


def train(config: TrainConfig, *, dataset: ClipDataset | None = None, model: Any = None) -> TrainResult:
    """Run (or resume) pre-training. `dataset`/`model` may be passed in (tests,
    notebooks); otherwise they come from the config and the catalog."""
    from emotionclip.models import SentimentGuidedLoss, gather_features

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

    per_step = info.world_size * config.grad_accum_steps
    if config.batch_size % per_step:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by world_size x grad_accum_steps = {per_step}")
    micro = config.batch_size // per_step
    sampler = ResumableSampler(len(dataset), num_replicas=info.world_size, rank=info.rank, seed=config.seed)
    steps_per_epoch = sampler.per_rank // micro // config.grad_accum_steps
    if steps_per_epoch == 0:
        raise ValueError(f"{len(dataset)} clips are fewer than one batch of {config.batch_size}")

    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=(precision == "fp16"))
    loss_fn = SentimentGuidedLoss(beta=config.beta, kl_direction=config.kl_direction)

    step, epoch, step_in_epoch = 0, 0, 0
    resume_path = _find_resume(config)
    if resume_path:
        state = ckpt_load(resume_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        extra = state["extra"]
        if extra.get("scaler"):
            scaler.load_state_dict(extra["scaler"])
        step, epoch, step_in_epoch = int(state["step"]), int(extra["epoch"]), int(extra["step_in_epoch"])
        rngs = extra.get("rng") or []
        if len(rngs) == info.world_size:
            ckpt.set_rng_state(rngs[info.rank])
        else:  # another world size: the order stays exact, dropout masks do not
            log.warning("resuming on %d ranks from a %d-rank checkpoint: RNG streams re-seeded",
                        info.world_size, len(rngs))
            torch.manual_seed(config.seed + info.rank + step)
        log.info("resumed from %s at step %d (epoch %d, step %d of it)", resume_path, step, epoch, step_in_epoch)
    else:
        torch.manual_seed(config.seed + info.rank)  # authors' code: seed + rank

    engine: Any = model
    if info.distributed:
        engine = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        engine = torch.compile(engine, backend=config.compile_backend)

    metrics = MetricsLogger(config.out_dir, enabled=info.is_main, resume_step=step if resume_path else None)
    mean, std = model.preprocess_cfg.mean, model.preprocess_cfg.std
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    last_loss: float | None = None
    last_ckpt: str | None = resume_path
    history: list[dict[str, Any]] = []
    max_steps = config.max_steps

    def save(name: str) -> str:
        nonlocal last_ckpt
        rng = all_gather_objects(ckpt.rng_state())
        path = f"{ckpt.checkpoint_dir(config.out_dir)}/{name}"
        if info.is_main:
            from emotionclip.models import save_checkpoint

            at_end = step_in_epoch >= steps_per_epoch
            extra = {
                "epoch": epoch + 1 if at_end else epoch,
                "step_in_epoch": 0 if at_end else step_in_epoch,
                "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                "rng": rng,
                "world_size": info.world_size,
                "train_config": config.model_dump(mode="json"),
            }
            save_checkpoint(path, model, optimizer=optimizer, scheduler=scheduler, step=step, extra=extra)
            ckpt.prune_step_checkpoints(config.out_dir, config.keep_checkpoints)
        barrier()
        last_ckpt = path
        return path

    model.train()
    done = max_steps is not None and step >= max_steps
    try:
        while epoch < config.epochs and not done:
            sampler.set_epoch(epoch, start=step_in_epoch * config.grad_accum_steps * micro)
            dataset.set_epoch(epoch)
            loader = DataLoader(
                dataset, batch_size=micro, sampler=sampler, num_workers=config.num_workers,
                collate_fn=collate_clips,  # batches built in the workers pass through uncopied
                pin_memory=config.pin_memory and device.type == "cuda", drop_last=True,
                # own generator: creating the iterator must not consume the global RNG
                generator=torch.Generator().manual_seed(config.seed + epoch),
                persistent_workers=False, prefetch_factor=4 if config.num_workers else None,
            )
            it = iter(loader)
            ep_losses: list[float] = []
            ep_clips, ep_wait, ep_t0 = 0, 0.0, time.perf_counter()
            win_clips, win_wait, win_t0 = 0, 0.0, time.perf_counter()
            while step_in_epoch < steps_per_epoch:
                step_loss = 0.0
                for k in range(config.grad_accum_steps):
                    t0 = time.perf_counter()
                    batch = next(it)
                    wait = time.perf_counter() - t0
                    win_wait += wait
                    ep_wait += wait
                    # frames come as an HWC buffer seen as [B, T, 3, S, S]: made contiguous on the device
                    frames = normalize_frames(batch["frames"].to(device, non_blocking=True), mean, std).contiguous()
                    masks = batch_masks(batch, device).float()  # rasterised here from crop-space boxes
                    tokens = batch["tokens"].to(device, non_blocking=True)
                    sentiment = batch["sentiment"].to(device, non_blocking=True).float()
                    sync = k == config.grad_accum_steps - 1
                    ctx = engine.no_sync() if (info.distributed and not sync and hasattr(engine, "no_sync")) \
                        else contextlib.nullcontext()
                    with ctx:
                        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                            v, t, scale = engine(frames, masks, tokens)
                        v_all, t_all, s_all = gather_features(v, t, sentiment)
                        loss = loss_fn(v_all, t_all, s_all, scale.float())
                        # x world: DDP averages gradients; the global-batch loss sums them
                        scaler.scale(loss * info.world_size / config.grad_accum_steps).backward()
                    step_loss += float(loss.detach()) / config.grad_accum_steps
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                clamp_logit_scale(model.named_parameters(), config.logit_scale_max)
                step += 1
                step_in_epoch += 1
                last_loss = step_loss
                ep_losses.append(step_loss)
                n_clips = config.batch_size
                win_clips += n_clips
                ep_clips += n_clips
                if not math.isfinite(step_loss):
                    raise FloatingPointError(f"loss is {step_loss} at step {step}")
                if step % config.log_every_steps == 0 or step == 1:
                    el = time.perf_counter() - win_t0
                    row = {
                        "step": step, "epoch": epoch, "loss": step_loss, "lr": group_lrs(optimizer),
                        "logit_scale": float(model.logit_scale.detach().exp()),  # the multiplier, 1/tau
                        "clips_per_s": win_clips / el if el > 0 else None,
                        "data_wait_frac": win_wait / el if el > 0 else None,
                    }
                    metrics.log_step(row)
                    if info.is_main:
                        history.append(row)
                    win_clips, win_wait, win_t0 = 0, 0.0, time.perf_counter()
                done = max_steps is not None and step >= max_steps
                if step_in_epoch >= steps_per_epoch:
                    break  # the epoch-end checkpoint follows
                if step % config.ckpt_every_steps == 0 or done:
                    save(ckpt.step_checkpoint_name(step))
                if done:
                    break
            del it
            if step_in_epoch >= steps_per_epoch:
                path = save(ckpt.epoch_checkpoint_name(epoch, step))
                el = time.perf_counter() - ep_t0
                row = {
                    "epoch": epoch, "step": step,
                    "loss": sum(ep_losses) / len(ep_losses) if ep_losses else None,
                    "clips_per_s": ep_clips / el if el > 0 else None,
                    "data_wait_frac": ep_wait / el if el > 0 else None,
                    "checkpoint": path,
                }
                if probe_due(config, epoch):
                    if info.is_main:  # the bare model: no collective inside; the others wait below
                        row["probe"] = run_epoch_probe(model, config, epoch, step, device)
                        log.info("epoch %d probe on %s: %s", epoch, config.probe_dataset, row["probe"]["metrics"])
                    barrier()
                metrics.log_epoch(row)
                epoch += 1
                step_in_epoch = 0
                done = done or (max_steps is not None and step >= max_steps)
    finally:
        metrics.close()
    return TrainResult(step=step, epoch=epoch, last_loss=last_loss, checkpoint=last_ckpt, history=history)


def ckpt_load(path: str) -> dict[str, Any]:
    from emotionclip.models.checkpoint import load_checkpoint

    return load_checkpoint(path, map_location="cpu")
