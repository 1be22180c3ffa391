"""End-to-end linear probe of one benchmark: model -> cached features per split
-> probe -> results rows. Used by `emotionclip eval run` and the `linear-probe`
Prefect flow (which wraps the same three steps as tasks)."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emotionclip.evaluation import probes, results
from emotionclip.evaluation.datasets import DatasetSpec, Sample, get_spec
from emotionclip.evaluation.features import FeatureConfig, FeatureStats, extract_features, model_fingerprint

TINY_SEED = 0  # the tiny profile's random weights are seeded so its feature cache is reusable


class NoUsableSamples(ValueError):
    """Every sample of a split the protocol needs was skipped; the message counts the
    skips by error type and quotes the first error of the commonest one."""


@dataclass
class ModelHandle:
    model: Any
    name: str  # what the results table shows
    fingerprint: str


@dataclass
class SplitFeatures:
    split: str
    samples: list[Sample]
    features: np.ndarray
    stats: FeatureStats


@functools.lru_cache(maxsize=4)
def load_model(checkpoint: str | None = None, official_checkpoint: str | None = None, profile: str | None = None,
               device: str = "cpu", allow_pickle: bool = False, catalog_path: str | None = None) -> ModelHandle:
    """The model to evaluate: one of our checkpoints, the authors' released file,
    or a catalog profile's freshly built model (`tiny`: seeded random weights).
    With a checkpoint, `profile` is allowed and ignored here: it only picks the
    auxiliary models (the detector, `detector_for`). Loaded once per process."""
    from emotionclip.models import checkpoint as ckpt

    check_model_choice(checkpoint, official_checkpoint, profile)
    if checkpoint:
        model = ckpt.load_model(checkpoint, map_location=device)
        return ModelHandle(model.to(device), Path(checkpoint).name, model_fingerprint(model, checkpoint))
    if official_checkpoint:
        model = ckpt.load_official_checkpoint(official_checkpoint, allow_pickle=allow_pickle, map_location=device)
        return ModelHandle(model.to(device), f"official:{Path(official_checkpoint).name}",
                           model_fingerprint(model, official_checkpoint))
    import torch

    from emotionclip.core.catalog import load_catalog
    from emotionclip.models import from_catalog

    cat = load_catalog(catalog_path, profile=profile)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = from_catalog(cat, device=device)
    return ModelHandle(model, f"profile:{profile}:{cat.models.clip_model}", model_fingerprint(model))


def check_model_choice(checkpoint: str | os.PathLike | None, official_checkpoint: str | os.PathLike | None,
                       profile: str | None) -> None:
    """At most one checkpoint (ours or the authors'), and a checkpoint or a profile;
    a profile beside a checkpoint gives the auxiliary models only."""
    if checkpoint and official_checkpoint:
        raise ValueError("give one of checkpoint and official_checkpoint, not both")
    if not (checkpoint or official_checkpoint or profile):
        raise ValueError("give a checkpoint, an official_checkpoint or a profile")


def check_layout(dataset: str, root: str | os.PathLike) -> None:
    """Parse every split the protocol needs (no media is read): a wrong folder fails
    here, before a model is loaded. Raises DatasetLayoutError naming what is missing."""
    spec = get_spec(dataset)
    for split in needed_splits(spec):
        spec.load(root, split)


def detector_for(profile: str | None, catalog_path: str | None = None) -> str | None:
    """The catalog's detector for `profile` (the active profile when None)."""
    from emotionclip.core.catalog import load_catalog

    return load_catalog(catalog_path, profile=profile).model_ref("detector")


def needed_splits(spec: DatasetSpec) -> list[str]:
    out = [spec.train_split]
    for s in ([spec.val_split] if spec.val_split else []) + list(spec.eval_splits):
        if s not in out:
            out.append(s)
    return out


def split_features(handle: ModelHandle, dataset: str, root: str | os.PathLike, split: str,
                   cache_dir: str | os.PathLike, config: FeatureConfig, *, batch_size: int = 16,
                   device: str = "cpu", limit: int | None = None) -> SplitFeatures:
    spec = get_spec(dataset)
    samples = spec.load(root, split)
    if limit:
        samples = samples[:limit]
    kept, feats, stats = extract_features(handle.model, samples, dataset=spec.name, split=split,
                                          cache_dir=cache_dir, model_fp=handle.fingerprint, config=config,
                                          batch_size=batch_size, device=device)
    return SplitFeatures(split, kept, feats, stats)


def _targets(spec: DatasetSpec, samples: list[Sample]) -> np.ndarray:
    if spec.task == "multiclass":
        return np.asarray([int(s.target) for s in samples], dtype=np.int64)
    return np.stack([np.asarray(s.target, np.float32) for s in samples])


def probe_dataset(dataset: str, data: dict[str, SplitFeatures], config: probes.ProbeConfig,
                  cache_dir: str | os.PathLike | None = None) -> tuple[probes.ProbeResult, dict]:
    """Fit and score the paper's probe on extracted features; returns the result and
    extra metrics (BoLD's VAD R2). A C search is cached under `cache_dir` (None: not cached)."""
    spec = get_spec(dataset)
    for split, d in data.items():
        if len(d.samples) == 0:
            what = "training" if split == spec.train_split else split
            raise NoUsableSamples(f"{dataset}: no usable {what} samples: "
                                  f"{d.stats.skip_summary(len(d.samples) + len(d.stats.skipped))}")
    tr = data[spec.train_split]
    x_tr, y_tr = tr.features, _targets(spec, tr.samples)
    if spec.task == "regression":
        evals = {s: (data[s].features, _targets(spec, data[s].samples), [x.group for x in data[s].samples])
                 for s in spec.eval_splits}
        return probes.regression_probe(spec.name, spec.classes, (x_tr, y_tr), evals, config), {}
    # Only the split appendix B.3 scores the C search on is handed over as `val`
    # (none for BoLD, whose val is the reported split: its search holds out part of train).
    where = probes.search_split(spec.name, spec.val_split)
    val = None
    if where != probes.HOLDOUT:
        v = data[where]
        val = (v.features, _targets(spec, v.samples))
    evals = {s: (data[s].features, _targets(spec, data[s].samples)) for s in spec.eval_splits}
    result = probes.classification_probe(spec.name, spec.task, len(spec.classes), spec.preset_c, (x_tr, y_tr),
                                         val, evals, config, val_name=None if val is None else where,
                                         cache_dir=cache_dir)
    extra: dict[str, dict[str, float]] = {}
    if spec.name == "bold":
        vad = lambda ss: np.stack([s.aux["vad"] for s in ss])  # noqa: E731
        for split in spec.eval_splits:
            extra[split] = {"R2": probes.ridge_r2(x_tr, vad(tr.samples), data[split].features,
                                                  vad(data[split].samples), alpha=1.0)}
    return result, extra


def results_rows(dataset: str, handle: ModelHandle, data: dict[str, SplitFeatures], result: probes.ProbeResult,
                 extra: dict, config: probes.ProbeConfig) -> list[dict[str, Any]]:
    spec = get_spec(dataset)
    preset = ("given" if config.c is not None else "authors" if config.c_mode == "preset" else config.c_mode)
    return results.rows_from_probe(
        result, model=handle.name, model_fp=handle.fingerprint, preset=preset, seed=config.seed,
        n_train=len(data[spec.train_split].samples), n_eval={s: len(d.samples) for s, d in data.items()},
        n_skipped=sum(len(d.stats.skipped) for d in data.values()), extra=extra)


def run_linear_probe(dataset: str, root: str | os.PathLike, handle: ModelHandle, out_dir: str | os.PathLike, *,
                     probe_config: probes.ProbeConfig | None = None, feature_config: FeatureConfig | None = None,
                     cache_dir: str | os.PathLike | None = None, batch_size: int = 16, device: str = "cpu",
                     limit: int | None = None) -> dict[str, Any]:
    """Features (cached) for every split the protocol needs, the probe, and the
    results table in `out_dir`. Returns paths, stats and the rows."""
    spec = get_spec(dataset)
    cfg = probe_config or probes.ProbeConfig()
    fcfg = feature_config or FeatureConfig()
    cache = Path(cache_dir) if cache_dir else Path(out_dir) / "cache"
    data = {s: split_features(handle, spec.name, root, s, cache, fcfg, batch_size=batch_size, device=device,
                              limit=limit) for s in needed_splits(spec)}
    result, extra = probe_dataset(spec.name, data, cfg, cache_dir=cache)
    rows = results_rows(spec.name, handle, data, result, extra, cfg)
    df = results.to_frame(rows)
    paths = results.write_results(df, out_dir, name=f"results-{spec.name}")
    return {"dataset": spec.name, "paths": paths, "rows": rows,
            "features": {s: d.stats.to_dict() for s, d in data.items()}, "C": result.c, "c_source": result.c_source,
            "c_mode": result.c_mode, "c_trials": result.c_trials, "c_search_cached": result.search_cached,
            "c_search": result.search}
