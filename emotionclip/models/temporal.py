"""Temporal encoder: frame features [B, T, D] -> video feature [B, D] (appendix B.1; docs/design.md section 5).

`transformer` (paper): learned frame position embedding, 6 post-norm
TransformerEncoderLayers (8 heads, 4D feed-forward, GELU) with a final
LayerNorm, added back to the input (residual, without the position embedding),
then the mean over time. `mean`: plain average (the paper's ablation).
Submodule names match the authors' `visual_head` so their weights load as is.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

TemporalMode = Literal["transformer", "mean"]

# Paper / authors' code: 6 layers, 8 heads, 8 frames per clip.
DEFAULT_LAYERS = 6
DEFAULT_HEADS = 8
DEFAULT_MAX_FRAMES = 8
# PyTorch's TransformerEncoderLayer default, which the authors' head used.
DEFAULT_DROPOUT = 0.1


class TemporalEncoder(nn.Module):
    def __init__(
        self,
        width: int,
        mode: TemporalMode = "transformer",
        max_frames: int = DEFAULT_MAX_FRAMES,
        layers: int = DEFAULT_LAYERS,
        heads: int = DEFAULT_HEADS,
        dropout: float = DEFAULT_DROPOUT,
    ):
        super().__init__()
        if mode not in ("transformer", "mean"):
            raise ValueError(f"temporal must be 'transformer' or 'mean', got {mode!r}")
        self.mode = mode
        self.max_frames = max_frames
        if mode == "transformer":
            if width % heads:
                raise ValueError(f"temporal width {width} is not divisible by {heads} heads")
            layer = nn.TransformerEncoderLayer(
                d_model=width,
                nhead=heads,
                dim_feedforward=4 * width,
                dropout=dropout,
                activation="gelu",
                batch_first=True,
                norm_first=False,  # post-norm, as the authors' head
            )
            self.fusion_layer = nn.TransformerEncoder(
                layer, num_layers=layers, norm=nn.LayerNorm(width), enable_nested_tensor=False
            )
            self.frame_position_embedding = nn.Embedding(max_frames, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, T, D] frame features -> [B, D]."""
        if x.dim() != 3:
            raise ValueError(f"temporal encoder expects [B, T, D], got {tuple(x.shape)}")
        if self.mode == "transformer":
            t = x.shape[1]
            if t > self.max_frames:
                raise ValueError(f"clip has {t} frames but the model was built for at most {self.max_frames}")
            pos = self.frame_position_embedding.weight[:t].to(x.dtype)
            x = self.fusion_layer(x + pos) + x
        return x.mean(dim=1)
