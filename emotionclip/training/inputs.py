"""Checks of a run's inputs before the first step: a missing frame store or a
broken manifest row found hours into a run (after the loader's replacement
attempts) costs the run; found here it costs a second and names what to fix."""

from __future__ import annotations

from typing import Any

import numpy as np

from emotionclip.training.errors import TrainingInputError, name_some


def check_frame_stores(dataset: Any) -> None:
    """Every video the dataset names has its frame store (one exists() per
    distinct video). Datasets without `video_ids`/`frames_location` are skipped."""
    video_ids = getattr(dataset, "video_ids", None)
    locate = getattr(dataset, "frames_location", None)
    if video_ids is None or locate is None:
        return
    check_frame_paths([locate(v) for v in sorted(set(video_ids))])


def check_frame_paths(paths: list[str]) -> None:
    """Raise TrainingInputError naming the frame stores among `paths` that do not exist."""
    from emotionclip.core.io import exists

    if all("://" not in str(p) for p in paths):
        missing = [p for p in paths if not exists(p)]
    else:  # an object store: one request per video, many in flight
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(16) as pool:
            missing = [p for p, ok in zip(paths, pool.map(exists, paths)) if not ok]
    if missing:
        raise TrainingInputError(
            f"{len(missing)} of {len(paths)} videos named by the manifests have no frame store "
            f"(missing: {name_some(missing, 3)}); build them with the frames stage "
            "(`emotionclip stage frames --video-id ID` or the build-tv-dataset flow), "
            "or check --data-root / the catalog's data_root")


def check_sentiment_logits(dataset: Any) -> None:
    """Every clip's 7 sentiment logits are finite: a NaN or Inf logit makes the
    sentiment weights of eq. 6 NaN, which the loss reads as 'identical sentiment'
    and so drops the clip's negatives (loss ~0, no error)."""
    logits = getattr(dataset, "logits", None)
    clip_ids = getattr(dataset, "clip_ids", None)
    if logits is None or clip_ids is None:
        return
    bad = np.flatnonzero(~np.isfinite(np.asarray(logits, dtype=np.float64)).all(axis=1))
    if len(bad):
        raise TrainingInputError(
            f"{len(bad)} of {len(clip_ids)} clips have NaN or infinite sentiment logits "
            f"(clips {name_some([clip_ids[i] for i in bad])}); re-run the sentiment stage for their videos and "
            "rebuild the manifests, or drop these rows")


def check_inputs(dataset: Any) -> None:
    """All checks of the dataset, cheapest first."""
    check_sentiment_logits(dataset)
    check_frame_stores(dataset)


def check_run_inputs(config: Any, world_size: int) -> dict[str, int]:
    """The checks `setup` makes, from the config alone and before any rank starts
    (the pretrain flow's first task): manifests readable and valid, one global batch
    of clips that divides over the ranks, every frame store present. Returns counts."""
    from emotionclip.core.manifest_store import read_manifests
    from emotionclip.training.build import load_catalog_for

    df = read_manifests(config.manifests)  # also rejects non-finite scores (SchemaError)
    per_step = world_size * config.grad_accum_steps
    if config.batch_size % per_step:
        raise TrainingInputError(f"batch_size {config.batch_size} is not divisible by {world_size} devices x "
                                 f"{config.grad_accum_steps} accumulation steps")
    if len(df) < config.batch_size:
        raise TrainingInputError(f"{config.manifests}: {len(df)} clips are fewer than one batch of "
                                 f"{config.batch_size}; lower it with --set batch_size=N")
    catalog = load_catalog_for(config)
    videos = sorted(set(df["video_id"]))
    check_frame_paths([catalog.artifact("frames", v) for v in videos])
    return {"clips": len(df), "videos": len(videos), "steps_per_epoch": len(df) // config.batch_size}
