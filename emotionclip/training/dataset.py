"""The pre-training loader: manifest rows + frame stores -> clip tensors.

Per clip (issue 6): `num_frames` frame indices from `frame_start..frame_end`
(training: drawn without replacement and sorted; evaluation: uniformly
spaced; fewer frames than needed: every frame plus repeats), each frame resized
so its smaller edge is `resize` and cropped to `image_size` (training: a random
crop per frame, as the authors' loader; evaluation: the centre), the subject
mask (union of the frame's person boxes with conf > `box_conf`) under the same
crop, the tokenized sentence and the 7 raw sentiment logits. Sizes, the box
threshold and the normalisation come from the model's `PreprocessConfig`;
the geometry helpers are `emotionclip.models.transforms`'.

Frames stay uint8 here; the trainer normalises on the device (4x less data
through worker shared memory, no float work in the workers). Every random
choice comes from a generator seeded by (seed, epoch, index), so a sample is
the same whatever worker or rank loads it, and after a resume.
"""

from __future__ import annotations

import functools
import io
import logging
import warnings
from collections import OrderedDict
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from emotionclip.errors import StageError
from emotionclip.models.transforms import PreprocessConfig, resized_size
from emotionclip.schemas import LOGIT_COLUMNS

log = logging.getLogger(__name__)

STAGE = "pretrain"
_OPEN_STORES = 32  # frame stores kept open per worker (LRU)


def sample_frame_indices(start: int, end: int, num: int, train: bool, rng: np.random.Generator) -> np.ndarray:
    """`num` sorted frame indices in [start, end] (inclusive)."""
    n = end - start + 1
    if n <= 0:
        raise ValueError(f"empty frame range {start}..{end}")
    if not train:
        return np.rint(np.linspace(start, end, num)).astype(np.int64)
    if n >= num:
        picked = rng.choice(n, size=num, replace=False)
    else:  # every frame once, the rest repeated at random
        picked = np.concatenate([np.arange(n), rng.choice(n, size=num - n, replace=True)])
    return np.sort(picked).astype(np.int64) + start


def crop_box(width: int, height: int, size: int, train: bool, rng: np.random.Generator) -> tuple[int, int]:
    """(left, top) of a `size` crop: uniform at random in training, centred otherwise
    (torchvision's RandomCrop / CenterCrop conventions)."""
    if width < size or height < size:
        raise ValueError(f"frame {width}x{height} is smaller than the {size} crop")
    if train:
        return int(rng.integers(0, width - size + 1)), int(rng.integers(0, height - size + 1))
    return int(round((width - size) / 2.0)), int(round((height - size) / 2.0))


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


def decode_frame(jpeg: bytes) -> torch.Tensor:
    """A stored JPEG -> uint8 [3, H, W] RGB. libjpeg-turbo via torchvision decodes
    straight into a tensor (half the loader's time against PIL + numpy copies);
    PIL when torchvision's decoder is gone."""
    decode = _torchvision_decoder()
    if decode is not None:
        return decode(jpeg)
    from PIL import Image

    with Image.open(io.BytesIO(jpeg)) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1).contiguous()


def resize_frame(img: torch.Tensor, width: int, height: int, interpolation: str) -> torch.Tensor:
    """uint8 [3, H, W] -> [3, height, width] (antialiased, like PIL)."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2.functional import resize

    mode = InterpolationMode.BICUBIC if interpolation == "bicubic" else InterpolationMode.BILINEAR
    return resize(img, [height, width], interpolation=mode, antialias=True)


def cropped_boxes_mask(boxes: np.ndarray, width: int, height: int, left: int, top: int, size: int) -> np.ndarray:
    """`boxes_to_mask(boxes, None, height, width)[top:top+size, left:left+size]`,
    computed for the crop window only (the full-frame mask costs more than the
    JPEG decode). Same rule and float32 arithmetic: a pixel belongs to a box when
    its centre lies inside it."""
    ys = (np.arange(top, top + size, dtype=np.float32) + np.float32(0.5)) / np.float32(height)
    xs = (np.arange(left, left + size, dtype=np.float32) + np.float32(0.5)) / np.float32(width)
    mask = np.zeros((size, size), dtype=bool)
    for x1, y1, x2, y2 in boxes.astype(np.float32):
        rows = (ys >= y1) & (ys < y2)
        cols = (xs >= x1) & (xs < x2)
        if rows.any() and cols.any():
            mask |= rows[:, None] & cols[None, :]
    return mask.view(np.uint8)


class _Boxes:
    """All clips' boxes in one flat array (cheap to share with forked workers)."""

    def __init__(self, boxes_column: Sequence[Any]) -> None:
        offsets = [0]
        rows: list[np.ndarray] = []
        for boxes in boxes_column:
            arr = _boxes_array(boxes)
            rows.append(arr)
            offsets.append(offsets[-1] + len(arr))
        self.data = np.concatenate(rows) if rows else np.zeros((0, 6), np.float32)
        self.offsets = np.asarray(offsets, dtype=np.int64)

    def clip(self, i: int) -> np.ndarray:
        return self.data[self.offsets[i]:self.offsets[i + 1]]


def _boxes_array(boxes: Any) -> np.ndarray:
    """Manifest `boxes` cell (list of dicts, or None) -> [K, 6] (frame_idx, x1, y1, x2, y2, conf)."""
    if boxes is None or len(boxes) == 0:
        return np.zeros((0, 6), np.float32)
    return np.asarray([[b["frame_idx"], b["x1"], b["y1"], b["x2"], b["y2"], b["conf"]] for b in boxes],
                      dtype=np.float32)


class ClipDataset(Dataset):
    """Manifest clips as dicts of tensors:

    - `frames`: uint8 [T, 3, S, S] (RGB; normalised on the device), `masks`: uint8
      [T, S, S] (1 = subject),
    - `tokens`: long [context], `sentiment`: float [7] (raw logits, schemas order),
    - `frame_idx`: long [T], `index`: the dataset row actually loaded.
    """

    def __init__(
        self,
        manifest: pd.DataFrame,
        frames_location: Callable[[str], str],
        tokenizer: Callable[[list[str]], torch.Tensor],
        *,
        preprocess: PreprocessConfig | None = None,
        train: bool = True,
        num_frames: int = 8,
        seed: int = 0,
        max_replacements: int = 16,
    ) -> None:
        missing = [c for c in ["clip_id", "video_id", "text", "frame_start", "frame_end", "boxes", *LOGIT_COLUMNS]
                   if c not in manifest.columns]
        if missing:
            raise ValueError(f"manifest lacks columns {missing}")
        if len(manifest) == 0:
            raise ValueError("manifest has no clips")
        # Plain arrays, not a DataFrame: workers index them without pandas overhead.
        self.clip_ids = [str(x) for x in manifest["clip_id"]]
        self.video_ids = [str(x) for x in manifest["video_id"]]
        self.texts = [str(x) for x in manifest["text"]]
        self.frame_start = manifest["frame_start"].to_numpy(dtype=np.int64)
        self.frame_end = manifest["frame_end"].to_numpy(dtype=np.int64)
        self.logits = manifest[LOGIT_COLUMNS].to_numpy(dtype=np.float32)
        self.boxes = _Boxes(manifest["boxes"])
        self.frames_location = frames_location
        self.tokenizer = tokenizer
        # the model's preprocessing: resize/crop sizes, interpolation, box threshold, mean/std
        self.preprocess = preprocess or PreprocessConfig()
        self.train = train
        self.num_frames = num_frames
        self.seed = seed
        self.epoch = 0
        self.max_replacements = max_replacements
        self._stores: OrderedDict[str, Any] = OrderedDict()

    def __len__(self) -> int:
        return len(self.clip_ids)

    def set_epoch(self, epoch: int) -> None:
        """Call before creating the epoch's DataLoader iterator (workers copy it)."""
        self.epoch = epoch

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_stores"] = OrderedDict()  # open lazily in each worker, never shared
        return state

    # -- frame stores -------------------------------------------------------
    def _store(self, video_id: str) -> Any:
        store = self._stores.get(video_id)
        if store is None:
            from emotionclip.frames import FrameStore

            store = FrameStore(self.frames_location(video_id))
            self._stores[video_id] = store
            while len(self._stores) > _OPEN_STORES:
                _, old = self._stores.popitem(last=False)
                close = getattr(old, "close", None)
                if close:
                    close()
        else:
            self._stores.move_to_end(video_id)
        return store

    # -- samples ------------------------------------------------------------
    def _rng(self, index: int, attempt: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index, attempt])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        tried = index
        errors = []
        for attempt in range(self.max_replacements + 1):
            try:
                return self.load(tried, self._rng(tried, attempt))
            except Exception as err:  # noqa: BLE001 - any unreadable clip is replaced, and logged
                errors.append(f"{self.clip_ids[tried]}: {err}")
                log.warning("[%s] video %s: clip %s unreadable (%s); replaced by another clip",
                            STAGE, self.video_ids[tried], self.clip_ids[tried], err)
                # deterministic replacement: depends only on (seed, epoch, index, attempt)
                tried = int(self._rng(index, attempt + 1).integers(0, len(self)))
        raise StageError(STAGE, self.video_ids[index],
                         f"clip {self.clip_ids[index]} and {self.max_replacements} replacements unreadable: "
                         + "; ".join(errors[-3:]))

    def load(self, i: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """Clip `i` with the random choices drawn from `rng`."""
        idx = sample_frame_indices(int(self.frame_start[i]), int(self.frame_end[i]), self.num_frames, self.train, rng)
        store = self._store(self.video_ids[i])
        unique, inverse = np.unique(idx, return_inverse=True)
        decoded = [decode_frame(store.read_bytes(int(k))) for k in unique]  # each frame once
        boxes = self.boxes.clip(i)
        cfg = self.preprocess
        s = cfg.crop
        # numpy for the per-frame copies: single-threaded, no OpenMP hand-off per small copy
        frames = np.empty((self.num_frames, 3, s, s), dtype=np.uint8)
        masks = np.zeros((self.num_frames, s, s), dtype=np.uint8)
        for t, u in enumerate(inverse):
            img = decoded[u]
            h0, w0 = img.shape[-2:]
            w, h = resized_size(w0, h0, cfg.resize)
            if (w, h) != (w0, h0):  # stored frames are already at 256: usually a no-op
                img = resize_frame(img, w, h, cfg.interpolation)
            left, top = crop_box(w, h, s, self.train, rng)
            frames[t] = img.numpy()[:, top:top + s, left:left + s]
            fb = boxes[boxes[:, 0] == idx[t]]
            fb = fb[fb[:, 5] > cfg.box_conf_threshold]
            if len(fb):
                masks[t] = cropped_boxes_mask(fb[:, 1:5], w, h, left, top, s)
        tokens = self.tokenizer([self.texts[i]])[0]
        return {
            "frames": torch.from_numpy(frames),
            "masks": torch.from_numpy(masks),
            "tokens": tokens.long(),
            "sentiment": torch.from_numpy(self.logits[i].copy()),
            "frame_idx": torch.from_numpy(idx),
            "index": torch.tensor(i, dtype=torch.long),
        }


def normalize_frames(frames: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [..., 3, H, W] -> normalised float (done on the training device)."""
    m = torch.tensor(mean, device=frames.device, dtype=dtype).view(3, 1, 1)
    sd = torch.tensor(std, device=frames.device, dtype=dtype).view(3, 1, 1)
    return (frames.to(dtype) / 255.0 - m) / sd
