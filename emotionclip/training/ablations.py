"""The paper's ablations as configuration: Table 1 (subject-aware encoding and the
loss, section 4.2.1-4.2.2) and Table 3 (encoder initialisation, freezing, temporal
encoder, section 4.2.3), with the BoLD numbers the paper reports for each row.

    from emotionclip.training import make_config
    cfg = make_config("paper", ablation="text-frozen", manifests=..., out_dir=...)

`emotionclip train --ablation NAME` does the same. `apply_encoder_setup` makes a
built model follow a config's `init_*` / `freeze_*` values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from emotionclip.training.parts import parameter_part


@dataclass(frozen=True)
class Ablation:
    """One row of Table 1 or Table 3: config overrides and the paper's BoLD results
    (validation split; mAP and AUC in %, R2 of the VAD regression where reported)."""

    name: str
    rows: tuple[str, ...]  # where the row is in the paper
    overrides: dict[str, Any] = field(default_factory=dict)
    bold: dict[str, float] = field(default_factory=dict)
    trainable: tuple[str, ...] = ("frame", "text", "temporal", "logit_scale")  # parts that get gradients


_FULL = {"subject_mode": "sap", "beta": 10.0}  # the full model: SAP + SNCE (section 4.3)

ABLATIONS: dict[str, Ablation] = {a.name: a for a in (
    # Table 1: vanilla, +SAAM and +SAP train with the plain CLIP loss (beta = 0, section 4.2.2:
    # "equivalent to the vanilla infoNCE loss when beta is set to zero").
    Ablation("vanilla", ("Table 1: EmotionCLIP (vanilla)",),
             {"subject_mode": "vanilla", "beta": 0.0}, {"mAP": 21.97, "AUC": 68.85, "R2": 0.130}),
    Ablation("saam", ("Table 1: + SAAM",),
             {"subject_mode": "saam", "beta": 0.0}, {"mAP": 21.53, "AUC": 68.56, "R2": 0.137}),
    Ablation("sap", ("Table 1: + SAP",),
             {"subject_mode": "sap", "beta": 0.0}, {"mAP": 22.28, "AUC": 69.06, "R2": 0.131}),
    Ablation("sap-snce", ("Table 1: + SAP & SNCE", "Table 3: text ✓, frame ✓, temporal -"),
             dict(_FULL), {"mAP": 22.51, "AUC": 69.30, "R2": 0.133}),
    # Table 3 (all SAP + SNCE). "-": trainable, random initialisation; cross: frozen,
    # pre-trained; the temporal encoder is always random ("-"), "◦" = no parameters.
    Ablation("text-random", ("Table 3: text -, frame ✓, temporal -",),
             {**_FULL, "init_text": "random"}, {"mAP": 12.43, "AUC": 54.96}),
    Ablation("all-random", ("Table 3: text -, frame -, temporal -",),
             {**_FULL, "init_text": "random", "init_frame": "random"}, {"mAP": 11.02, "AUC": 50.28}),
    Ablation("text-frozen", ("Table 3: text ✗, frame ✓, temporal -",),
             {**_FULL, "freeze_text": True}, {"mAP": 13.40, "AUC": 57.38},
             trainable=("frame", "temporal", "logit_scale")),
    Ablation("text-frame-frozen", ("Table 3: text ✗, frame ✗, temporal -",),
             {**_FULL, "freeze_text": True, "freeze_frame": True}, {"mAP": 18.43, "AUC": 65.08},
             trainable=("temporal", "logit_scale")),
    Ablation("temporal-mean", ("Table 3: text ✓, frame ✓, temporal ◦ (mean pooling)",),
             {**_FULL, "temporal": "mean"}, {"mAP": 21.17, "AUC": 68.74},
             trainable=("frame", "text", "logit_scale")),
)}


def get_ablation(name: str) -> Ablation:
    if name not in ABLATIONS:
        raise ValueError(f"unknown ablation {name!r}; choose one of {list(ABLATIONS)}")
    return ABLATIONS[name]


def _clip_part(name: str) -> str:
    return parameter_part(name if name.startswith("clip.") else f"clip.{name}")


def apply_encoder_setup(model: nn.Module, config: Any, seed: int | None = None) -> nn.Module:
    """Re-initialise (`init_text` / `init_frame` = "random") and freeze (`freeze_text` /
    `freeze_frame`) the encoders of an EmotionCLIP built with pre-trained weights.

    A random encoder takes the weights of a freshly initialised OpenCLIP model of the
    same architecture (OpenCLIP's own initialisation, seeded by `seed`). A frozen
    encoder's parameters get `requires_grad=False`, so the optimizer never sees them.
    The HMN token of SAAM counts as part of the frame encoder."""
    random_parts = {p for p, flag in (("text", config.init_text), ("frame", config.init_frame)) if flag == "random"}
    if random_parts:
        from emotionclip.models import create_openclip
        from emotionclip.models.frame_encoder import init_hmn_token

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed if seed is None else seed)
            fresh = create_openclip(model.config.clip_model, None)
        fresh_state = fresh.state_dict()
        with torch.no_grad():
            for name, tensor in model.clip.state_dict().items():
                if _clip_part(name) in random_parts:
                    tensor.copy_(fresh_state[name])
            if "frame" in random_parts and getattr(model, "hmn_token", None) is not None:
                model.hmn_token.copy_(init_hmn_token(model.clip.visual))
    frozen = {p for p, flag in (("text", config.freeze_text), ("frame", config.freeze_frame)) if flag}
    for name, p in model.named_parameters():
        if parameter_part(name) in frozen:
            p.requires_grad_(False)
    return model


def trainable_parts(model: nn.Module) -> set[str]:
    """The parts ('frame', 'text', 'temporal', 'logit_scale') with a trainable parameter."""
    return {parameter_part(n) for n, p in model.named_parameters() if p.requires_grad}
