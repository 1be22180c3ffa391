"""Which part of EmotionCLIP a parameter belongs to (frame, text, temporal, logit scale),
and whether it is a gain or bias: the groups of appendix B.2 and the units the
Table 3 ablations freeze or re-initialise."""

from __future__ import annotations

import torch

# Module names inside EmotionCLIP (`clip.visual.*` = frame encoder, `temporal.*`;
# the authors' `visual_head` too); everything else in `clip` is the text tower.
TEMPORAL_MARKERS: tuple[str, ...] = ("temporal", "visual_head")
# SAAM's learnable HMN token belongs to the frame encoder (like the CLS token).
FRAME_MARKERS: tuple[str, ...] = ("visual", "hmn_token")


def _strip_wrappers(name: str) -> str:
    for prefix in ("module.", "_orig_mod."):
        while name.startswith(prefix):
            name = name[len(prefix):]
    return name


def is_gain_or_bias(name: str, param: torch.Tensor) -> bool:
    """Gains (norm weights, embeddings' scalar gains) and biases: 1-D tensors or
    parameters of a norm layer (the authors' test: ndim < 2, 'ln'/'bn'/'bias')."""
    if param.ndim < 2:
        return True
    parts = name.split(".")
    return any(p.startswith(("ln", "bn")) or "norm" in p or p == "bias" for p in parts)


def parameter_part(name: str) -> str:
    """'frame', 'text', 'temporal' or 'logit_scale' for a parameter name."""
    name = _strip_wrappers(name)
    parts = name.split(".")
    if parts[-1] == "logit_scale":
        return "logit_scale"
    if any(p in TEMPORAL_MARKERS for p in parts):
        return "temporal"
    if any(p in FRAME_MARKERS for p in parts):
        return "frame"
    return "text"
