"""The person detector: an Ultralytics model loaded once per process, checked for a
safe checkpoint and for an NMS head (the paper's NMS IoU must apply; appendix Table 1)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from emotionclip.core.env import import_ultralytics
from emotionclip.core.errors import ModelNotAvailable
from emotionclip.zoo.loaders import FETCH_HINT, ensure_model, locked_cache


def resolve_device(device: str = "auto") -> str:
    """"auto" -> "cuda" when a GPU is visible, else "cpu"; anything else is kept."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _is_ultralytics_asset(ref: str) -> bool:
    return os.sep not in ref and "/" not in ref and ref.endswith(".pt")


def _resolve_weights(ref: str) -> str:
    """A local .pt path (building a missing tiny model on first use), or an
    Ultralytics asset name resolved into Ultralytics' weights dir. Offline and
    absent -> ModelNotAvailable saying how to fetch it."""
    p = Path(ref).expanduser()
    if p.is_absolute() or ref.startswith(("./", "../", "~")):
        return ensure_model(str(p))  # raises ModelNotAvailable for a missing folder/file
    if p.exists():
        return str(p.resolve())
    if not _is_ultralytics_asset(ref):
        raise ModelNotAvailable(f"detector {ref!r} is neither a local .pt file nor an Ultralytics model name. {FETCH_HINT}")
    import_ultralytics()
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
    import_ultralytics()
    from ultralytics import YOLO

    weights = _resolve_weights(ref)
    if not Path(weights).exists():  # an official asset, online: fetch it into Ultralytics' weights dir
        from ultralytics.utils.downloads import attempt_download_asset

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
            f"detector {ref!r} runs NMS-free (end-to-end head, e.g. YOLO26/YOLOv10): the paper's NMS IoU "
            f"(0.45) would not be applied; use an NMS-based model such as yolo11l.pt or yolov8l.pt"
        )
    model._emotionclip_lock = threading.Lock()  # Ultralytics predictors are not thread-safe
    return model
