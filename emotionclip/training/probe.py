"""In-training linear probe (the authors probed BoLD every epoch).

At an epoch end, rank 0 hands the live model (no checkpoint reload) to the
evaluation package's `run_linear_probe`: the same feature extraction, probe
and metrics as `emotionclip eval run` and the `linear-probe` flow. Results
tables go to `OUT/probe/epoch-NNNN/`; frame stores and detections of the probe
videos are cached once under `OUT/probe/cache/work` and reused every epoch.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import torch

from emotionclip.training import checkpoint as ckpt
from emotionclip.training.config import TrainConfig
from emotionclip.training.distributed import barrier

log = logging.getLogger(__name__)

PROBE_DIR = "probe"


def probe_due(config: TrainConfig, epoch: int) -> bool:
    """Whether the epoch that just finished (0-based) is probed."""
    return bool(config.probe_dataset) and (epoch + 1) % config.probe_every_epochs == 0


@contextlib.contextmanager
def _preserved(model: torch.nn.Module):
    """Leave the run exactly as it was: train mode and every RNG stream (the probe
    runs between the epoch checkpoint and the next epoch, and a resumed run skips it)."""
    was_training = model.training
    rng = ckpt.rng_state()
    try:
        yield
    finally:
        ckpt.set_rng_state(rng)
        model.train(was_training)


def run_epoch_probe(model: Any, config: TrainConfig, epoch: int, step: int, device: torch.device) -> dict[str, Any]:
    """Probe `config.probe_dataset` with `model` as it is now. Returns
    {"dataset", "metrics": {"<split>/<metric>": value}, "results": path, "skipped": n}."""
    from emotionclip.evaluation.features import FeatureConfig, model_fingerprint
    from emotionclip.evaluation.probes import ProbeConfig
    from emotionclip.evaluation.run import ModelHandle, detector_for, run_linear_probe

    if not config.probe_dataset or not config.probe_root:
        raise ValueError("probe_dataset and probe_root are both needed for the in-training probe")
    base = Path(config.out_dir) / PROBE_DIR
    detector = detector_for(config.profile, config.catalog) if config.probe_detect else None
    with _preserved(model):
        # the weights' hash keys the feature cache: a restarted run never reads another run's features
        handle = ModelHandle(model, f"train:epoch{epoch}:step{step}", model_fingerprint(model))
        summary = run_linear_probe(
            config.probe_dataset, config.probe_root, handle, base / f"epoch-{epoch:04d}",
            probe_config=ProbeConfig(c_mode=config.probe_c_mode),
            # the clip length the model is trained on (paper: 8 for both)
            feature_config=FeatureConfig(num_frames=config.num_frames, detector=detector), cache_dir=base / "cache",
            batch_size=config.probe_batch_size, device=str(device), limit=config.probe_limit)
    values = {f"{r['split']}/{r['metric']}": float(r["value"]) for r in summary["rows"]}
    return {"dataset": summary["dataset"], "metrics": values, "results": summary["paths"]["parquet"],
            "skipped": sum(len(f["skipped"]) for f in summary["features"].values())}


def probe_epoch_end(model: Any, config: TrainConfig, epoch: int, step: int, device: torch.device,
                    is_main: bool) -> dict[str, Any] | None:
    """The probe of the epoch that just finished when it is due: rank 0 runs it, the
    other ranks wait. None when not due, and on the other ranks."""
    if not probe_due(config, epoch):
        return None
    result = None
    if is_main:  # the bare model: no collective inside; the others wait below
        result = run_epoch_probe(model, config, epoch, step, device)
        log.info("epoch %d probe on %s: %s", epoch, config.probe_dataset, result["metrics"])
    barrier()
    return result
