"""Human detection (docs/design.md section 4, "Humans").

The paper ran YOLOv7 at 640 px with confidence 0.25 and NMS IoU 0.45, person
class only. Ultralytics has no YOLOv7, so we use an NMS-based Ultralytics
detector (YOLO11/YOLOv8) and pass every parameter explicitly: Ultralytics'
own default IoU is 0.7, and a YOLO26/YOLOv10 head set to its NMS-free
branch would ignore the IoU (refused here).

Detection runs on the full-resolution frames at the frame store's fps
(`emotionclip.frames.iter_frames`), decoded in a background thread while the
previous batch is inferred. Boxes are stored normalized to [0, 1] of the frame
(x / width, y / height), so they stay valid at any stored frame size. The
authors' code kept boxes in 640-letterbox coordinates and shifted them; this
avoids that class of bug.
"""

from __future__ import annotations

import io
import os
import queue
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pandas as pd

from emotionclip.errors import ModelNotAvailable, StageError
from emotionclip.schemas import DETECTIONS
from emotionclip.zoo import locked_cache

STAGE = "humans"

# Paper (section 3.1 / authors' code): YOLOv7 at 640 px, conf 0.25, IoU 0.45, person only.
PAPER_IMGSZ = 640
PAPER_CONF = 0.25
PAPER_IOU = 0.45  # Ultralytics' default is 0.7: always pass it explicitly
PERSON_CLASS = 0  # COCO "person"

TINY_DETECTOR_YAML = "yolo11n.yaml"
TINY_SEED = 0
# Fixed so two builds of the tiny detector are byte-identical (Model.save stamps the time).
_TINY_DATE = "1970-01-01T00:00:00+00:00"

_COLUMNS = [f.name for f in DETECTIONS]


def _ultralytics():
    """Import ultralytics after pointing its settings/caches away from HOME and
    turning off auto-install (docs/design.md section 7)."""
    from emotionclip.env import configure_environment

    configure_environment()
    import ultralytics

    try:  # no usage analytics from a data pipeline (Ultralytics' "sync" setting), in memory only
        from ultralytics.utils.events import events

        events.enabled = False
    except (ImportError, AttributeError):
        pass
    return ultralytics


def resolve_device(device: str = "auto") -> str:
    """"auto" -> "cuda" when a GPU is visible, else "cpu"; anything else is kept."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# -- building and loading ------------------------------------------------------

def build_tiny_detector(path: str | os.PathLike, seed: int = TINY_SEED) -> Path:
    """Write a random-weight Ultralytics detector built from `yolo11n.yaml`
    (same classes and head as the real checkpoints) to `path`, loadable by
    `YOLO(path)`. Deterministic: same seed -> same bytes. Nothing is downloaded
    (the yaml ships inside the ultralytics wheel)."""
    import torch

    _ultralytics()
    from copy import deepcopy

    from ultralytics import YOLO, __version__

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = YOLO(TINY_DETECTOR_YAML, verbose=False)
    # The checkpoint layout of `Model.save`, minus its wall-clock date.
    ckpt = {
        "ema": None,
        "model": deepcopy(model.model).half(),
        "modelopt": None,
        "date": _TINY_DATE,
        "version": __version__,
        "license": "AGPL-3.0 License (https://ultralytics.com/license)",
        "docs": "https://docs.ultralytics.com",
    }
    # Saved through a buffer: torch names the zip's records after the file, and
    # callers write to temporary names (emotionclip.tiny), so bytes would differ.
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    path.write_bytes(buf.getvalue())
    return path


def _is_ultralytics_asset(ref: str) -> bool:
    return os.sep not in ref and "/" not in ref and ref.endswith(".pt")


def _resolve_weights(ref: str) -> str:
    """A local .pt path (building a missing tiny model on first use), or an
    Ultralytics asset name resolved into Ultralytics' weights dir. Offline and
    absent -> ModelNotAvailable saying how to fetch it."""
    from emotionclip.zoo import FETCH_HINT, ensure_model

    p = Path(ref).expanduser()
    if p.is_absolute() or ref.startswith(("./", "../", "~")):
        return ensure_model(str(p))  # raises ModelNotAvailable for a missing folder/file
    if p.exists():
        return str(p.resolve())
    if not _is_ultralytics_asset(ref):
        raise ModelNotAvailable(f"detector {ref!r} is neither a local .pt file nor an Ultralytics model name. {FETCH_HINT}")
    _ultralytics()
    from ultralytics.utils import SETTINGS

    cached = Path(SETTINGS["weights_dir"]) / ref
    if cached.exists():
        return str(cached)
    offline = os.environ.get("YOLO_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if offline:
        raise ModelNotAvailable(
            f"the detector weights {ref!r} are not in Ultralytics' weights dir {cached.parent} and "
            f"YOLO_OFFLINE is set. {FETCH_HINT}"
        )
    # Online: Ultralytics downloads into its weights dir (not the working directory).
    return str(cached)


def _check_safe_checkpoint(path: str) -> None:
    """Refuse a checkpoint that needs anything beyond Ultralytics/torch classes:
    unpickle it with `weights_only=True` against Ultralytics' allow-list first
    (YOLO() itself unpickles without restrictions)."""
    from ultralytics.nn.tasks import torch_safe_load

    torch_safe_load(path, safe_only=True)


@locked_cache
def load_detector(ref: str, device: str = "auto") -> Any:
    """Load an Ultralytics detector once per process (keyed by ref and device).

    `ref` is `Catalog.model_ref("detector")`: an absolute .pt path (tiny or
    pre-fetched) or an Ultralytics model name such as "yolo11l.pt". `device`
    keys the cache (one model per device); Ultralytics moves the weights on the
    first `predict(device=...)`. A missing tiny model is built on first use.
    """
    _ultralytics()
    from ultralytics import YOLO

    weights = _resolve_weights(ref)
    if not Path(weights).exists():  # an official asset, online: fetch it into Ultralytics' weights dir
        from ultralytics.utils.downloads import attempt_download_asset

        from emotionclip.zoo import FETCH_HINT

        try:
            weights = attempt_download_asset(weights)
        except Exception as e:  # network errors come in many types; the hint is the same
            raise ModelNotAvailable(f"could not download the detector weights {ref!r}: {e}. {FETCH_HINT}") from e
    _check_safe_checkpoint(weights)
    model = YOLO(weights, task="detect")
    # YOLO26/YOLOv10 heads can run NMS-free (one-to-one branch); then `iou` is
    # silently ignored. Refuse a detector whose head is set to (or only has) that branch.
    head = model.model.model[-1]
    if getattr(head, "end2end", False):
        raise ValueError(
            f"detector {ref!r} runs NMS-free (end-to-end head, e.g. YOLO26/YOLOv10): the paper's NMS at IoU "
            f"{PAPER_IOU} would not be applied; use an NMS-based model such as yolo11l.pt or yolov8l.pt"
        )
    model._emotionclip_lock = threading.Lock()  # Ultralytics predictors are not thread-safe
    return model


# -- detection ------------------------------------------------------------------

def _prefetch_batches(frames: Iterable[np.ndarray], batch_size: int, depth: int = 2) -> Iterator[list[np.ndarray]]:
    """Batches of BGR frames, decoded/converted in a background thread so
    decoding overlaps inference. Exceptions in the producer are re-raised here;
    leaving early stops the producer and closes the source iterator."""
    import cv2

    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        it = iter(frames)
        try:
            batch: list[np.ndarray] = []
            for frame in it:
                if stop.is_set():
                    return
                if frame.ndim != 3 or frame.shape[2] != 3:
                    raise ValueError(f"expected HxWx3 RGB frames, got shape {frame.shape}")
                # Ultralytics takes numpy images as BGR (OpenCV order).
                batch.append(cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR))
                if len(batch) == batch_size:
                    if not put(batch):
                        return
                    batch = []
            if batch:
                put(batch)
            put(done)
        except BaseException as e:  # handed to the consumer
            put(e)
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="detect-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=10)


def detect_humans(
    frames: Iterable[np.ndarray],
    model: Any,
    imgsz: int = PAPER_IMGSZ,
    conf: float = PAPER_CONF,
    iou: float = PAPER_IOU,
    classes: list[int] | None = None,
    batch_size: int = 32,
    device: str = "cpu",
    half: bool = False,
) -> pd.DataFrame:
    """Person boxes for every frame (HxWx3 uint8 RGB), per `schemas.DETECTIONS`:
    one row per box, `frame_idx` = position in `frames`, boxes normalized to
    [0, 1] of the frame. Frames with nobody have no row; `df.attrs["n_frames"]`
    holds the number of frames seen. `half` applies on CUDA only."""
    classes = [PERSON_CLASS] if classes is None else list(classes)
    device = resolve_device(device)
    half = bool(half) and device.startswith("cuda")
    lock = getattr(model, "_emotionclip_lock", None) or threading.Lock()
    # fp16 compute on CUDA (`quantize` replaced the deprecated `half` argument).
    precision = 16 if half else 32
    parts: list[np.ndarray] = []
    n_frames = 0
    for batch in _prefetch_batches(frames, batch_size):
        with lock:
            results = model.predict(
                batch, imgsz=imgsz, conf=conf, iou=iou, classes=classes, device=device,
                batch=len(batch), verbose=False, save=False, quantize=precision,
            )
        for k, r in enumerate(results):
            boxes = r.boxes
            if boxes is None or len(boxes) == 0:
                continue
            h, w = r.orig_shape
            xyxy = boxes.xyxy.float().cpu().numpy() / np.array([w, h, w, h], dtype=np.float32)
            rows = np.empty((len(xyxy), 6), dtype=np.float64)
            rows[:, 0] = n_frames + k
            rows[:, 1:5] = np.clip(xyxy, 0.0, 1.0)
            rows[:, 5] = boxes.conf.float().cpu().numpy()
            parts.append(rows)
        n_frames += len(batch)
    data = np.concatenate(parts) if parts else np.empty((0, 6))
    df = pd.DataFrame({
        "frame_idx": data[:, 0].astype(np.int32),
        **{c: data[:, i].astype(np.float32) for i, c in enumerate(_COLUMNS[1:], start=1)},
    })
    df.attrs["n_frames"] = n_frames
    return df


# -- stage entry point ------------------------------------------------------------

def run_humans(catalog: Any, video_id: str) -> dict:
    """Detect people on every frame of the raw video (the frames the frame
    store holds, at full resolution) and write the detections Parquet with
    `n_frames` in its metadata."""
    from emotionclip.ffmpeg import FFmpegError
    from emotionclip.frames import FrameError, iter_frames, local_video
    from emotionclip.io import atomic_write_parquet
    from emotionclip.schemas import to_table

    params = catalog.stages.humans
    fps = catalog.stages.frames.fps
    device = resolve_device(params.device)
    model = load_detector(catalog.model_ref("detector"), device)
    with local_video(catalog, video_id, STAGE) as video:  # StageError when info/video is missing
        try:
            df = detect_humans(
                iter_frames(video, fps=fps), model, imgsz=params.imgsz, conf=params.conf, iou=params.iou,
                classes=params.classes, batch_size=params.batch_size, device=device, half=params.half,
            )
        except (FrameError, FFmpegError, OSError, ValueError) as e:  # a broken video: name it and the stage
            raise StageError(STAGE, video_id, f"detection failed: {type(e).__name__}: {e}") from e
    n_frames = int(df.attrs["n_frames"])
    if n_frames == 0:
        raise StageError(STAGE, video_id, f"no frames decoded from {video}")
    atomic_write_parquet(
        catalog.artifact("detections", video_id), to_table(df, DETECTIONS), schema=DETECTIONS,
        metadata={"fingerprint": catalog.stage_fingerprint(STAGE), "n_frames": str(n_frames), "fps": str(fps)},
    )
    return {
        "video_id": video_id,
        "n_frames": n_frames,
        "n_boxes": int(len(df)),
        "frames_with_person": int(df["frame_idx"].nunique()),
    }
