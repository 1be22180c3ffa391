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
from collections.abc import Sequence as SequenceABC
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


def crop_box_ranges(boxes: np.ndarray, width: int, height: int, left: int, top: int, size: int) -> np.ndarray:
    """Each box's pixel rectangle inside a `size` crop at (left, top) of a `width` x
    `height` frame: int32 [K, 4] = (row0, row1, col0, col1), half-open, empty boxes
    dropped. A pixel belongs to a box when its centre lies inside it, in float32 as
    `boxes_to_mask`; pixel centres increase along a row, so each test is a range."""
    ys = (np.arange(top, top + size, dtype=np.float32) + np.float32(0.5)) / np.float32(height)
    xs = (np.arange(left, left + size, dtype=np.float32) + np.float32(0.5)) / np.float32(width)
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    # first centre >= x1 .. first centre >= x2: exactly the centres with x1 <= c < x2
    r = np.stack([np.searchsorted(ys, b[:, 1], "left"), np.searchsorted(ys, b[:, 3], "left"),
                  np.searchsorted(xs, b[:, 0], "left"), np.searchsorted(xs, b[:, 2], "left")], 1).astype(np.int32)
    return r[(r[:, 1] > r[:, 0]) & (r[:, 3] > r[:, 2])]


def fill_ranges(mask: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    """Set the (row0, row1, col0, col1) rectangles of `ranges` to 1 in `mask` [S, S]."""
    for r0, r1, c0, c1 in ranges:
        mask[r0:r1, c0:c1] = 1
    return mask


def cropped_boxes_mask(boxes: np.ndarray, width: int, height: int, left: int, top: int, size: int) -> np.ndarray:
    """`boxes_to_mask(boxes, None, height, width)[top:top+size, left:left+size]`,
    computed for the crop window only (the full-frame mask costs more than the
    JPEG decode). Same rule and float32 arithmetic: a pixel belongs to a box when
    its centre lies inside it."""
    return fill_ranges(np.zeros((size, size), dtype=np.uint8), crop_box_ranges(boxes, width, height, left, top, size))


def rasterize_mask_boxes(mask_boxes: torch.Tensor, batch: int, frames: int, size: int,
                         device: torch.device | str | None = None) -> torch.Tensor:
    """The subject masks of a batch from `collate_clips`' "mask_boxes" (int32 [N, 6]:
    sample, frame, row0, row1, col0, col1) -> uint8 [batch, frames, size, size], on
    `device`. A 2-D difference array (+1/-1 at each rectangle's corners, two
    cumulative sums) paints every rectangle at once; > 0 is their union."""
    device = torch.device(device) if device is not None else mask_boxes.device
    mb = mask_boxes.to(device=device, dtype=torch.long)
    diff = torch.zeros(batch, frames, size + 1, size + 1, dtype=torch.int32, device=device)
    if len(mb):
        b, t, r0, r1, c0, c1 = mb.unbind(1)
        one = torch.ones(len(mb), dtype=torch.int32, device=device)
        for rr, cc, sign in ((r0, c0, 1), (r0, c1, -1), (r1, c0, -1), (r1, c1, 1)):
            diff.index_put_((b, t, rr, cc), one * sign, accumulate=True)
    return (diff.cumsum(2).cumsum(3)[:, :, :size, :size] > 0).to(torch.uint8)


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

    def _fetch(self, index: int, frames_out: np.ndarray, hwc: bool) -> tuple[int, np.ndarray, list[np.ndarray]]:
        """Clip `index` (or its replacement) into `frames_out`; returns (row loaded,
        frame indices, per-frame mask rectangles)."""
        tried = index
        errors = []
        for attempt in range(self.max_replacements + 1):
            try:
                # a failed attempt may leave frames written: the next one overwrites all of them
                idx, ranges = self._load_into(tried, self._rng(tried, attempt), frames_out, hwc)
                return tried, idx, ranges
            except Exception as err:  # noqa: BLE001 - any unreadable clip is replaced, and logged
                errors.append(f"{self.clip_ids[tried]}: {err}")
                log.warning("[%s] video %s: clip %s unreadable (%s); replaced by another clip",
                            STAGE, self.video_ids[tried], self.clip_ids[tried], err)
                # deterministic replacement: depends only on (seed, epoch, index, attempt)
                tried = int(self._rng(index, attempt + 1).integers(0, len(self)))
        raise StageError(STAGE, self.video_ids[index],
                         f"clip {self.clip_ids[index]} and {self.max_replacements} replacements unreadable: "
                         + "; ".join(errors[-3:]))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        s = self.preprocess.crop
        frames = np.empty((self.num_frames, 3, s, s), dtype=np.uint8)
        i, idx, ranges = self._fetch(index, frames, hwc=False)
        masks = np.zeros((self.num_frames, s, s), dtype=np.uint8)
        for t, r in enumerate(ranges):
            fill_ranges(masks[t], r)
        return {
            "frames": torch.from_numpy(frames),
            "masks": torch.from_numpy(masks),
            "tokens": self.tokenizer([self.texts[i]])[0].long(),
            "sentiment": torch.from_numpy(self.logits[i].copy()),
            "frame_idx": torch.from_numpy(idx),
            "index": torch.tensor(i, dtype=torch.long),
        }

    def __getitems__(self, indices: Sequence[int]) -> "ClipBatch":
        """A DataLoader batch in one go (torch calls this instead of `__getitem__`
        per index): the same samples, decoded straight into one batch buffer that
        lives in shared memory inside a worker (no per-sample arrays, no collate
        copy, frames copied in the decoder's HWC order). `collate_clips` returns
        that batch as is; the default collate still gets a list of samples."""
        n, t, s = len(indices), self.num_frames, self.preprocess.crop
        hwc = _batch_tensor((n, t, s, s, 3), torch.uint8)
        buf = hwc.numpy()
        rows, mask_boxes, fidx = [], [], []
        for b, index in enumerate(indices):
            i, idx, ranges = self._fetch(int(index), buf[b], hwc=True)
            rows.append(i)
            fidx.append(idx)
            for k, r in enumerate(ranges):
                if len(r):
                    mask_boxes.append(np.concatenate([np.full((len(r), 2), (b, k), np.int32), r], 1))
        rows_np = np.asarray(rows, dtype=np.int64)
        batch = {
            "frames": hwc.permute(0, 1, 4, 2, 3),  # [B, T, 3, S, S] view of the HWC buffer
            "mask_boxes": torch.from_numpy(np.concatenate(mask_boxes) if mask_boxes
                                           else np.zeros((0, 6), np.int32)),
            "tokens": self.tokenizer([self.texts[i] for i in rows]).long(),
            "sentiment": torch.from_numpy(self.logits[rows_np]),
            "frame_idx": torch.from_numpy(np.stack(fidx)),
            "index": torch.from_numpy(rows_np),
        }
        return ClipBatch(batch, s)

    def load(self, i: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """Clip `i` with the random choices drawn from `rng` (no replacement)."""
        s = self.preprocess.crop
        frames = np.empty((self.num_frames, 3, s, s), dtype=np.uint8)
        idx, ranges = self._load_into(i, rng, frames, hwc=False)
        masks = np.zeros((self.num_frames, s, s), dtype=np.uint8)
        for t, r in enumerate(ranges):
            fill_ranges(masks[t], r)
        return {"frames": torch.from_numpy(frames), "masks": torch.from_numpy(masks),
                "tokens": self.tokenizer([self.texts[i]])[0].long(),
                "sentiment": torch.from_numpy(self.logits[i].copy()), "frame_idx": torch.from_numpy(idx),
                "index": torch.tensor(i, dtype=torch.long)}

    def _load_into(self, i: int, rng: np.random.Generator, out: np.ndarray,
                   hwc: bool) -> tuple[np.ndarray, list[np.ndarray]]:
        """Frames of clip `i` into `out` ([T, 3, S, S], or [T, S, S, 3] when `hwc`);
        returns the frame indices and each frame's mask rectangles in crop pixels."""
        idx = sample_frame_indices(int(self.frame_start[i]), int(self.frame_end[i]), self.num_frames, self.train, rng)
        store = self._store(self.video_ids[i])
        unique, inverse = np.unique(idx, return_inverse=True)
        decoded = [decode_frame(store.read_bytes(int(k))) for k in unique]  # each frame once
        boxes = self.boxes.clip(i)
        boxes = boxes[boxes[:, 5] > self.preprocess.box_conf_threshold]
        cfg = self.preprocess
        s = cfg.crop
        ranges = []
        for t, u in enumerate(inverse):
            img = decoded[u]
            h0, w0 = img.shape[-2:]
            w, h = resized_size(w0, h0, cfg.resize)
            if (w, h) != (w0, h0):  # stored frames are already at 256: usually a no-op
                img = resize_frame(img, w, h, cfg.interpolation)
            left, top = crop_box(w, h, s, self.train, rng)
            # numpy for the per-frame copies: single-threaded, no OpenMP hand-off per small copy;
            # the decoder's tensor is an HWC buffer seen as CHW, so the HWC copy moves whole rows
            if hwc:
                out[t] = img.permute(1, 2, 0).numpy()[top:top + s, left:left + s]
            else:
                out[t] = img.numpy()[:, top:top + s, left:left + s]
            fb = boxes[boxes[:, 0] == idx[t]]
            ranges.append(crop_box_ranges(fb[:, 1:5], w, h, left, top, s) if len(fb)
                          else np.zeros((0, 4), np.int32))
        return idx, ranges


class ClipBatch(SequenceABC):
    """`ClipDataset.__getitems__`' result: the batch (`.batch`, which `collate_clips`
    returns as is) that also reads as the list of per-sample dicts the default
    collate expects (views into the batch, dense masks; built on first access)."""

    def __init__(self, batch: dict[str, torch.Tensor], size: int) -> None:
        self.batch = batch
        self.size = size
        self._samples: list[dict[str, torch.Tensor]] | None = None

    def _items(self) -> list[dict[str, torch.Tensor]]:
        if self._samples is None:
            bt = self.batch
            n, t = bt["frames"].shape[:2]
            masks = rasterize_mask_boxes(bt["mask_boxes"], n, t, self.size)
            self._samples = [{"frames": bt["frames"][b], "masks": masks[b], "tokens": bt["tokens"][b],
                              "sentiment": bt["sentiment"][b], "frame_idx": bt["frame_idx"][b],
                              "index": bt["index"][b]} for b in range(n)]
        return self._samples

    def __len__(self) -> int:
        return len(self.batch["index"])

    def __getitem__(self, k):  # type: ignore[override]
        return self._items()[k]


def collate_clips(samples: list[dict[str, torch.Tensor]] | ClipBatch) -> dict[str, torch.Tensor]:
    """The training loader's collate: a `ClipBatch` passes through untouched
    (frames [B, T, 3, S, S] uint8, "mask_boxes" instead of dense "masks"; see
    `batch_masks`); a plain list of samples goes through the default collate."""
    if isinstance(samples, ClipBatch):
        return samples.batch
    from torch.utils.data import default_collate

    return default_collate(samples)


def batch_masks(batch: dict[str, torch.Tensor], device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 [B, T, S, S] subject masks of a collated batch on `device`: dense
    "masks" moved, or "mask_boxes" rasterised there (the one place the training
    loop makes masks)."""
    if "masks" in batch:
        return batch["masks"].to(device) if device is not None else batch["masks"]
    b, t, _, s, _ = batch["frames"].shape
    return rasterize_mask_boxes(batch["mask_boxes"], b, t, s, device)


def _batch_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor, in shared memory inside a DataLoader worker (as the
    default collate allocates its output), so it reaches the main process uncopied."""
    from torch.utils.data import get_worker_info

    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    numel = int(np.prod(shape))
    storage = torch.UntypedStorage._new_shared(numel * torch.empty((), dtype=dtype).element_size())
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)


def normalize_frames(frames: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [..., 3, H, W] -> normalised float (done on the training device)."""
    m = torch.tensor(mean, device=frames.device, dtype=dtype).view(3, 1, 1)
    sd = torch.tensor(std, device=frames.device, dtype=dtype).view(3, 1, 1)
    return (frames.to(dtype) / 255.0 - m) / sd
