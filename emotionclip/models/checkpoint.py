"""Checkpoints: ours (model + config + training state) and the authors' released file.

Everything is read with `torch.load(weights_only=True)`: our checkpoints hold
only tensors, numbers, strings, lists and dicts. The authors' file is a
`torch.save` dict whose `model` entry holds OpenCLIP ViT-B-32 weights under
`backbone.` and the temporal head under `visual_head.`; a file that needs
arbitrary unpickling loads only with `allow_pickle=True`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch

from emotionclip.core.io import atomic_path, open_file
from emotionclip.models.model import EmotionCLIP, EmotionCLIPConfig
from emotionclip.models.transforms import IMAGENET_MEAN, IMAGENET_STD, PreprocessConfig

FORMAT = "emotionclip-checkpoint"
VERSION = 1


def save_checkpoint(
    path: str | os.PathLike,
    model: EmotionCLIP,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    step: int | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write {format, version, config, model, optimizer?, scheduler?, step?, extra?} atomically
    (local path or fsspec URL). Under DDP pass the unwrapped model (`ddp.module`).
    A full disk raises OSError(errno.ENOSPC) naming the path, the free and the
    needed space; nothing is left behind."""
    obj: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "config": model.config.to_dict(),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    if optimizer is not None:
        obj["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        obj["scheduler"] = scheduler.state_dict()
    if step is not None:
        obj["step"] = int(step)
    if extra is not None:
        obj["extra"] = extra
    if "://" not in str(path):
        _save_local(obj, Path(path))
    else:
        # an fsspec URL: written to a local temporary file, then one put
        with atomic_path(path) as tmp:
            _save_local(obj, tmp, shown=str(path))


def _temp_path(final: Path) -> Path:
    """Where the checkpoint is written before the rename: next to `final` (the same
    filesystem), under the hidden temporary name `emotionclip.core.io.atomic_path` uses."""
    return final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")


def _save_local(obj: dict[str, Any], final: Path, shown: str | None = None) -> None:
    """torch.save into a temporary file next to `final`, flushed to disk, then
    renamed over `final`. On failure the temporary file is removed; a full disk is
    an OSError(ENOSPC) saying how much space there is and how much was needed
    (torch's own error is "[enforce fail at inline_container.cc...]")."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(final)
    try:
        # a file object, not a path: its writes raise Python's OSError (with errno), which
        # torch keeps in the exception chain; torch's C++ path writer loses the errno
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())  # a crash right after the rename must not leave a truncated file
        os.replace(tmp, final)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # a symlink is removed, not what it points to
        if isinstance(err, Exception) and _out_of_space(err):
            free = shutil.disk_usage(final.parent).free
            raise OSError(errno.ENOSPC, f"not enough space to save checkpoint to {shown or final}: {_size(free)} free, "
                                        f"about {_size(_tensor_bytes(obj))} needed") from err
        raise


def _out_of_space(err: BaseException) -> bool:
    """A full disk (or quota) anywhere in the exception's chain."""
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        e = e.__cause__ or e.__context__
    return False


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a nested dict/list (about the size of its torch.save file)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The raw checkpoint dict (to restore optimizer/scheduler/step when resuming)."""
    with open_file(path, "rb") as f:
        try:
            obj = torch.load(f, map_location=map_location, weights_only=True)
        except OSError:
            raise
        except Exception as err:  # noqa: BLE001 - not a torch file, truncated, foreign: torch raises anything
            # the first sentence of torch's message, without the C++ source location of a zip error
            text = re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", (str(err).strip().splitlines() or [""])[0])
            first = text.split(". ")[0][:200]
            # no path here: callers name the file they were given (resume, --checkpoint)
            raise ValueError(
                f"not an EmotionCLIP checkpoint: torch cannot read it ({type(err).__name__}: {first})") from err
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ValueError(f"{path} is not an EmotionCLIP checkpoint (for the authors' file use load_official_checkpoint)")
    if obj.get("version", 0) > VERSION:
        raise ValueError(f"{path} has checkpoint version {obj['version']}, newer than this code ({VERSION})")
    return obj


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> EmotionCLIP:
    """Rebuild the model from a checkpoint's config and load its weights (strict)."""
    ckpt = load_checkpoint(path, map_location)
    model = EmotionCLIP.from_config(ckpt["config"])
    model.load_state_dict(ckpt["model"], strict=True)
    return model.to(map_location)


# -- the authors' checkpoint -----------------------------------------------------
_OFFICIAL_PREFIXES = (("backbone.", "clip."), ("visual_head.", "temporal."))
# Buffers of the authors' model that ours does not keep (position ids are arange).
_OFFICIAL_DROPPED = ("visual_head.position_ids",)


def official_to_state_dict(official: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Authors' key names -> ours. `backbone.*` -> `clip.*`, `visual_head.*` -> `temporal.*`;
    their top-level `logit_scale` is the backbone's (a tied parameter) -> `clip.logit_scale`."""
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in official.items():
        key = key[len("module."):] if key.startswith("module.") else key  # saved from a DDP wrapper
        if key in _OFFICIAL_DROPPED:
            continue
        if key == "logit_scale":
            out.setdefault("clip.logit_scale", value)
            continue
        for theirs, ours in _OFFICIAL_PREFIXES:
            if key.startswith(theirs):
                out[ours + key[len(theirs):]] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"unexpected keys in the official checkpoint: {unknown[:10]}")
    return out


def state_dict_to_official(state: dict[str, torch.Tensor], max_frames: int | None = None) -> dict[str, torch.Tensor]:
    """Ours -> the authors' key names (the inverse of `official_to_state_dict`)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for theirs, ours in _OFFICIAL_PREFIXES:
            if key.startswith(ours):
                out[theirs + key[len(ours):]] = value
                break
        else:
            raise ValueError(f"unexpected key {key!r}")
    out["logit_scale"] = state["clip.logit_scale"]
    pos = state.get("temporal.frame_position_embedding.weight")
    if pos is not None:
        out["visual_head.position_ids"] = torch.arange(max_frames or pos.shape[0], dtype=torch.long)
    return out


def _infer_temporal(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    layers = {int(m.group(1)) for k in state if (m := re.match(r"temporal\.fusion_layer\.layers\.(\d+)\.", k))}
    if not layers:
        return {"temporal": "mean"}
    width = state["temporal.frame_position_embedding.weight"].shape[1]
    # heads are not stored in the weights; the authors used 8 (width 512)
    return {
        "temporal": "transformer",
        "temporal_layers": max(layers) + 1,
        "max_frames": state["temporal.frame_position_embedding.weight"].shape[0],
        "temporal_heads": 8 if width % 8 == 0 else 1,
    }


def load_official_checkpoint(
    path: str | os.PathLike,
    clip_model: str = "ViT-B-32",
    allow_pickle: bool = False,
    map_location: str | torch.device = "cpu",
) -> EmotionCLIP:
    """Load the authors' released checkpoint into our model, so that it computes what
    theirs does: SAP frame encoder, their temporal head, ImageNet mean/std."""
    with open_file(path, "rb") as f:
        try:
            obj = torch.load(f, map_location=map_location, weights_only=not allow_pickle)
        except pickle.UnpicklingError as err:
            raise ValueError(
                f"{path} needs arbitrary unpickling, which can run code. If you trust the file, "
                f"pass allow_pickle=True. ({str(err).splitlines()[0]})"
            ) from err
    official = obj.get("model", obj.get("state_dict", obj)) if isinstance(obj, dict) else None
    if not isinstance(official, dict) or not any(k.startswith(("backbone.", "module.backbone.")) for k in official):
        raise ValueError(f"{path} does not look like the authors' EmotionCLIP checkpoint (no 'backbone.' weights)")
    state = official_to_state_dict(official)
    cfg = EmotionCLIPConfig(
        clip_model=clip_model,
        clip_pretrained=None,
        subject_mode="sap",  # the authors' code uses SAP
        preprocess=PreprocessConfig(mean=IMAGENET_MEAN, std=IMAGENET_STD),  # their training normalisation
        **_infer_temporal(state),
    )
    model = EmotionCLIP.from_config(cfg)
    model.load_state_dict(state, strict=True)
    return model.to(map_location).eval()
