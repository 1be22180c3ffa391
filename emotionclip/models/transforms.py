"""Frame and subject-mask preprocessing for EmotionCLIP (paper section 4 / authors' code).

Each frame: resize so the smaller edge is 256, crop 224 (random per frame for
training, centre for evaluation), to a tensor normalised with the model's
mean/std. The subject mask (union of the person boxes with confidence above
0.5, built from normalised boxes) gets the same geometric transform. Written
for a torch Dataset: `ClipPreprocessor(cfg, train=True)(frames, boxes, confs)`
-> (video [T, 3, 224, 224] float32, mask [T, 224, 224] bool).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from PIL import Image

# OpenAI CLIP's normalisation (what OpenCLIP's laion2b weights expect).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# The authors' released checkpoint was trained with ImageNet statistics.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The normalisations a training run can choose (TrainConfig.normalization); the paper is silent.
NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "clip": (CLIP_MEAN, CLIP_STD),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
}

# Paper: smaller edge 256, 224 crop; authors' code: boxes with confidence > 0.5 form the mask.
DEFAULT_RESIZE = 256
DEFAULT_CROP = 224
DEFAULT_BOX_CONF = 0.5

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


@dataclass
class PreprocessConfig:
    """Part of the model config: how frames must be prepared for this model's weights."""

    resize: int = DEFAULT_RESIZE
    crop: int = DEFAULT_CROP
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    interpolation: str = "bicubic"
    box_conf_threshold: float = DEFAULT_BOX_CONF

    def __post_init__(self) -> None:
        self.mean = tuple(float(x) for x in self.mean)  # type: ignore[assignment]
        self.std = tuple(float(x) for x in self.std)  # type: ignore[assignment]
        if self.crop > self.resize:
            raise ValueError(f"crop {self.crop} is larger than the resized short edge {self.resize}")
        if self.interpolation not in _RESAMPLE:
            raise ValueError(f"interpolation must be one of {sorted(_RESAMPLE)}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PreprocessConfig":
        return cls(**d)


def boxes_to_mask(
    boxes_normalized: np.ndarray | torch.Tensor | Sequence[Sequence[float]],
    conf: np.ndarray | torch.Tensor | Sequence[float] | None,
    height: int,
    width: int,
    conf_threshold: float = DEFAULT_BOX_CONF,
) -> torch.Tensor:
    """Union of the boxes with conf > conf_threshold as a bool mask [height, width].

    boxes_normalized: [K, 4] x1, y1, x2, y2 in [0, 1] of the frame. A pixel belongs to
    a box when its centre lies inside it, so the mask is right at any stored size.
    `conf=None` keeps every box.
    """
    b = torch.as_tensor(np.asarray(boxes_normalized, dtype=np.float32)).reshape(-1, 4)
    mask = torch.zeros(height, width, dtype=torch.bool)
    if b.shape[0] == 0:
        return mask
    if conf is not None:
        c = torch.as_tensor(np.asarray(conf, dtype=np.float32)).reshape(-1)
        if c.shape[0] != b.shape[0]:
            raise ValueError(f"{b.shape[0]} boxes but {c.shape[0]} confidences")
        b = b[c > conf_threshold]
    ys = (torch.arange(height, dtype=torch.float32) + 0.5) / height
    xs = (torch.arange(width, dtype=torch.float32) + 0.5) / width
    for x1, y1, x2, y2 in b.tolist():
        rows = (ys >= y1) & (ys < y2)
        cols = (xs >= x1) & (xs < x2)
        mask |= rows[:, None] & cols[None, :]
    return mask


def resized_size(width: int, height: int, short_edge: int) -> tuple[int, int]:
    """(width, height) after scaling so the smaller edge is `short_edge` (aspect kept)."""
    if width <= height:
        return short_edge, max(short_edge, round(height * short_edge / width))
    return max(short_edge, round(width * short_edge / height)), short_edge


def _crop_origin(
    width: int, height: int, crop: int, train: bool, generator: torch.Generator | None
) -> tuple[int, int]:
    if train:
        left = int(torch.randint(0, width - crop + 1, (1,), generator=generator))
        top = int(torch.randint(0, height - crop + 1, (1,), generator=generator))
        return left, top
    return int(round((width - crop) / 2.0)), int(round((height - crop) / 2.0))


class ClipPreprocessor:
    """Frames (PIL images) + per-frame person boxes -> (video [T,3,S,S], mask [T,S,S])."""

    def __init__(self, cfg: PreprocessConfig | None = None, train: bool = False):
        self.cfg = cfg or PreprocessConfig()
        self.train = train
        self._mean = torch.tensor(self.cfg.mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(self.cfg.std, dtype=torch.float32).view(3, 1, 1)

    def frame(
        self,
        image: Image.Image,
        boxes: np.ndarray | Sequence[Sequence[float]] | None = None,
        conf: np.ndarray | Sequence[float] | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One frame -> (image [3, S, S] normalised float32, mask [S, S] bool)."""
        cfg = self.cfg
        image = image.convert("RGB")
        w, h = resized_size(image.width, image.height, cfg.resize)
        if (w, h) != image.size:
            image = image.resize((w, h), _RESAMPLE[cfg.interpolation])
        left, top = _crop_origin(w, h, cfg.crop, self.train, generator)
        image = image.crop((left, top, left + cfg.crop, top + cfg.crop))
        x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)
        x = (x - self._mean) / self._std
        if boxes is None:
            mask = torch.zeros(cfg.crop, cfg.crop, dtype=torch.bool)
        else:
            # the mask is drawn at the resized size, then cropped like the image
            full = boxes_to_mask(boxes, conf, h, w, cfg.box_conf_threshold)
            mask = full[top : top + cfg.crop, left : left + cfg.crop].clone()
        return x, mask

    def __call__(
        self,
        frames: Sequence[Image.Image],
        boxes: Sequence[np.ndarray | Sequence[Sequence[float]] | None] | None = None,
        confs: Sequence[np.ndarray | Sequence[float] | None] | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """frames: T images; boxes[t]: [K_t, 4] normalised boxes of frame t (or None);
        confs[t]: [K_t] confidences (None keeps every box)."""
        if boxes is not None and len(boxes) != len(frames):
            raise ValueError(f"{len(frames)} frames but boxes for {len(boxes)}")
        if confs is not None and len(confs) != len(frames):
            raise ValueError(f"{len(frames)} frames but confidences for {len(confs)}")
        xs, ms = [], []
        for t, img in enumerate(frames):
            b = boxes[t] if boxes is not None else None
            c = confs[t] if confs is not None else None
            x, m = self.frame(img, b, c, generator)
            xs.append(x)
            ms.append(m)
        return torch.stack(xs), torch.stack(ms)


def boxes_per_frame(
    boxes: Iterable[dict[str, Any]] | None, frame_indices: Sequence[int]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Split a manifest row's `boxes` (list of {frame_idx, x1, y1, x2, y2, conf}) into
    per-frame arrays for `frame_indices`: ([K_t, 4] boxes, [K_t] confidences) per frame."""
    by_frame: dict[int, list[dict[str, Any]]] = {}
    for b in boxes if boxes is not None else []:
        by_frame.setdefault(int(b["frame_idx"]), []).append(b)
    out_b, out_c = [], []
    for k in frame_indices:
        rows = by_frame.get(int(k), [])
        out_b.append(np.array([[r["x1"], r["y1"], r["x2"], r["y2"]] for r in rows], dtype=np.float32).reshape(-1, 4))
        out_c.append(np.array([r["conf"] for r in rows], dtype=np.float32))
    return out_b, out_c
