"""Training checkpoints: naming, finding the latest, pruning, RNG states.

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


def prune_step_checkpoints(out_dir: str | Path, keep: int) -> None:
    """Keep the newest `keep` step checkpoints; epoch-end checkpoints stay."""
    import fsspec

    steps = [p for p in list_checkpoints(out_dir) if _STEP_RE.match(p.rsplit("/", 1)[-1])]
    for p in steps[: max(0, len(steps) - keep)]:
        fs, q = fsspec.core.url_to_fs(p)
        fs.rm(q)


def find_resume(config: "TrainConfig") -> str | None:
    """The checkpoint `config.resume` names: None (fresh start), a path, or "latest"
    (the newest under out_dir; none yet: a fresh start)."""
    if not config.resume:
        return None
    if config.resume == "latest":
        return latest_checkpoint(config.out_dir)
    return config.resume


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
        prune_step_checkpoints(cfg.out_dir, cfg.keep_checkpoints)
    barrier()
    state.last_checkpoint = path
    return path


def resume(state: "TrainState", path: str) -> None:
    """Load checkpoint `path` into a freshly set-up `state`: weights, optimizer,
    schedule, grad scaler, step, epoch and position in it, and this rank's RNG
    streams (re-seeded when the world size changed)."""
    ck = load_train_checkpoint(path)
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
