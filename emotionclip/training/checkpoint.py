"""Training checkpoints: naming, finding the newest readable one, pruning, RNG states.

A checkpoint is a model checkpoint of `emotionclip.models.save_checkpoint`
(atomic; `emotionclip.models.load_model(path)` reads it) whose `extra` holds what a
resumed run needs to continue exactly where the interrupted one stopped: grad
scaler, epoch and position inside the epoch (the sampler's start), the RNG
states of every rank and the training config. Only tensors, numbers, strings,
lists and dicts go in, so `torch.load(weights_only=True)` reads it.
`save_train_checkpoint` writes one from a run's `TrainState`, `resume` reads
one back into a freshly set-up state.
"""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from emotionclip.core.io import exists
from emotionclip.training.distributed import all_gather_objects, barrier

if TYPE_CHECKING:
    from emotionclip.training.config import TrainConfig
    from emotionclip.training.state import TrainState

log = logging.getLogger(__name__)

CKPT_DIR = "checkpoints"
_STEP_RE = re.compile(r"^step-(?P<step>\d{9})\.pt$")
_EPOCH_RE = re.compile(r"^epoch-(?P<epoch>\d{4})-step-(?P<step>\d{9})\.pt$")


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU + CUDA) RNG states, weights_only-loadable."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": _to_lists(random.getstate()),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_to_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _to_lists(x: Any) -> Any:
    return [_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuples(x: Any) -> Any:
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


def step_checkpoint_name(step: int) -> str:
    return f"step-{step:09d}.pt"


def epoch_checkpoint_name(epoch: int, step: int) -> str:
    return f"epoch-{epoch:04d}-step-{step:09d}.pt"


def checkpoint_dir(out_dir: str | Path) -> str:
    return f"{str(out_dir).rstrip('/')}/{CKPT_DIR}"


def list_checkpoints(out_dir: str | Path) -> list[str]:
    """Finished checkpoint paths under `out_dir`, oldest first (by optimizer step,
    which every name carries; temporary files of a killed write never match)."""
    d = checkpoint_dir(out_dir)
    if not exists(d):
        return []
    import fsspec

    fs, root = fsspec.core.url_to_fs(d)
    found = []
    for p in fs.ls(root, detail=False):
        name = p.rstrip("/").rsplit("/", 1)[-1]
        m = _STEP_RE.match(name) or _EPOCH_RE.match(name)
        if m:
            # an epoch-end checkpoint sorts after a step checkpoint of the same step
            found.append((int(m.group("step")), name.startswith("epoch"), f"{d}/{name}"))
    return [p for _, _, p in sorted(found)]


def latest_checkpoint(out_dir: str | Path) -> str | None:
    ckpts = list_checkpoints(out_dir)
    return ckpts[-1] if ckpts else None


def _kept_for_good(path: str, keep_epochs: bool | int) -> bool:
    """Whether `path` is an epoch-end checkpoint that pruning never removes."""
    m = _EPOCH_RE.match(path.rsplit("/", 1)[-1])
    if m is None or keep_epochs is False:
        return False
    if keep_epochs is True:
        return True
    return (int(m.group("epoch")) + 1) % int(keep_epochs) == 0  # epochs N, 2N, ... counted from 1


def prune_checkpoints(out_dir: str | Path, keep: int, keep_epochs: bool | int = True) -> list[str]:
    """Keep the newest `keep` checkpoints besides the epoch ends kept for good
    (`keep_epochs`: True all, False none, N every N-th epoch); remove the rest and
    return their paths. The newest checkpoint always stays (keep >= 1)."""
    import fsspec

    rolling = [p for p in list_checkpoints(out_dir) if not _kept_for_good(p, keep_epochs)]
    doomed = rolling[: max(0, len(rolling) - max(1, keep))]
    for p in doomed:
        fs, q = fsspec.core.url_to_fs(p)
        fs.rm(q)
    return doomed


def find_resume(config: "TrainConfig") -> str | None:
    """The checkpoint a run resumes from: None (fresh start), `config.resume` as a
    path, or for "latest" the newest readable one under out_dir (see `load_resume`)."""
    found = load_resume(config)
    return found[0] if found else None


def load_resume(config: "TrainConfig") -> tuple[str, dict[str, Any]] | None:
    """(path, loaded checkpoint) to resume from, or None for a fresh start.

    `config.resume` None: fresh. A path: that checkpoint; unreadable or not a
    training checkpoint: `TrainingInputError`. "latest": the newest checkpoint
    under out_dir that loads (a truncated newer one, from a killed copy or a full
    disk, is skipped with a warning naming it and why); none yet: a fresh start,
    logged; every one unreadable: `TrainingInputError`."""
    from emotionclip.training.errors import TrainingInputError

    if not config.resume:
        return None
    if config.resume != "latest":
        if not exists(config.resume):
            raise TrainingInputError(f"--resume {config.resume}: no such checkpoint")
        try:
            return config.resume, load_resumable(config.resume)
        except Exception as err:  # noqa: BLE001 - any load failure is the file's
            raise TrainingInputError(f"--resume {config.resume}: cannot resume from it ({_reason(err)}); "
                                     "pass another checkpoint or --resume latest") from err
    ckpts = list_checkpoints(config.out_dir)
    if not ckpts:
        log.info("resume=latest: no checkpoint under %s yet; starting fresh", checkpoint_dir(config.out_dir))
        return None
    skipped: list[str] = []
    for path in reversed(ckpts):
        try:
            ck = load_resumable(path)
        except Exception as err:  # noqa: BLE001 - an unreadable checkpoint is skipped, and said so
            log.warning("resume=latest: skipping checkpoint %s: unreadable (%s); trying the next older one",
                        path, _reason(err))
            skipped.append(f"{path} ({_reason(err)})")
            continue
        if skipped:
            log.warning("resume=latest: resuming from %s, the newest readable checkpoint (%d newer skipped)",
                        path, len(skipped))
        return path, ck
    raise TrainingInputError(f"resume=latest: none of the {len(ckpts)} checkpoints under "
                             f"{checkpoint_dir(config.out_dir)} is readable (newest: {skipped[0]}); "
                             "restore one or remove them to start fresh")


def load_resumable(path: str) -> dict[str, Any]:
    """A training checkpoint, loaded; ValueError when it lacks the training state."""
    ck = load_train_checkpoint(path)
    missing = [k for k in ("model", "optimizer", "scheduler", "step", "extra") if k not in ck]
    missing += [f"extra.{k}" for k in ("epoch", "step_in_epoch") if k not in ck.get("extra", {})]
    if missing:
        raise ValueError(f"not a training checkpoint (no {', '.join(missing)})")
    return ck


def _reason(err: BaseException) -> str:
    """An exception as a short one-line reason."""
    # the first sentence of the first line (torch appends a paragraph of advice)
    text = (str(err).strip().splitlines() or [""])[0].split(". ")[0][:200]
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def load_train_checkpoint(path: str) -> dict[str, Any]:
    from emotionclip.models.checkpoint import load_checkpoint

    return load_checkpoint(path, map_location="cpu")


def save_train_checkpoint(state: "TrainState", name: str) -> str:
    """Write checkpoint `name` of the run as it is now and prune old step checkpoints.
    Every rank calls it (the RNG states are gathered); rank 0 writes. Returns the path."""
    cfg, info = state.config, state.info
    rng = all_gather_objects(rng_state())
    path = f"{checkpoint_dir(cfg.out_dir)}/{name}"
    if info.is_main:
        from emotionclip.models import save_checkpoint

        at_end = state.epoch_finished  # a resumed run starts the next epoch
        extra = {
            "epoch": state.epoch + 1 if at_end else state.epoch,
            "step_in_epoch": 0 if at_end else state.step_in_epoch,
            "scaler": state.scaler.state_dict() if state.scaler.is_enabled() else {},
            "rng": rng,
            "world_size": info.world_size,
            "train_config": cfg.model_dump(mode="json"),
        }
        save_checkpoint(path, state.model, optimizer=state.optimizer, scheduler=state.scheduler, step=state.step,
                        extra=extra)
        prune_checkpoints(cfg.out_dir, cfg.keep_checkpoints, cfg.keep_epoch_checkpoints)
    barrier()
    state.last_checkpoint = path
    return path


def resume(state: "TrainState", path: str, checkpoint: dict[str, Any] | None = None) -> None:
    """Load checkpoint `path` (or its already loaded `checkpoint`) into a freshly
    set-up `state`: weights, optimizer, schedule, grad scaler, step, epoch and
    position in it, and this rank's RNG streams (re-seeded when the world size
    changed)."""
    ck = checkpoint if checkpoint is not None else load_train_checkpoint(path)
    state.model.load_state_dict(ck["model"])
    state.optimizer.load_state_dict(ck["optimizer"])
    state.scheduler.load_state_dict(ck["scheduler"])
    extra = ck["extra"]
    if extra.get("scaler"):
        state.scaler.load_state_dict(extra["scaler"])
    state.step, state.epoch, state.step_in_epoch = int(ck["step"]), int(extra["epoch"]), int(extra["step_in_epoch"])
    state.last_checkpoint = path
    info = state.info
    rngs = extra.get("rng") or []
    if len(rngs) == info.world_size:
        set_rng_state(rngs[info.rank])
    else:  # another world size: the order stays exact, dropout masks do not
        log.warning("resuming on %d ranks from a %d-rank checkpoint: RNG streams re-seeded",
                    info.world_size, len(rngs))
        torch.manual_seed(state.config.seed + info.rank + state.step)
    log.info("resumed from %s at step %d (epoch %d, step %d of it)", path, state.step, state.epoch,
             state.step_in_epoch)
