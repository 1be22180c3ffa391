"""Parameter groups, AdamW and the learning-rate schedules of both presets.

Groups (appendix B.2 and the authors' `main.py`): the frame and text
encoders' gains and biases get `lr_gain_bias` and no weight decay, their
weights `lr_encoder`; the temporal encoder's weights get `lr_temporal` and its
gains and biases `lr_temporal_gain_bias` (both 1e-6 in the paper, 1e-8 / 5e-5
in the authors' code); the logit scale has its own group (the authors' code:
encoder-weight lr, no decay). Frozen parameters (`requires_grad=False`, the
Table 3 ablations) are in no group. The schedule is a pure function of the
optimizer step, so resuming needs nothing but the step counter.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch import nn

from emotionclip.training.config import TrainConfig
from emotionclip.training.parts import is_gain_or_bias, parameter_part

GROUP_NAMES: tuple[str, ...] = (
    "frame_gain_bias", "frame_weight", "text_gain_bias", "text_weight",
    "temporal_gain_bias", "temporal_weight", "logit_scale",
)

def param_groups(model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """AdamW parameter groups with `name`, `lr` and `weight_decay` (empty groups dropped)."""
    lrs = {
        "frame_gain_bias": (config.lr_gain_bias, 0.0),
        "frame_weight": (config.lr_encoder, config.weight_decay),
        "text_gain_bias": (config.lr_gain_bias, 0.0),
        "text_weight": (config.lr_encoder, config.weight_decay),
        "temporal_gain_bias": (config.lr_temporal_gain_bias, 0.0),
        "temporal_weight": (config.lr_temporal, config.weight_decay),
        "logit_scale": (config.lr_logit_scale, 0.0),
    }
    buckets: dict[str, list[nn.Parameter]] = {g: [] for g in GROUP_NAMES}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = parameter_part(name)
        if part == "logit_scale":
            buckets["logit_scale"].append(p)
        else:
            buckets[f"{part}_{'gain_bias' if is_gain_or_bias(name, p) else 'weight'}"].append(p)
    return [
        {"name": g, "params": ps, "lr": lrs[g][0], "weight_decay": lrs[g][1]}
        for g, ps in buckets.items() if ps
    ]


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    groups = param_groups(model, config)
    for g in groups:
        g["initial_lr"] = g["lr"]
    return torch.optim.AdamW(groups, lr=config.lr_encoder, betas=config.betas, eps=config.eps)


def _cosine(base: float, floor: float, t: float, total: float) -> float:
    if total <= 0:
        return base
    t = min(max(t, 0.0), total)
    return floor + (base - floor) * 0.5 * (1.0 + math.cos(math.pi * t / total))


class WarmupCosine:
    """Linear warm-up then cosine decay to `min_lr`, as a function of the step.

    unit="step" (paper): warm-up from `init_factor * base` to `base` over
    `warmup_steps`, then cosine over the remaining steps of all epochs.
    unit="epoch" (authors' code, `LRWarmupScheduler` in auto mode around
    `CosineAnnealingLR(T_max=epochs)`): the cosine value changes once per epoch;
    during the first `warmup_steps` iterations the lr goes linearly from
    `init_factor * base` to the cosine value of the epoch where warm-up ends.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int,
                 steps_per_epoch: int, epochs: int, min_lr: float, init_factor: float = 0.0,
                 unit: str = "step") -> None:
        self.optimizer = optimizer
        self.base_lrs = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.epochs = epochs
        self.min_lr = min_lr
        self.init_factor = init_factor
        self.unit = unit
        self.step_count = 0
        self._apply()

    def lr_at(self, step: int) -> list[float]:
        out = []
        for base in self.base_lrs:
            if self.unit == "step":
                if step < self.warmup_steps:
                    a = step / self.warmup_steps
                    out.append(base * (self.init_factor + (1.0 - self.init_factor) * a))
                else:
                    out.append(_cosine(base, self.min_lr, step - self.warmup_steps,
                                       self.total_steps - self.warmup_steps))
            else:
                epoch = step // self.steps_per_epoch
                if step < self.warmup_steps:
                    end = _cosine(base, self.min_lr, self.warmup_steps // self.steps_per_epoch, self.epochs)
                    a = step / self.warmup_steps
                    out.append(base * self.init_factor * (1.0 - a) + end * a)
                else:
                    out.append(_cosine(base, self.min_lr, epoch, self.epochs))
        return out

    def _apply(self) -> None:
        for g, lr in zip(self.optimizer.param_groups, self.lr_at(self.step_count)):
            g["lr"] = lr

    def step(self) -> None:
        """Call after each optimizer step."""
        self.step_count += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"step_count": self.step_count, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = int(state["step_count"])
        self.base_lrs = [float(x) for x in state["base_lrs"]]
        self._apply()


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int) -> WarmupCosine:
    return WarmupCosine(
        optimizer,
        warmup_steps=config.warmup_steps,
        total_steps=steps_per_epoch * config.epochs,
        steps_per_epoch=steps_per_epoch,
        epochs=config.epochs,
        min_lr=config.min_lr,
        init_factor=config.warmup_init_factor,
        unit=config.schedule_unit,
    )


def group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    return {g.get("name", str(i)): float(g["lr"]) for i, g in enumerate(optimizer.param_groups)}


def clamp_logit_scale(params: Iterable[tuple[str, torch.Tensor]], max_value: float) -> None:
    """Clamp every `logit_scale` parameter to [0, max_value] in place."""
    with torch.no_grad():
        for name, p in params:
            if name.split(".")[-1] == "logit_scale":
                p.clamp_(0.0, max_value)
