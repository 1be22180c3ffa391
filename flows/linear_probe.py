"""linear-probe: evaluate frozen EmotionCLIP features on the downstream
benchmarks with the paper's protocol.

    per dataset: features per split (cached on disk by model, dataset, split,
    preprocessing) -> probe (C preset or searched) -> rows
    -> results table (Parquet + Markdown in out_dir, and a Prefect table artifact)

The logic lives in `emotionclip.evaluation`; these tasks only wrap it. Prefect's
own result caching is off: the feature cache already makes re-runs free.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from emotionclip.evaluation import results as R
from emotionclip.evaluation.datasets import get_spec
from emotionclip.evaluation.features import FeatureConfig
from emotionclip.evaluation.probes import ProbeConfig
from emotionclip.evaluation.run import (
    ModelHandle, SplitFeatures, check_layout, check_model_choice, detector_for, load_model, needed_splits,
    probe_dataset, results_rows, split_features,
)


@dataclass(frozen=True)
class ModelSpec:
    """Which model the tasks evaluate (checkpoint or official_checkpoint, or else the
    profile's own model; a profile beside a checkpoint picks only the detector) and
    where it runs; each task process loads it once (`load`)."""

    checkpoint: Optional[str] = None
    official_checkpoint: Optional[str] = None
    profile: Optional[str] = None
    device: str = "cpu"

    def load(self) -> ModelHandle:
        return load_model(checkpoint=self.checkpoint, official_checkpoint=self.official_checkpoint,
                          profile=self.profile, device=self.device)


@task(name="eval-features", task_run_name="features-{dataset}-{split}", cache_policy=NO_CACHE)
def features_task(model: ModelSpec, dataset: str, root: str, split: str, cache_dir: str,
                  feature_config: FeatureConfig, batch_size: int = 16, limit: Optional[int] = None) -> SplitFeatures:
    handle = model.load()
    data = split_features(handle, dataset, root, split, cache_dir, feature_config, batch_size=batch_size,
                          device=model.device, limit=limit)
    get_run_logger().info("%s/%s: %d computed, %d cached, %d skipped", dataset, split, data.stats.computed,
                          data.stats.cached, len(data.stats.skipped))
    return data


@task(name="eval-probe", task_run_name="probe-{dataset}", cache_policy=NO_CACHE)
def probe_task(model: ModelSpec, dataset: str, data: dict[str, SplitFeatures],
               probe_config: ProbeConfig) -> list[dict[str, Any]]:
    handle = model.load()
    result, extra = probe_dataset(dataset, data, probe_config)
    return results_rows(dataset, handle, data, result, extra, probe_config)


@task(name="eval-results", cache_policy=NO_CACHE)
def results_task(rows: list[dict[str, Any]], out_dir: str) -> dict[str, str]:
    df = R.to_frame(rows)
    paths = R.write_results(df, out_dir)
    table = [{k: (None if v != v else v) if isinstance(v, float) else v for k, v in r.items() if k != "notes"}
             for r in df.to_dict("records")]
    create_table_artifact(table=table, key="linear-probe-results",
                          description="Linear-probe results beside the paper's Table 4 (EmotionCLIP row)")
    return paths


@flow(name="linear-probe", log_prints=True)
def linear_probe(
    datasets: dict[str, str],
    out_dir: str,
    checkpoint: Optional[str] = None,
    official_checkpoint: Optional[str] = None,
    profile: Optional[str] = None,
    c_mode: str = "preset",
    c: Optional[float] = None,
    seed: int = 2022,
    smoothing: str = "sequence",
    savgol_window: int = 100,
    savgol_order: int = 3,
    detect: bool = True,
    det_imgsz: int = 640,
    cache_dir: Optional[str] = None,
    batch_size: int = 16,
    device: str = "cpu",
    limit: Optional[int] = None,
) -> dict[str, Any]:
    """`datasets` maps a benchmark name (bold, meld, emotic, moviegraphs, liris) to its
    folder. The model: checkpoint or official_checkpoint (with `profile` giving the
    detector, e.g. "tiny" offline), or `profile` alone for that profile's model."""
    check_model_choice(checkpoint, official_checkpoint, profile)
    for name, root in datasets.items():
        check_layout(name, root)  # fail early on a wrong folder, before any model is loaded
    model = ModelSpec(checkpoint=checkpoint, official_checkpoint=official_checkpoint, profile=profile, device=device)
    model.load()  # fail early on a bad checkpoint
    fcfg = FeatureConfig(detector=detector_for(profile) if detect else None, det_imgsz=det_imgsz)
    pcfg = ProbeConfig(c_mode=c_mode, c=c, seed=seed, smoothing=smoothing,  # type: ignore[arg-type]
                       savgol_window=savgol_window, savgol_order=savgol_order)
    cache = cache_dir or str(Path(out_dir) / "cache")
    rows: list[dict[str, Any]] = []
    skipped: dict[str, int] = {}
    for name, root in datasets.items():
        spec = get_spec(name)
        futures = {s: features_task.submit(model, spec.name, str(root), s, cache, fcfg, batch_size, limit)
                   for s in needed_splits(spec)}
        data = {s: f.result() for s, f in futures.items()}
        skipped[spec.name] = sum(len(d.stats.skipped) for d in data.values())
        rows += probe_task(model, spec.name, data, pcfg)
    paths = results_task(rows, out_dir)
    return {"paths": paths, "rows": len(rows), "skipped": skipped}

