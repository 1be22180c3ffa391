"""HMN and CLS attention grids of the frame encoder (paper Fig. 5, appendix Figs. 6-8).

One row per frame; columns: the frame, then for each chosen layer the HMN token's
attention over the patches (heads averaged, bilinearly upsampled to the frame,
overlaid with a colormap), then the same for the CLS token. The subject (the
person mask the model was given) is outlined on every panel.

    from emotionclip.viz import clip_inputs, plot_attention_grid
    from emotionclip.models import attention_maps, normalize_frames
    frames, masks = clip_inputs(model, "data/manifests", "vid0:3", catalog)
    x = normalize_frames(frames, model.preprocess_cfg.mean, model.preprocess_cfg.std)
    plot_attention_grid(frames, masks, attention_maps(model, x, masks, (1, 2, 3, 4)), "fig5.png")

Matplotlib is used through `matplotlib.figure.Figure` and the Agg canvas only:
no pyplot, no global backend switch, nothing left behind between calls.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from emotionclip.core.io import atomic_path

if TYPE_CHECKING:
    import pandas as pd

    from emotionclip.models.attention import AttentionMaps

# Figure geometry, in pixels at DPI (so the PNG's size is exact: see `grid_size_px`).
DPI = 100
PANEL_PX = 160  # each panel is a PANEL_PX square
HEADER_PX = 24  # the band above the first row holding the column titles
TITLE_PX = 28  # the band above that for the figure title, when there is one
PAD_PX = 2  # blank border inside each panel's cell
CMAP = "jet"
ALPHA = 0.5


def grid_size_px(n_frames: int, n_layers: int, title: bool = False) -> tuple[int, int]:
    """(width, height) in pixels of the PNG `plot_attention_grid` writes for
    `n_frames` rows and `n_layers` layers (1 + 2 * n_layers columns)."""
    return PANEL_PX * (1 + 2 * n_layers), PANEL_PX * n_frames + HEADER_PX + (TITLE_PX if title else 0)


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def upsample_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[T, K, gh, gw] patch-grid maps -> [T, K, H, W], bilinear (align_corners=False)."""
    return F.interpolate(maps.detach().float().cpu(), size=size, mode="bilinear", align_corners=False)


def _outline(ax: Any, mask: np.ndarray) -> None:
    """The subject region's outline (level 0.5 of the mask); a frame that is all
    subject gets a border, one without a subject nothing."""
    from matplotlib.patches import Rectangle

    h, w = mask.shape
    lo, hi = float(mask.min()), float(mask.max())
    if hi < 0.5:
        return
    # white over a wider black stroke: visible on a dark, a bright or a coloured panel
    for color, width in (("black", 2.4), ("white", 1.2)):
        if lo >= 0.5:
            ax.add_patch(Rectangle((-0.5, -0.5), w, h, fill=False, edgecolor=color, linewidth=width))
        else:
            ax.contour(mask, levels=[0.5], colors=color, linewidths=width)


def plot_attention_grid(
    frames_uint8: torch.Tensor | np.ndarray,
    masks: torch.Tensor | np.ndarray,
    maps: "AttentionMaps",
    out: str | os.PathLike,
    title: str | None = None,
    row_labels: Sequence[str] | None = None,
) -> str | os.PathLike:
    """Draw the attention grid of one clip and write it as a PNG (atomically; a local
    path or an fsspec URL). frames_uint8 [T, 3, S, S] (RGB), masks [T, S, S] (1 =
    subject), maps: `attention_maps` of the same frames. Each overlay is scaled to
    its own maximum (the colormap shows where a token looks, not how much of its
    attention the patches get against itself). Returns `out`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    frames = _as_numpy(frames_uint8)
    m = _as_numpy(masks).astype(np.float32)
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be [T, 3, S, S], got shape {frames.shape}")
    t, _, h, w = frames.shape
    if m.shape != (t, h, w):
        raise ValueError(f"masks {m.shape} do not match frames {frames.shape}")
    if maps.hmn.shape[0] != t or maps.cls.shape[0] != t:
        raise ValueError(f"attention maps are for {maps.hmn.shape[0]} frames, not {t}")
    k = len(maps.layers)
    if maps.hmn.shape[1] != k or maps.cls.shape[1] != k:
        raise ValueError(f"attention maps have {maps.hmn.shape[1]} layers, expected {k} ({maps.layers})")
    if row_labels is not None and len(row_labels) != t:
        raise ValueError(f"{len(row_labels)} row labels for {t} frames")
    images = frames.transpose(0, 2, 3, 1)
    if images.dtype != np.uint8:
        images = np.clip(images, 0, 255).astype(np.uint8)
    heat = {"HMN": upsample_maps(maps.hmn, (h, w)).numpy(), "CLS": upsample_maps(maps.cls, (h, w)).numpy()}

    width_px, height_px = grid_size_px(t, k, title is not None)
    fig = Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)
    top_px = HEADER_PX + (TITLE_PX if title is not None else 0)
    columns: list[tuple[str, str | None, int]] = [("frame", None, -1)]
    columns += [(f"{token} L{layer}", token, j) for token in ("HMN", "CLS") for j, layer in enumerate(maps.layers)]
    for r in range(t):
        for c, (name, token, j) in enumerate(columns):
            left = c * PANEL_PX + PAD_PX
            bottom = height_px - top_px - (r + 1) * PANEL_PX + PAD_PX
            size = PANEL_PX - 2 * PAD_PX
            ax = fig.add_axes((left / width_px, bottom / height_px, size / width_px, size / height_px))
            ax.imshow(images[r])
            if token is not None:
                hm = heat[token][r, j]
                peak = float(hm.max())
                ax.imshow(hm / peak if peak > 0 else hm, cmap=CMAP, alpha=ALPHA, vmin=0.0, vmax=1.0)
            _outline(ax, m[r])
            ax.set_xlim(-0.5, w - 0.5)
            ax.set_ylim(h - 0.5, -0.5)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=9, pad=3)
            if c == 0:
                label = row_labels[r] if row_labels is not None else f"t={r}"
                ax.text(4, 4, label, fontsize=7, color="white", va="top", ha="left",
                        bbox={"facecolor": "black", "alpha": 0.6, "pad": 1.5, "linewidth": 0})
    if title is not None:
        fig.text(0.5, 1.0 - (TITLE_PX / 2) / height_px, title, ha="center", va="center", fontsize=10)
    with atomic_path(out) as tmp:
        # the temporary name has no .png suffix: give the format
        fig.savefig(tmp, format="png", dpi=DPI, facecolor="white", metadata={"Software": None})
    return out


def _frames_location(frames_location: Any) -> Callable[[str], str]:
    if callable(frames_location):
        return frames_location
    if hasattr(frames_location, "artifact"):  # a Catalog
        from emotionclip.training.loop import FramesLocation

        return FramesLocation(frames_location)
    raise TypeError("frames_location must be a callable video_id -> frame store, or a Catalog")


def _no_tokens(texts: list[str]) -> torch.Tensor:
    """The dataset tokenizes each clip's sentence; the attention maps need no text."""
    return torch.zeros(len(texts), 1, dtype=torch.long)


def clip_inputs(
    model: Any,
    manifests: "str | os.PathLike | pd.DataFrame",
    clip_id: str,
    frames_location: Any,
    num_frames: int = 8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The frames and subject masks of manifest clip `clip_id` as the model sees them
    in evaluation (`ClipDataset`, train=False: uniformly spaced frames, centre crop,
    the model's preprocessing): (uint8 [T, 3, S, S], uint8 [T, S, S]).

    manifests: a manifests folder / shard (read with `read_manifests`) or a DataFrame;
    frames_location: video_id -> frame store location, or a Catalog. An unknown
    clip_id raises ValueError naming it."""
    import pandas as pd

    from emotionclip.training.dataset import ClipDataset

    if isinstance(manifests, pd.DataFrame):
        df = manifests
    else:
        from emotionclip.core.manifest_store import read_manifests

        df = read_manifests(manifests)
    rows = df[df["clip_id"].astype(str) == str(clip_id)]
    if rows.empty:
        where = "" if isinstance(manifests, pd.DataFrame) else f" {manifests}"
        raise ValueError(f"clip {clip_id!r} is not in the manifests{where} ({len(df)} clips)")
    ds = ClipDataset(rows.iloc[:1].reset_index(drop=True), _frames_location(frames_location), _no_tokens,
                     preprocess=model.preprocess_cfg, train=False, num_frames=num_frames,
                     max_replacements=0)  # one clip: an unreadable one is an error, never another clip
    sample = ds[0]
    return sample["frames"], sample["masks"]


def plot_clip_attention(
    model: Any,
    manifests: "str | os.PathLike | pd.DataFrame",
    clip_id: str,
    frames_location: Any,
    out: str | os.PathLike,
    layers: Sequence[int] | str = (1, 2, 3, 4),
    num_frames: int = 8,
    title: str | None = None,
) -> "AttentionMaps":
    """clip_inputs -> attention_maps -> plot_attention_grid for one manifest clip.
    layers: 1-based numbers or a spec such as "1-4". Returns the maps drawn."""
    from emotionclip.models import frame_encoder as fe
    from emotionclip.models.attention import attention_maps, parse_layers
    from emotionclip.models.transforms import normalize_frames

    if model.subject_mode == "vanilla":
        raise ValueError("attention maps need an HMN token: subject_mode sap or saam, not vanilla")
    if isinstance(layers, str):
        layers = parse_layers(layers, fe.num_layers(model.clip.visual))
    frames, masks = clip_inputs(model, manifests, clip_id, frames_location, num_frames=num_frames)
    device = next(model.parameters()).device
    cfg = model.preprocess_cfg
    x = normalize_frames(frames.to(device), cfg.mean, cfg.std)
    was_training = model.training
    model.eval()
    try:
        maps = attention_maps(model, x, masks.to(device), layers)
    finally:
        model.train(was_training)
    plot_attention_grid(frames, masks, maps, out, title=title)
    return maps
