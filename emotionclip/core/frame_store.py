"""The frame store format (docs/design.md section 3): every frame of a video at the
stage's fps as JPEG bytes in one uncompressed zip, member `k` = the frame at k/fps s,
the metadata as JSON in the zip comment. Random access to any frame reads only the
zip directory and that member (the training loader relies on it). Written by the
frames stage, read by clips, training, evaluation and the dataset card.
"""

from __future__ import annotations

import io
import json
import os
import threading
import zipfile
from typing import Any, Iterable

import numpy as np
from PIL import Image

FORMAT = "emotionclip-frames/1"
DEFAULT_FPS = 8  # paper appendix A.1: videos stored at 8 FPS
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed member dates: identical input -> identical file


class FrameStoreWriter:
    """Appends JPEG frames 0, 1, 2, ... to a new frame store at a local `path` (write it
    under a temporary name and rename, as `emotionclip.core.io.atomic_path` does); set
    `.metadata` before the end of the `with` block."""

    def __init__(self, path: str | os.PathLike):
        self._zf = zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True)
        self.n = 0
        self.metadata: dict[str, Any] = {}

    def add(self, jpeg: bytes) -> None:
        self._zf.writestr(zipfile.ZipInfo(f"{self.n:06d}.jpg", date_time=_ZIP_DATE), jpeg)
        self.n += 1

    def __enter__(self) -> "FrameStoreWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self._zf.comment = json.dumps({"format": FORMAT, **self.metadata}, sort_keys=True).encode()
        self._zf.close()


class FrameStore:
    """Random access to a frames file: `len(store)`, `store[k]` -> PIL RGB image of
    the frame at k/fps s, `store.get_many(indices)`, `store.size` -> (width, height).

    Works on local paths and fsspec URLs: only the zip directory and the asked
    members are read. Picklable (for DataLoader workers): each process opens its
    own handle lazily."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path) if not isinstance(path, str) else path
        self._zf: zipfile.ZipFile | None = None
        self._fh = None
        self._pid: int | None = None
        self._lock = threading.Lock()
        zf = self._zip()
        infos = {}
        for zi in zf.infolist():
            stem, _, ext = zi.filename.partition(".")
            if ext != "jpg" or not stem.isdigit():
                raise ValueError(f"{self.path}: not a frame store (member {zi.filename!r})")
            infos[int(stem)] = zi
        if sorted(infos) != list(range(len(infos))):
            raise ValueError(f"{self.path}: frame indices are not 0..{len(infos) - 1}")
        self._infos = [infos[k] for k in range(len(infos))]
        try:
            self.metadata: dict[str, Any] = json.loads(zf.comment.decode() or "{}")
        except ValueError:
            self.metadata = {}
        self._size: tuple[int, int] | None = None
        if "width" in self.metadata and "height" in self.metadata:
            self._size = (int(self.metadata["width"]), int(self.metadata["height"]))

    def _zip(self) -> zipfile.ZipFile:
        if self._zf is None or self._pid != os.getpid():
            from emotionclip.core.io import open_file

            self._fh = open_file(self.path, "rb")
            self._zf = zipfile.ZipFile(self._fh, "r")
            self._pid = os.getpid()
        return self._zf

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_zf=None, _fh=None, _pid=None, _lock=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._infos)

    @property
    def fps(self) -> int:
        return int(self.metadata.get("fps", DEFAULT_FPS))

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the stored frames."""
        if self._size is None:
            self._size = self[0].size if len(self) else (0, 0)
        return self._size

    def _index(self, k: int) -> int:
        k = int(k)
        if k < 0:
            k += len(self)
        if not 0 <= k < len(self):
            raise IndexError(f"frame {k} out of range (store has {len(self)} frames)")
        return k

    def read_bytes(self, k: int) -> bytes:
        """The stored JPEG of frame k."""
        info = self._infos[self._index(k)]
        with self._lock:
            return self._zip().read(info)

    def __getitem__(self, k: int) -> Image.Image:
        return _decode(self.read_bytes(k))

    def get_many(self, indices: Iterable[int]) -> list[Image.Image]:
        """Frames at `indices` (in that order); read in file order, each member once."""
        idx = [self._index(k) for k in indices]
        data: dict[int, bytes] = {}
        with self._lock:
            zf = self._zip()
            for k in sorted(set(idx), key=lambda j: self._infos[j].header_offset):
                data[k] = zf.read(self._infos[k])
        return [_decode(data[k]) for k in idx]

    def get_array(self, k: int) -> np.ndarray:
        """Frame k as an HxWx3 uint8 array."""
        return np.asarray(self[k])

    def close(self) -> None:
        if self._zf is not None:
            self._zf.close()
            self._fh.close()
        self._zf = self._fh = None

    def __enter__(self) -> "FrameStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FrameStore({self.path!r}, n={len(self)}, size={self._size})"


def _decode(jpeg: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(jpeg))
    return im.convert("RGB") if im.mode != "RGB" else _loaded(im)


def _loaded(im: Image.Image) -> Image.Image:
    im.load()
    return im
