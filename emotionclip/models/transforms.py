"""Frame and subject-mask preprocessing: the one implementation that training
(`emotionclip.training.dataset.ClipDataset`) and evaluation (`ClipPreprocessor`,
used by `emotionclip.evaluation.features`) share, so the two cannot drift.

Per frame (paper appendix B.2, authors' loader):

1. `decode_frame`: the stored JPEG -> uint8 [3, H, W] RGB;
2. `resize_short_edge`: the smaller edge to `resize` (256), torchvision's
   antialiased resize on the uint8 tensor; a no-op for stored frames, which are
   already at 256;
3. `crop_frames` / `crop_origin`: a `crop` (224) square, uniform at random per
   frame in training, the centre in evaluation;
4. `normalize_frames`: to float with the model's mean/std (the training loop
   does this on the device: uint8 is 4x less data through the workers).

The subject mask is the union of the frame's person boxes with confidence above
`box_conf_threshold` (0.5, the authors' code), in normalised coordinates, under
the frame's crop. One rule: a pixel belongs to a box when its centre lies inside
it, in float32. `box_crop_ranges` turns boxes into each one's pixel rectangle in
the crop (vectorised over a whole batch), `rasterize_mask_boxes` paints
rectangles into masks (batched, on any device); every mask here, the
full-frame `boxes_to_mask` included, is made by these two.
"""

from __future__ import annotations

import functools
import io
import warnings
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, NamedTuple, Sequence, Union

import numpy as np
import torch

if TYPE_CHECKING:
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
INTERPOLATIONS = ("bicubic", "bilinear")

# What `ClipPreprocessor` takes as a frame: encoded bytes, a uint8 [3, H, W] tensor, or a PIL image.
Frame = Union[bytes, torch.Tensor, "Image.Image"]


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
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PreprocessConfig":
        return cls(**d)


# -- pixels ------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _torchvision_decoder() -> Callable[[bytes], torch.Tensor] | None:
    try:
        with warnings.catch_warnings():
            # deprecated in favour of TorchCodec from torchvision 0.29; PIL is the fallback
            warnings.simplefilter("ignore", DeprecationWarning)
            from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        return None

    def decode(jpeg: bytes) -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_jpeg(torch.frombuffer(bytearray(jpeg), dtype=torch.uint8), mode=ImageReadMode.RGB)

    return decode


def pil_to_tensor(image: "Image.Image") -> torch.Tensor:
    """A PIL image -> uint8 [3, H, W] RGB (a view of an HWC buffer, as the JPEG decoder gives)."""
    return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)


def decode_frame(data: bytes) -> torch.Tensor:
    """An encoded image -> uint8 [3, H, W] RGB. JPEG (every stored frame) through
    libjpeg-turbo via torchvision, straight into a tensor (half the loader's time
    against PIL + numpy copies); other formats, or no torchvision, through PIL."""
    decode = _torchvision_decoder() if data[:2] == b"\xff\xd8" else None
    if decode is not None:
        return decode(data)
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return pil_to_tensor(im)


def resized_size(width: int, height: int, short_edge: int) -> tuple[int, int]:
    """(width, height) after scaling so the smaller edge is `short_edge` (aspect kept)."""
    if width <= height:
        return short_edge, max(short_edge, round(height * short_edge / width))
    return max(short_edge, round(width * short_edge / height)), short_edge


def resize_short_edge(img: torch.Tensor, short_edge: int, interpolation: str = "bicubic") -> torch.Tensor:
    """uint8 [3, H, W] -> the smaller edge at `short_edge` (antialiased, like PIL);
    the input itself when it is already that size."""
    h0, w0 = int(img.shape[-2]), int(img.shape[-1])
    w, h = resized_size(w0, h0, short_edge)
    if (w, h) == (w0, h0):
        return img
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2.functional import resize

    mode = InterpolationMode.BICUBIC if interpolation == "bicubic" else InterpolationMode.BILINEAR
    return resize(img, [h, w], interpolation=mode, antialias=True)


def load_frame(frame: Frame, cfg: PreprocessConfig) -> torch.Tensor:
    """One frame (encoded bytes, uint8 [3, H, W] tensor or PIL image) -> uint8
    [3, h, w] with the smaller edge at `cfg.resize`: steps 1-2 of the module doc."""
    if isinstance(frame, (bytes, bytearray, memoryview)):
        img = decode_frame(bytes(frame))
    elif isinstance(frame, torch.Tensor):
        if frame.dtype != torch.uint8 or frame.dim() != 3 or frame.shape[0] != 3:
            raise ValueError(f"a frame tensor must be uint8 [3, H, W], got {frame.dtype} {tuple(frame.shape)}")
        img = frame
    else:
        img = pil_to_tensor(frame)
    return resize_short_edge(img, cfg.resize, cfg.interpolation)


def crop_origin(width: int, height: int, size: int, train: bool,
                rng: np.random.Generator | None = None) -> tuple[int, int]:
    """(left, top) of a `size` crop: uniform at random in training (left drawn
    first, then top), centred otherwise (torchvision's RandomCrop / CenterCrop)."""
    if width < size or height < size:
        raise ValueError(f"frame {width}x{height} is smaller than the {size} crop")
    if train:
        if rng is None:
            raise ValueError("a random crop needs rng")
        return int(rng.integers(0, width - size + 1)), int(rng.integers(0, height - size + 1))
    return int(round((width - size) / 2.0)), int(round((height - size) / 2.0))


def crop_frames(frames: Sequence[np.ndarray], size: int, train: bool, rng: np.random.Generator | None,
                out: np.ndarray, hwc: bool = False) -> np.ndarray:
    """Crop frame t of `frames` (resized uint8 [3, h, w], or [h, w, 3] when `hwc`;
    one array may stand for several t) into `out[t]` ([T, 3, S, S] / [T, S, S, 3]),
    a crop origin per frame. Returns the crops' geometry: int64 [T, 4] = (width,
    height, left, top) of each frame, what the masks need (`SubjectBoxes`)."""
    geometry = np.empty((len(frames), 4), np.int64)
    for t, arr in enumerate(frames):
        h, w = arr.shape[:2] if hwc else arr.shape[1:]
        left, top = crop_origin(w, h, size, train, rng)
        # numpy slices: single-threaded, no OpenMP hand-off per small copy; an HWC copy moves whole rows
        out[t] = arr[top:top + size, left:left + size] if hwc else arr[:, top:top + size, left:left + size]
        geometry[t] = (w, h, left, top)
    return geometry


def normalize_frames(frames: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [..., 3, H, W] -> (x / 255 - mean) / std as `dtype`, on the frames' device."""
    m = torch.tensor(mean, device=frames.device, dtype=dtype).view(3, 1, 1)
    sd = torch.tensor(std, device=frames.device, dtype=dtype).view(3, 1, 1)
    return (frames.to(dtype) / 255.0 - m) / sd


# -- subject masks ---------------------------------------------------------------------

@functools.lru_cache(maxsize=16)
def _pixel_centres(n: int) -> np.ndarray:
    """float32 centres (k + 0.5) / n of a frame's n pixels along one axis
    (read-only: shared by the cache)."""
    c = (np.arange(n, dtype=np.float32) + np.float32(0.5)) / np.float32(n)
    c.flags.writeable = False
    return c


def box_crop_ranges(boxes: np.ndarray, geometry: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """The rasterisation rule. Box r (normalised float32 x1, y1, x2, y2) on a frame
    of `geometry[r]` = (width, height, left, top of the crop) -> its pixels in the
    crop (`size`, or (height, width)): int32 [R, 4] = (row0, row1, col0, col1),
    half-open, empty ones kept. Row y is in the box when y1 <= (y + 0.5) / height
    < y2 (columns alike). Pixel centres are sorted, so the crop's count of centres
    below a value is the whole frame's count minus the crop origin, clipped to the
    crop: one searchsorted per frame size serves every pair (numpy calls per frame
    cost more than the rest of the loader's Python work)."""
    rows_n, cols_n = (size, size) if isinstance(size, int) else size
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    g = np.asarray(geometry, dtype=np.int64).reshape(-1, 4)
    full = np.empty((len(b), 4), np.int64)  # row0, row1, col0, col1 in whole-frame pixels
    if len(b):
        for out, sizes, cols in ((slice(0, 2), g[:, 1], [1, 3]), (slice(2, 4), g[:, 0], [0, 2])):
            if sizes.min() == sizes.max():  # the usual case: one frame size
                full[:, out] = np.searchsorted(_pixel_centres(int(sizes[0])), b[:, cols], "left")
                continue
            for n in np.unique(sizes):
                sel = sizes == n
                full[sel, out] = np.searchsorted(_pixel_centres(int(n)), b[sel][:, cols], "left")
    full -= g[:, [3, 3, 2, 2]]
    return np.minimum(np.maximum(full, 0), np.asarray([rows_n, rows_n, cols_n, cols_n])).astype(np.int32)


def rasterize_mask_boxes(mask_boxes: torch.Tensor, batch: int, frames: int, size: int | tuple[int, int],
                         device: torch.device | str | None = None) -> torch.Tensor:
    """Rectangles (int [N, 6]: sample, frame, row0, row1, col0, col1, as `mask_boxes`
    makes them) -> uint8 [batch, frames, height, width] masks (`size` square or
    (height, width)), on `device`. A 2-D difference array (+1/-1 at each
    rectangle's corners, two cumulative sums) paints every rectangle at once; > 0
    is their union."""
    rows_n, cols_n = (size, size) if isinstance(size, int) else size
    device = torch.device(device) if device is not None else mask_boxes.device
    mb = mask_boxes.to(device=device, dtype=torch.long)
    diff = torch.zeros(batch, frames, rows_n + 1, cols_n + 1, dtype=torch.int32, device=device)
    if len(mb):
        b, t, r0, r1, c0, c1 = mb.unbind(1)
        one = torch.ones(len(mb), dtype=torch.int32, device=device)
        for rr, cc, sign in ((r0, c0, 1), (r0, c1, -1), (r1, c0, -1), (r1, c1, 1)):
            diff.index_put_((b, t, rr, cc), one * sign, accumulate=True)
    return (diff.cumsum(2).cumsum(3)[:, :, :rows_n, :cols_n] > 0).to(torch.uint8)


class SubjectBoxes(NamedTuple):
    """A clip's subject boxes under its frames' crops: frame t of each (int [R]),
    normalised x1, y1, x2, y2 (float32 [R, 4]) and that frame's crop geometry
    (width, height, left, top; int64 [R, 4]). Boxes at or below the confidence
    threshold are already gone."""

    t_of: np.ndarray
    xyxy: np.ndarray
    geometry: np.ndarray

    @classmethod
    def from_rows(cls, rows: np.ndarray, frame_idx: np.ndarray, geometry: np.ndarray,
                  conf_threshold: float = DEFAULT_BOX_CONF) -> "SubjectBoxes":
        """From a clip's boxes as one array ([K, 6]: frame_idx, x1, y1, x2, y2, conf,
        the manifest's `boxes`) on the frames `frame_idx` [T] cropped as `geometry`
        [T, 4]; a frame taken twice gets its boxes twice."""
        rows = rows[rows[:, 5] > conf_threshold]
        t_of, k_of = np.nonzero(np.asarray(frame_idx)[:, None] == rows[:, 0][None, :])
        return cls(t_of, rows[k_of, 1:5], np.asarray(geometry, np.int64).reshape(-1, 4)[t_of])

    @classmethod
    def from_frames(cls, boxes: Sequence[Any] | None, confs: Sequence[Any] | None, geometry: np.ndarray,
                    conf_threshold: float = DEFAULT_BOX_CONF) -> "SubjectBoxes":
        """From per-frame boxes: boxes[t] [K_t, 4] normalised (or None: nobody),
        confs[t] [K_t] (None keeps every box of frame t)."""
        geometry = np.asarray(geometry, np.int64).reshape(-1, 4)
        n = len(geometry)
        if boxes is not None and len(boxes) != n:
            raise ValueError(f"{n} frames but boxes for {len(boxes)}")
        if confs is not None and len(confs) != n:
            raise ValueError(f"{n} frames but confidences for {len(confs)}")
        t_of, xyxy = [], []
        for t in range(n):
            if boxes is None or boxes[t] is None:
                continue
            b = np.asarray(boxes[t], dtype=np.float32).reshape(-1, 4)
            c = confs[t] if confs is not None else None
            if c is not None:
                c = np.asarray(c, dtype=np.float32).reshape(-1)
                if len(c) != len(b):
                    raise ValueError(f"{len(b)} boxes but {len(c)} confidences")
                b = b[c > conf_threshold]
            t_of.append(np.full(len(b), t, np.int64))
            xyxy.append(b)
        if not t_of:
            return cls(np.zeros(0, np.int64), np.zeros((0, 4), np.float32), np.zeros((0, 4), np.int64))
        t_arr = np.concatenate(t_of)
        return cls(t_arr, np.concatenate(xyxy), geometry[t_arr])


def mask_boxes(clips: Sequence[SubjectBoxes], size: int | tuple[int, int]) -> np.ndarray:
    """The rectangles of a batch of clips for `rasterize_mask_boxes` (int32 [N, 6]:
    sample, frame, row0, row1, col0, col1; empty ones dropped), in one vectorised
    pass over every box of the batch."""
    counts = [len(c.t_of) for c in clips]
    if not sum(counts):
        return np.zeros((0, 6), np.int32)
    ranges = box_crop_ranges(np.concatenate([c.xyxy for c in clips]),
                             np.concatenate([c.geometry for c in clips]), size)
    sample = np.repeat(np.arange(len(clips), dtype=np.int32), counts)
    frame = np.concatenate([c.t_of for c in clips]).astype(np.int32)
    out = np.concatenate([sample[:, None], frame[:, None], ranges], 1)
    return out[(ranges[:, 1] > ranges[:, 0]) & (ranges[:, 3] > ranges[:, 2])]


def subject_masks(boxes: SubjectBoxes, frames: int, size: int) -> torch.Tensor:
    """One clip's masks: uint8 [frames, size, size] (1 = subject)."""
    return rasterize_mask_boxes(torch.from_numpy(mask_boxes([boxes], size)), 1, frames, size)[0]


def boxes_to_mask(
    boxes_normalized: np.ndarray | torch.Tensor | Sequence[Sequence[float]],
    conf: np.ndarray | torch.Tensor | Sequence[float] | None,
    height: int,
    width: int,
    conf_threshold: float = DEFAULT_BOX_CONF,
) -> torch.Tensor:
    """Union of the boxes with conf > conf_threshold as a bool mask over a whole
    [height, width] frame (the same rule as the cropped masks: a pixel belongs to
    a box when its centre lies inside it). `conf=None` keeps every box."""
    b = np.asarray(boxes_normalized, dtype=np.float32).reshape(-1, 4)
    c = None if conf is None else np.asarray(conf, dtype=np.float32).reshape(-1)
    sb = SubjectBoxes.from_frames([b], [c], np.asarray([[width, height, 0, 0]]), conf_threshold)
    return rasterize_mask_boxes(torch.from_numpy(mask_boxes([sb], (height, width))), 1, 1, (height, width))[0, 0].bool()


# -- clips -----------------------------------------------------------------------------

class ClipPreprocessor:
    """Evaluation's entry point (train=True: the training loader's random crops):
    frames + per-frame person boxes -> (video [T, 3, S, S] float32 normalised,
    mask [T, S, S] bool). Frames are encoded bytes (as stored: what the training
    loader reads), uint8 [3, H, W] tensors or PIL images. Made of the same calls
    as `ClipDataset`, so for the same frames and crops both give the same pixels
    and masks."""

    def __init__(self, cfg: PreprocessConfig | None = None, train: bool = False):
        self.cfg = cfg or PreprocessConfig()
        self.train = train

    def crop(
        self,
        frames: Sequence[Frame],
        boxes: Sequence[Any] | None = None,
        confs: Sequence[Any] | None = None,
        rng: np.random.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Before normalisation, as `ClipDataset` gives a clip: (uint8 [T, 3, S, S],
        uint8 [T, S, S]). boxes[t]: [K_t, 4] normalised boxes of frame t (or None);
        confs[t]: [K_t] confidences (None keeps every box). rng: the random crops
        (train=True; a fresh unseeded generator when None). The same object given
        for several frames is decoded once."""
        cfg = self.cfg
        if self.train and rng is None:
            rng = np.random.default_rng()
        loaded: dict[int, np.ndarray] = {}
        arrays = []
        for f in frames:
            if id(f) not in loaded:
                loaded[id(f)] = load_frame(f, cfg).numpy()
            arrays.append(loaded[id(f)])
        out = np.empty((len(arrays), 3, cfg.crop, cfg.crop), dtype=np.uint8)
        geometry = crop_frames(arrays, cfg.crop, self.train, rng, out)
        sb = SubjectBoxes.from_frames(boxes, confs, geometry, cfg.box_conf_threshold)
        return torch.from_numpy(out), subject_masks(sb, len(arrays), cfg.crop)

    def __call__(
        self,
        frames: Sequence[Frame],
        boxes: Sequence[Any] | None = None,
        confs: Sequence[Any] | None = None,
        rng: np.random.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`crop`, then normalised with the model's mean/std: (float32 [T, 3, S, S], bool [T, S, S])."""
        video, masks = self.crop(frames, boxes, confs, rng)
        return normalize_frames(video, self.cfg.mean, self.cfg.std), masks.bool()


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
