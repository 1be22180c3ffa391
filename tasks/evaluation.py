"""The Prefect tasks of linear-probe (and of ablation's probe and default benchmark):
features per split, the probe, the results table, miniature benchmarks generated on
the fly; plus the flow-side helpers around them (the model to evaluate, the early
input checks, each benchmark's progress artifact).

The logic lives in `emotionclip.evaluation`; these tasks only wrap it. Prefect's
own result caching is off: the feature cache already makes re-runs free.
"""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Optional

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from emotionclip.core.progress import use as use_progress
from emotionclip.evaluation import results as R
from emotionclip.evaluation.features import FeatureConfig
from emotionclip.evaluation.probes import ProbeConfig
from emotionclip.evaluation.run import (
    ModelHandle, SplitFeatures, check_layout, check_model_choice, load_model, probe_dataset, results_rows,
    split_features,
)
from tasks.progress import DatasetProgress, register, split_hook, unregister


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


def checkpoint_to_evaluate(checkpoint: Optional[str], official_checkpoint: Optional[str],
                           checkpoint_from_run: Optional[str]) -> Optional[str]:
    """`checkpoint`, or, when neither checkpoint is given, the newest checkpoint of the
    pretrain run in `checkpoint_from_run` (None there: the profile's model)."""
    if not checkpoint_from_run or checkpoint or official_checkpoint:
        return checkpoint
    # here, not in emotionclip.evaluation: the library's evaluation never imports training
    from emotionclip.training.checkpoint import latest_checkpoint

    found = latest_checkpoint(checkpoint_from_run)
    get_run_logger().info("model: %s", found or f"no checkpoint in {checkpoint_from_run}: the profile's model")
    return found


def check_inputs(model: ModelSpec, datasets: Mapping[str, str]) -> None:
    """Fail before any task runs: a wrong model choice, a benchmark folder not in its
    published layout, then a checkpoint that does not load."""
    check_model_choice(model.checkpoint, model.official_checkpoint, model.profile)
    for name, root in datasets.items():
        check_layout(name, root)
    model.load()


@contextmanager
def benchmark_progress(dataset: str, splits: list[str]) -> Iterator[tuple[DatasetProgress, str]]:
    """The benchmark's progress artifact and the token its features tasks find it by
    (`tasks.progress.split_hook`), registered while the block runs."""
    progress, token = DatasetProgress(f"linear-probe-progress-{dataset}", dataset, splits), uuid.uuid4().hex
    register(token, progress)
    try:
        yield progress, token
    finally:
        unregister(token)


@task(name="eval-features", task_run_name="features-{dataset}-{split}", cache_policy=NO_CACHE)
def features_task(model: ModelSpec, dataset: str, root: str, split: str, cache_dir: str,
                  feature_config: FeatureConfig, batch_size: int = 16, limit: Optional[int] = None,
                  progress_token: Optional[str] = None) -> SplitFeatures:
    handle = model.load()
    # samples done -> the benchmark's progress artifact (tasks/progress.py), through the library's hook
    with use_progress(split_hook(progress_token, split)):
        data = split_features(handle, dataset, root, split, cache_dir, feature_config, batch_size=batch_size,
                              device=model.device, limit=limit)
    get_run_logger().info("%s/%s: %d computed, %d cached, %d skipped", dataset, split, data.stats.computed,
                          data.stats.cached, len(data.stats.skipped))
    return data


@task(name="eval-probe", task_run_name="probe-{dataset}", cache_policy=NO_CACHE)
def probe_task(model: ModelSpec, dataset: str, data: dict[str, SplitFeatures],
               probe_config: ProbeConfig, cache_dir: Optional[str] = None) -> list[dict[str, Any]]:
    handle = model.load()
    result, extra = probe_dataset(dataset, data, probe_config, cache_dir=cache_dir)
    if result.c_mode in ("paper", "grid") and result.c_trials:
        get_run_logger().info("%s: C %.4g from %s (%d trials%s)", dataset, result.c, result.c_source,
                              len(result.c_trials), ", cached" if result.search_cached else "")
    return results_rows(dataset, handle, data, result, extra, probe_config)


@task(name="eval-results", cache_policy=NO_CACHE)
def results_task(rows: list[dict[str, Any]], out_dir: str) -> dict[str, str]:
    df = R.to_frame(rows)
    paths = R.write_results(df, out_dir)
    create_table_artifact(table=R.table_records(df), key="linear-probe-results",
                          description="Linear-probe results beside the paper's Table 4 (EmotionCLIP row)")
    return paths


@task(name="eval-make-sample", task_run_name="make-sample-{dataset}", cache_policy=NO_CACHE)
def make_sample_task(dataset: str, root: str, size: str) -> str:
    """Write the miniature `dataset` to `root` unless a complete one is there."""
    from emotionclip.evaluation.sample import SIZES, ensure_sample

    if not ensure_sample(dataset, root, n_per_split=SIZES[size]):
        get_run_logger().info("%s: using the sample already at %s", dataset, root)
    return root
