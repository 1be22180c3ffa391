"""Human detection (docs/design.md section 4, "Humans").

The paper ran YOLOv7 at 640 px with confidence 0.25 and NMS IoU 0.45, person
class only. Ultralytics has no YOLOv7, so we use an NMS-based Ultralytics
detector (YOLO11/YOLOv8) and pass every parameter explicitly: Ultralytics'
own default IoU is 0.7, and a YOLO26/YOLOv10 head set to its NMS-free
branch would ignore the IoU (refused here).

Detection runs on the full-resolution frames at the frame store's fps
(`emotionclip.stages.frames.iter_frames`; on a GPU `iter_frames_parallel`, the same
frames from `decode_workers` ffmpeg processes), decoded in a background thread while the
previous batch is inferred. Boxes are stored normalized to [0, 1] of the frame
(x / width, y / height), so they stay valid at any stored frame size. The
authors' code kept boxes in 640-letterbox coordinates and shifted them; this
avoids that class of bug.
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Any, Iterable, Iterator

import numpy as np
import pandas as pd

from emotionclip.core.errors import StageError
from emotionclip.core.progress import ProgressHook, track
from emotionclip.core.schemas import HUMANS
from emotionclip.zoo.detector import load_detector, resolve_device

STAGE = "humans"

# Paper (section 3.1 / authors' code): YOLOv7 at 640 px, conf 0.25, IoU 0.45, person only.
PAPER_IMGSZ = 640
PAPER_CONF = 0.25
PAPER_IOU = 0.45  # Ultralytics' default is 0.7: always pass it explicitly
PERSON_CLASS = 0  # COCO "person"

_COLUMNS = [f.name for f in HUMANS]


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
    total: int | None = None,
    progress: ProgressHook | None = None,
) -> pd.DataFrame:
    """Person boxes for every frame (HxWx3 uint8 RGB), per `schemas.HUMANS`:
    one row per box, `frame_idx` = position in `frames`, boxes normalized to
    [0, 1] of the frame. Frames with nobody have no row; `df.attrs["n_frames"]`
    holds the number of frames seen. `half` applies on CUDA only. `progress` (else
    the hook of `emotionclip.core.progress.use`) counts frames detected, out of
    `total` (the expected frame count, when known)."""
    classes = [PERSON_CLASS] if classes is None else list(classes)
    device = resolve_device(device)
    half = bool(half) and device.startswith("cuda")
    lock = getattr(model, "_emotionclip_lock", None) or threading.Lock()
    # fp16 compute on CUDA (`quantize` replaced the deprecated `half` argument).
    precision = 16 if half else 32
    parts: list[np.ndarray] = []
    n_frames = 0
    bar = track("detect", total, "frames", hook=progress)
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
        bar.advance(len(batch))
    bar.close()
    data = np.concatenate(parts) if parts else np.empty((0, 6))
    df = pd.DataFrame({
        "frame_idx": data[:, 0].astype(np.int32),
        **{c: data[:, i].astype(np.float32) for i, c in enumerate(_COLUMNS[1:], start=1)},
    })
    df.attrs["n_frames"] = n_frames
    return df


# -- stage entry point ------------------------------------------------------------

def _expected_frames(video: Any, fps: int) -> int | None:
    """The progress bar's total: about how many frames the video gives at `fps`
    (None when it cannot be probed: decoding then reports the real problem)."""
    from emotionclip.core.ffmpeg import FFmpegError, probe_video
    from emotionclip.stages.frames import expected_frames

    try:
        return expected_frames(probe_video(str(video)).duration_s, fps)
    except (FFmpegError, OSError, ValueError):
        return None


def decode_workers(setting: int | str, device: str) -> int:
    """ffmpeg processes decoding one video (`stages.humans.decode_workers`): a
    number as given; "auto": 1 on CPU (the detector sets the pace and needs the
    cores), else min(4, cores // 4) (see the catalog's comment)."""
    if setting != "auto":
        return max(1, int(setting))
    if not str(device).startswith("cuda"):
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, min(4, cores // 4))


def run_humans(catalog: Any, video_id: str) -> dict:
    """Detect people on every frame of the raw video (the frames the frame
    store holds, at full resolution) and write the detections Parquet with
    `n_frames` in its metadata."""
    from emotionclip.core.ffmpeg import FFmpegError
    from emotionclip.stages.frames import FrameError, iter_frames_parallel, local_video
    from emotionclip.core.io import atomic_write_parquet
    from emotionclip.core.schemas import to_table

    params = catalog.stages.humans
    fps = catalog.stages.frames.fps
    device = resolve_device(params.device)
    model = load_detector(catalog.model_ref("detector"), device)
    with local_video(catalog, video_id, STAGE) as video:  # StageError when info/video is missing
        try:
            frames = iter_frames_parallel(video, fps=fps, workers=decode_workers(params.decode_workers, device))
            df = detect_humans(
                frames, model, imgsz=params.imgsz, conf=params.conf, iou=params.iou,
                classes=params.classes, batch_size=params.batch_size, device=device, half=params.half,
                total=_expected_frames(video, fps),
            )
        except (FrameError, FFmpegError, OSError, ValueError) as e:  # a broken video: name it and the stage
            raise StageError(STAGE, video_id, f"detection failed: {type(e).__name__}: {e}") from e
    n_frames = int(df.attrs["n_frames"])
    if n_frames == 0:
        raise StageError(STAGE, video_id, f"no frames decoded from {video}")
    atomic_write_parquet(
        catalog.artifact("humans", video_id), to_table(df, HUMANS), schema=HUMANS,
        metadata={"fingerprint": catalog.stage_fingerprint(STAGE), "n_frames": str(n_frames), "fps": str(fps)},
    )
    return {
        "video_id": video_id,
        "n_frames": n_frames,
        "n_boxes": int(len(df)),
        "frames_with_person": int(df["frame_idx"].nunique()),
    }
