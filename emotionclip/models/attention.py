"""HMN and CLS attention maps of the frame encoder (paper Fig. 5, appendix Figs. 6-8).

`attention_maps(model, frames, masks, layers=(1, 2, 3, 4))` runs the frame encoder
once and returns, for each chosen layer (1-based, as the paper's figures number
them), the attention of the HMN token and of the CLS token over the image patches,
averaged over heads, on the patch grid. Works for `sap` and `saam` (both have an
HMN token).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from emotionclip.models import frame_encoder as fe


@dataclass
class AttentionMaps:
    """Per-frame attention over the patch grid, heads averaged.

    layers: the 1-based layer numbers; hmn, cls: [T, len(layers), gh, gw] (the HMN /
    CLS token's attention to each patch); hmn_self: [T, len(layers)] (HMN to itself);
    weights: {layer: [T, heads, L, L]}, the full attention (tokens [CLS, patches, HMN])."""

    layers: tuple[int, ...]
    hmn: torch.Tensor
    cls: torch.Tensor
    hmn_self: torch.Tensor
    weights: dict[int, torch.Tensor]


def parse_layers(spec: str, n_layers: int) -> tuple[int, ...]:
    """'1-4' or '1,3,12' -> 1-based layer numbers, checked against the ViT's depth."""
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        a, sep, b = part.partition("-")
        if not (a.strip().isdigit() and (not sep or b.strip().isdigit())):
            raise ValueError(f"{part!r} is not a layer number or a range like 1-4")
        lo, hi = int(a), int(b) if sep else int(a)
        if hi < lo:
            raise ValueError(f"range {part!r} runs backwards")
        out.extend(range(lo, hi + 1))
    if not out:
        raise ValueError(f"no layers in {spec!r}")
    bad = [k for k in out if not 1 <= k <= n_layers]
    if bad:
        raise ValueError(f"layers {bad} are outside 1..{n_layers} (the frame encoder's depth)")
    return tuple(dict.fromkeys(out))


@torch.no_grad()
def attention_maps(
    model: torch.nn.Module,
    frames: torch.Tensor,
    masks: torch.Tensor | None,
    layers: Sequence[int] = (1, 2, 3, 4),
) -> AttentionMaps:
    """frames [T, 3, H, W] (normalised model inputs), masks [T, H, W] -> AttentionMaps.

    Runs the model in eval mode (restored after). In saam mode the eq. 4 mask holds in
    the first `saam_layers` layers only: beyond them the HMN token attends freely."""
    if model.subject_mode == "vanilla":
        raise ValueError("attention maps need an HMN token: subject_mode sap or saam, not vanilla")
    visual = model.clip.visual
    layers = tuple(int(k) for k in layers)
    n = fe.num_layers(visual)
    if any(not 1 <= k <= n for k in layers):
        raise ValueError(f"layers {layers} must lie in 1..{n}")
    was_training = model.training
    model.eval()
    try:
        _, weights = model.encode_frames(frames, masks, return_attention=[k - 1 for k in layers])
    finally:
        model.train(was_training)
    gh, gw = visual.grid_size if hasattr(visual, "grid_size") else (None, None)
    m = weights[layers[0] - 1].shape[-1] - 2
    if gh is None or gh * gw != m:
        gh = gw = int(round(m ** 0.5))
    per_layer = [weights[k - 1].mean(dim=1) for k in layers]  # [T, L, L] each
    hmn = torch.stack([w[:, -1, 1 : m + 1] for w in per_layer], dim=1).reshape(-1, len(layers), gh, gw)
    cls = torch.stack([w[:, 0, 1 : m + 1] for w in per_layer], dim=1).reshape(-1, len(layers), gh, gw)
    hmn_self = torch.stack([w[:, -1, -1] for w in per_layer], dim=1)
    return AttentionMaps(layers=layers, hmn=hmn, cls=cls, hmn_self=hmn_self,
                         weights={k: weights[k - 1] for k in layers})
