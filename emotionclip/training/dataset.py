"""The pre-training loader: manifest rows + frame stores -> clip tensors.

Per clip (appendix B.2): `num_frames` frame indices from `frame_start..frame_end`
(training: drawn without replacement and sorted; evaluation: uniformly
spaced; fewer frames than needed: every frame plus repeats), then the frames
and subject masks exactly as `emotionclip.models.transforms` makes them (the
one preprocessing implementation, shared with evaluation): each frame resized
so its smaller edge is `resize` and cropped to `crop` (training: a random crop
per frame, as the authors' loader; evaluation: the centre), the subject mask
(union of the frame's person boxes with conf > `box_conf_threshold`) under the
same crop; plus the tokenized sentence and the 7 raw sentiment logits. Sizes,
the box threshold and the normalisation come from the model's `PreprocessConfig`.

Frames stay uint8 here; the trainer normalises on the device (4x less data
through worker shared memory, no float work in the workers). Every random
choice comes from a generator seeded by (seed, epoch, index), so a sample is
the same whatever worker or rank loads it, and after a resume.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence as SequenceABC
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from emotionclip.core.errors import StageError
from emotionclip.core.schemas import LOGIT_COLUMNS
from emotionclip.models.transforms import (
    PreprocessConfig,
    SubjectBoxes,
    crop_frames,
    load_frame,
    mask_boxes,
    rasterize_mask_boxes,
    subject_masks,
)

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
            from emotionclip.core.frame_store import FrameStore

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

    def _fetch(self, index: int, frames_out: np.ndarray, hwc: bool) -> tuple[int, np.ndarray, SubjectBoxes]:
        """Clip `index` (or its replacement) into `frames_out`; returns (row loaded,
        frame indices, its subject boxes per frame)."""
        tried = index
        errors = []
        for attempt in range(self.max_replacements + 1):
            try:
                # a failed attempt may leave frames written: the next one overwrites all of them
                idx, boxes = self._load_into(tried, self._rng(tried, attempt), frames_out, hwc)
                return tried, idx, boxes
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
        i, idx, boxes = self._fetch(index, frames, hwc=False)
        return self._sample(i, idx, frames, boxes)

    def load(self, i: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """Clip `i` with the random choices drawn from `rng` (no replacement)."""
        s = self.preprocess.crop
        frames = np.empty((self.num_frames, 3, s, s), dtype=np.uint8)
        idx, boxes = self._load_into(i, rng, frames, hwc=False)
        return self._sample(i, idx, frames, boxes)

    def _sample(self, i: int, idx: np.ndarray, frames: np.ndarray, boxes: SubjectBoxes) -> dict[str, torch.Tensor]:
        return {
            "frames": torch.from_numpy(frames),
            "masks": subject_masks(boxes, self.num_frames, self.preprocess.crop),
            "tokens": self.tokenizer([self.texts[i]])[0].long(),
            "sentiment": torch.from_numpy(self.logits[i].copy()),
            "frame_idx": torch.from_numpy(idx),
            "index": torch.tensor(i, dtype=torch.long),
        }

    def __getitems__(self, indices: Sequence[int]) -> "ClipBatch":
        """A DataLoader batch in one go (torch calls this instead of `__getitem__`
        per index): the same samples, decoded straight into one batch buffer (no
        per-sample arrays, no collate copy, frames copied in the decoder's HWC
        order), the mask rectangles of the whole batch in one vectorised pass.
        Inside a worker the buffer is shared memory from the worker's
        `_BufferPool`, reused once the main process has dropped the batch it
        carried. `collate_clips` returns the batch as is; the default collate
        still gets a list of samples."""
        n, t, s = len(indices), self.num_frames, self.preprocess.crop
        hwc, lease = _batch_frames((n, t, s, s, 3))
        try:
            buf = hwc.numpy()
            rows, fidx, clips = [], [], []
            for b, index in enumerate(indices):
                i, idx, boxes = self._fetch(int(index), buf[b], hwc=True)
                rows.append(i)
                fidx.append(idx)
                clips.append(boxes)
            rows_np = np.asarray(rows, dtype=np.int64)
            batch = {
                "frames": hwc.permute(0, 1, 4, 2, 3),  # [B, T, 3, S, S] view of the HWC buffer
                "mask_boxes": torch.from_numpy(mask_boxes(clips, s)),
                "tokens": self.tokenizer([self.texts[i] for i in rows]).long(),
                "sentiment": torch.from_numpy(self.logits[rows_np]),
                "frame_idx": torch.from_numpy(np.stack(fidx)),
                "index": torch.from_numpy(rows_np),
            }
        except BaseException:
            if lease is not None:
                lease.release()  # nothing left this process: the buffer is free again
            raise
        return ClipBatch(batch, s, lease)

    def _load_into(self, i: int, rng: np.random.Generator, out: np.ndarray,
                   hwc: bool) -> tuple[np.ndarray, SubjectBoxes]:
        """Frames of clip `i` into `out` ([T, 3, S, S], or [T, S, S, 3] when `hwc`);
        returns the frame indices and the clip's subject boxes on them."""
        idx = sample_frame_indices(int(self.frame_start[i]), int(self.frame_end[i]), self.num_frames, self.train, rng)
        store = self._store(self.video_ids[i])
        cfg = self.preprocess
        ids = idx.tolist()
        views: dict[int, np.ndarray] = {}  # each distinct frame decoded once
        for k in ids:
            if k not in views:
                arr = load_frame(store.read_bytes(k), cfg).numpy()
                # the decoder's tensor is an HWC buffer seen as CHW: the HWC copy moves whole rows
                views[k] = arr.transpose(1, 2, 0) if hwc else arr
        geometry = crop_frames([views[k] for k in ids], cfg.crop, self.train, rng, out, hwc)
        # the rectangles come later, for a whole batch at once (`mask_boxes`)
        return idx, SubjectBoxes.from_rows(self.boxes.clip(i), idx, geometry, cfg.box_conf_threshold)


class _Lease:
    """One batch's hold on a `_BufferPool` slot, in the worker that filled it.
    States: "held" (being filled), "taken" (handed to the DataLoader by
    `collate_clips`), "sent" (pickled for the main process, which frees the slot
    when its last view of the batch dies), "retired" (views escaped some other
    way: the slot is never reused) and "released". A lease dropped before it was
    sent frees its slot: nothing outside this process saw the buffer."""

    def __init__(self, pool: "_BufferPool", slot: int) -> None:
        self.pool, self.slot = pool, slot
        # the state lives in a cell the finalizer shares: it must not hold the lease itself
        self._cell = ["held"]
        weakref.finalize(self, _BufferPool.drop_lease, pool, slot, self._cell)

    @property
    def state(self) -> str:
        return self._cell[0]

    def set(self, state: str) -> None:
        self._cell[0] = state

    def release(self) -> None:
        if self.state == "held":
            self.set("released")
            self.pool.free(self.slot)

    def retire(self) -> None:
        self.pool.retire(self.slot)
        if self.state in ("held", "taken"):
            self.set("retired")


class _BufferPool:
    """A DataLoader worker's frame buffers, reused across batches.

    A fresh shared-memory tensor per batch cost ~1.4 ms per clip (a new /dev/shm
    segment whose every page the kernel faults in and zeroes, then unmaps in
    both processes). The pool is one shared-memory segment: `capacity` slots of
    `slot_bytes` (pages are only allocated when a slot is first used) followed
    by one flag byte per slot, 1 while the slot's batch may be read anywhere.
    The worker sets it when it hands the slot out; the main process clears it
    when its last view of the batch dies (`_rebuild_pooled` wraps the slot in a
    storage of its own and finalizes that), or the worker does when the batch
    never left. Each batch sends the segment once (one descriptor, as a fresh
    buffer would). With every slot busy, or a larger batch, a batch gets a fresh
    unpooled buffer: a consumer that keeps batches costs memory, never data."""

    def __init__(self, slot_bytes: int, capacity: int) -> None:
        self.stride = -(-slot_bytes // _PAGE) * _PAGE  # slots page-aligned
        self.capacity = capacity
        self.flags_at = capacity * self.stride
        total = self.flags_at + capacity
        self.tensor = torch.empty(0, dtype=torch.uint8).set_(_new_shared(total), 0, (total,))
        self._np = self.tensor.numpy()
        self._flags = self._np[self.flags_at:]  # a new segment reads as zeros: all free
        self._retired: set[int] = set()
        self._lock = threading.Lock()  # the queue's feeder thread may drop leases concurrently

    def acquire(self, nbytes: int) -> tuple[np.ndarray, _Lease] | None:
        """A free slot's first `nbytes` (lowest slot first: the same few pages stay in use)."""
        if nbytes > self.stride:
            return None
        with self._lock:
            for k in range(self.capacity):
                if self._flags[k] == 0 and k not in self._retired:
                    self._flags[k] = 1
                    break
            else:
                return None
        return self._np[k * self.stride:k * self.stride + nbytes], _Lease(self, k)

    def free(self, slot: int) -> None:
        self._flags[slot] = 0

    def retire(self, slot: int) -> None:
        with self._lock:
            self._retired.add(slot)  # views of it may live on anywhere: never written again

    @staticmethod
    def drop_lease(pool: "_BufferPool", slot: int, cell: list[str]) -> None:
        if cell[0] in ("held", "taken"):
            pool.free(slot)


_PAGE = 4096
POOL_SLOTS = 8  # batches per worker: prefetch_factor (4 in the loop) + those the main process still holds
_POOL: tuple[int, _BufferPool] | None = None  # (pid, pool): each worker process makes its own


def _new_shared(nbytes: int) -> torch.UntypedStorage:
    return torch.UntypedStorage._new_shared(nbytes)


def _batch_frames(shape: tuple[int, ...]) -> tuple[torch.Tensor, _Lease | None]:
    """An uninitialised uint8 tensor for a batch's frames: in a DataLoader worker
    shared memory, so it reaches the main process uncopied, from the worker's
    `_BufferPool` when a slot is free."""
    global _POOL
    from torch.utils.data import get_worker_info

    if get_worker_info() is None:
        return torch.empty(shape, dtype=torch.uint8), None
    nbytes = int(np.prod(shape))
    if _POOL is None or _POOL[0] != os.getpid():
        _POOL = (os.getpid(), _BufferPool(nbytes, POOL_SLOTS))
    got = _POOL[1].acquire(nbytes)
    if got is not None:
        buf, lease = got
        return torch.from_numpy(buf).view(shape), lease
    storage = _new_shared(nbytes)
    return torch.empty(0, dtype=torch.uint8).set_(storage, 0, shape), None


class _PooledBatch(dict):
    """`collate_clips`' result inside a worker when its frames are in a pool slot:
    pickles (as the DataLoader sends it to the main process) the pool segment,
    the slot's place in it, and everything else by value (a few KB: cheaper than
    a shared-memory segment and a descriptor per tensor)."""

    def __init__(self, batch: dict[str, torch.Tensor], lease: _Lease) -> None:
        super().__init__(batch)
        self.lease = lease

    def __reduce__(self):  # type: ignore[override]
        pool, slot = self.lease.pool, self.lease.slot
        self.lease.set("sent")
        frames = self["frames"]
        small = {k: v.numpy() for k, v in self.items() if k != "frames"}
        hwc_shape = tuple(frames.permute(0, 1, 3, 4, 2).shape)
        return _rebuild_pooled, (pool.tensor, slot * pool.stride, hwc_shape, pool.flags_at + slot, small, list(self))


def _release_slot(flags: np.ndarray, at: int) -> None:
    flags[at] = 0


def _rebuild_pooled(pool: torch.Tensor, offset: int, hwc_shape: tuple[int, ...], flag_at: int,
                    small: dict[str, np.ndarray], keys: list[str]) -> dict[str, torch.Tensor]:
    """Main-process side of `_PooledBatch`: a plain dict of tensors, the frames a
    view of the pool slot through a storage of their own (numpy's), so that the
    slot is released exactly when the last view of this batch dies here."""
    flat = pool.numpy()
    hwc = torch.from_numpy(flat[offset:offset + int(np.prod(hwc_shape))].reshape(hwc_shape))
    weakref.finalize(hwc.untyped_storage(), _release_slot, flat, flag_at)
    tensors = {k: torch.from_numpy(v) for k, v in small.items()}
    tensors["frames"] = hwc.permute(0, 1, 4, 2, 3)  # [B, T, 3, S, S] view of the HWC buffer
    return {k: tensors[k] for k in keys}


class ClipBatch(SequenceABC):
    """`ClipDataset.__getitems__`' result: the batch (which `collate_clips`
    returns as is) that also reads as the list of per-sample dicts the default
    collate expects (views into the batch, dense masks; built on first access)."""

    def __init__(self, batch: dict[str, torch.Tensor], size: int, lease: _Lease | None = None) -> None:
        self._batch = batch
        self.size = size
        self._lease = lease
        self._samples: list[dict[str, torch.Tensor]] | None = None

    @property
    def batch(self) -> dict[str, torch.Tensor]:
        """The batch dict; its buffer is then never reused (the caller may keep views)."""
        if self._lease is not None:
            self._lease.retire()
        return self._batch

    def take(self) -> dict[str, torch.Tensor]:
        """The batch for the DataLoader to send (a `_PooledBatch` when pooled)."""
        if self._lease is None:
            return self._batch
        if self._lease.state != "held":  # views escaped, or taken before: sent as a plain batch
            return self._batch
        self._lease.set("taken")
        return _PooledBatch(self._batch, self._lease)

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
        return len(self._batch["index"])

    def __getitem__(self, k):  # type: ignore[override]
        return self._items()[k]


def collate_clips(samples: list[dict[str, torch.Tensor]] | ClipBatch) -> dict[str, torch.Tensor]:
    """The training loader's collate: a `ClipBatch` passes through untouched
    (frames [B, T, 3, S, S] uint8, "mask_boxes" instead of dense "masks"; see
    `batch_masks`); a plain list of samples goes through the default collate."""
    if isinstance(samples, ClipBatch):
        return samples.take()
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
