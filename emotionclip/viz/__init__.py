"""Plots of the model (no Prefect): the frame encoder's HMN and CLS attention maps
(paper Fig. 5, appendix Figs. 6-8)."""

from __future__ import annotations

from emotionclip.viz.attention import (
    clip_inputs,
    grid_size_px,
    plot_attention_grid,
    plot_clip_attention,
    upsample_maps,
)

__all__ = ["clip_inputs", "grid_size_px", "plot_attention_grid", "plot_clip_attention", "upsample_maps"]
