"""linear-probe: evaluate frozen EmotionCLIP features on the downstream
benchmarks with the paper's protocol.

    per dataset: features per split (cached on disk by model, dataset, split,
    preprocessing) -> probe (C by appendix B.3's random search, a grid or the
    authors' preset; the search cached beside the features) -> rows
    -> results table (Parquet + Markdown in out_dir, and a Prefect table artifact)

The logic lives in `emotionclip.evaluation`; these tasks only wrap it. Prefect's
own result caching is off: the feature cache already makes re-runs free.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from emotionclip.core.progress import use as use_progress
from emotionclip.evaluation import results as R
from emotionclip.evaluation.datasets import get_spec
from emotionclip.evaluation.features import FeatureConfig
from emotionclip.evaluation.probes import PAPER_C_TRIALS, ProbeConfig
from emotionclip.evaluation.run import (
    ModelHandle, SplitFeatures, check_layout, check_model_choice, detector_for, load_model, needed_splits,
    probe_dataset, results_rows, split_features,
)
from flows.progress import DatasetProgress, register, split_hook, unregister


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
                  feature_config: FeatureConfig, batch_size: int = 16, limit: Optional[int] = None,
                  progress_token: Optional[str] = None) -> SplitFeatures:
    handle = model.load()
    # samples done -> the benchmark's progress artifact (flows/progress.py), through the library's hook
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
    table = [{k: (None if v != v else v) if isinstance(v, float) else v for k, v in r.items() if k != "notes"}
             for r in df.to_dict("records")]
    create_table_artifact(table=table, key="linear-probe-results",
                          description="Linear-probe results beside the paper's Table 4 (EmotionCLIP row)")
    return paths


# -- miniature benchmarks: generated on the fly, probed with the newest checkpoint of a run --

SAMPLES_DIR = "eval-samples"  # under the data root


@task(name="eval-make-sample", task_run_name="make-sample-{dataset}", cache_policy=NO_CACHE)
def make_sample_task(dataset: str, root: str, size: str) -> str:
    """Write the miniature `dataset` to `root` unless a complete one is there."""
    from emotionclip.evaluation.sample import SIZES, is_sample, make_sample

    if is_sample(root):
        get_run_logger().info("%s: using the sample already at %s", dataset, root)
        return root
    try:
        make_sample(dataset, root, n_per_split=SIZES[size])
    except OSError:
        if not is_sample(root):  # not a concurrent run that finished first: a real folder is in the way
            raise
    return root


def sample_inputs(datasets: dict[str, str], samples: Optional[list[str]], sample_size: str,
                  data_root: Optional[str], checkpoint: Optional[str], official_checkpoint: Optional[str],
                  checkpoint_from_run: Optional[str]) -> tuple[dict[str, str], Optional[str]]:
    """`datasets` with the generated samples added, and the checkpoint to evaluate."""
    from emotionclip.core.catalog import load_catalog

    out = dict(datasets)
    if samples:
        base = load_catalog(data_root=data_root).root
        if "://" in base:
            raise ValueError(f"samples are written with ffmpeg and need a local data root, not {base}")
        for name in samples:
            spec = get_spec(name)
            out[spec.name] = make_sample_task(spec.name, str(Path(base) / SAMPLES_DIR / spec.name), sample_size)
    if checkpoint_from_run and not (checkpoint or official_checkpoint):
        from emotionclip.training.checkpoint import latest_checkpoint

        checkpoint = latest_checkpoint(checkpoint_from_run)
        get_run_logger().info("model: %s", checkpoint or f"no checkpoint in {checkpoint_from_run}: the profile's model")
    return out, checkpoint


@flow(name="linear-probe", log_prints=True)
def linear_probe(
    datasets: dict[str, str],
    out_dir: str,
    checkpoint: Optional[str] = None,
    official_checkpoint: Optional[str] = None,
    profile: Optional[str] = None,
    c_mode: Literal["paper", "grid", "preset"] = "paper",
    c_trials: int = PAPER_C_TRIALS,
    c: Optional[float] = None,
    seed: int = 2022,
    smoothing: Literal["sequence", "per_movie", "none"] = "sequence",
    savgol_window: int = 100,
    savgol_order: int = 3,
    detect: bool = True,
    det_imgsz: int = 640,
    cache_dir: Optional[str] = None,
    batch_size: int = 16,
    device: str = "cpu",
    limit: Optional[int] = None,
    # -- miniature benchmarks (the linear-probe/sample deployment) --
    samples: Optional[list[str]] = None,
    sample_size: Literal["small", "medium"] = "small",
    data_root: Optional[str] = None,
    checkpoint_from_run: Optional[str] = None,
) -> dict[str, Any]:
    """Linear-probe frozen EmotionCLIP features on the downstream benchmarks (appendix B.3).

    The model: checkpoint or official_checkpoint (with `profile` giving the detector,
    e.g. "tiny" offline), or `profile` alone for that profile's model.

    Args:
        datasets: Benchmark name (bold, meld, emotic, moviegraphs, liris) -> its folder in
            the published layout (`emotionclip eval inspect` checks one); may be empty
            when `samples` names benchmarks.
        out_dir: Folder for results.parquet, results.md and the feature cache.
        checkpoint: One of our checkpoints (a pretrain run's `checkpoints/*.pt`) to evaluate.
        official_checkpoint: The authors' released checkpoint file, instead of `checkpoint`.
        profile: Catalog model profile (paper, tiny): with a checkpoint it picks only the
            detector; alone, that profile's own model is evaluated (paper: the untrained
            OpenCLIP initialisation; tiny: random weights, offline).
        c_mode: How the classifiers' C is chosen: paper (appendix B.3's seeded random search,
            `c_trials` trials), grid (a fixed grid) or preset (the authors' fixed C).
        c_trials: Trials of the paper's random search over C.
        c: A fixed C for every classifier, overriding `c_mode`; empty: chosen by `c_mode`.
        seed: Seeds the search trials, the hold-out split and the classifiers.
        smoothing: Savitzky-Golay smoothing of the LIRIS-ACCEDE predictions: over the whole
            test sequence (the authors'), per movie, or none.
        savgol_window: Savitzky-Golay window length (LIRIS-ACCEDE; the authors' 100).
        savgol_order: Savitzky-Golay polynomial order (LIRIS-ACCEDE; the authors' 3).
        detect: Detect people for the subject masks where a benchmark gives no box; off:
            empty masks.
        det_imgsz: Detector input size in pixels (the paper's 640; the miniature benchmarks'
            64x48 videos need only 64).
        cache_dir: Feature cache, keyed by model, dataset, split and preprocessing;
            default `<out_dir>/cache`.
        batch_size: Clips per forward pass when extracting features.
        device: Device for feature extraction: cpu, cuda or cuda:N.
        limit: Only the first N samples of each split (smoke runs); empty: all.
        samples: Benchmarks to probe on a miniature synthetic copy in the published layout
            (`emotionclip eval make-sample`), at `<data_root>/eval-samples/<name>`; written
            there first when missing. Added to `datasets`.
        sample_size: Size of a generated sample: small (14 samples per split) or medium (56).
        data_root: Where generated samples go (`<data_root>/eval-samples/`); default: the
            catalog's data root.
        checkpoint_from_run: A pretrain run's out_dir (e.g. pretrain/tiny's): evaluate its
            newest checkpoint when it has one and no checkpoint is given; else the
            profile's model.
    """
    datasets, checkpoint = sample_inputs(datasets, samples, sample_size, data_root, checkpoint,
                                         official_checkpoint, checkpoint_from_run)
    check_model_choice(checkpoint, official_checkpoint, profile)
    for name, root in datasets.items():
        check_layout(name, root)  # fail early on a wrong folder, before any model is loaded
    model = ModelSpec(checkpoint=checkpoint, official_checkpoint=official_checkpoint, profile=profile, device=device)
    model.load()  # fail early on a bad checkpoint
    fcfg = FeatureConfig(detector=detector_for(profile) if detect else None, det_imgsz=det_imgsz)
    pcfg = ProbeConfig(c_mode=c_mode, c=c, c_trials=c_trials, seed=seed, smoothing=smoothing,  # type: ignore[arg-type]
                       savgol_window=savgol_window, savgol_order=savgol_order)
    cache = cache_dir or str(Path(out_dir) / "cache")
    rows: list[dict[str, Any]] = []
    skipped: dict[str, int] = {}
    for name, root in datasets.items():
        spec = get_spec(name)
        splits = needed_splits(spec)
        # one progress artifact per benchmark: its splits' features, then the probe
        progress, token = DatasetProgress(f"linear-probe-progress-{spec.name}", spec.name, splits), uuid.uuid4().hex
        register(token, progress)
        try:
            futures = {s: features_task.submit(model, spec.name, str(root), s, cache, fcfg, batch_size, limit, token)
                       for s in splits}
            data = {s: f.result() for s, f in futures.items()}
        finally:
            unregister(token)
        skipped[spec.name] = sum(len(d.stats.skipped) for d in data.values())
        progress.probing()
        new = probe_task(model, spec.name, data, pcfg, cache)
        progress.done(len(new))
        rows += new
    paths = results_task(rows, out_dir)
    return {"paths": paths, "rows": len(rows), "skipped": skipped}

