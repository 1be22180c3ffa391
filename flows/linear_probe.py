"""linear-probe: evaluate frozen EmotionCLIP features on the downstream
benchmarks with the paper's protocol.

    per dataset: features per split (cached on disk by model, dataset, split,
    preprocessing) -> probe (C by appendix B.3's random search, a grid or the
    authors' preset; the search cached beside the features) -> rows
    -> results table (Parquet + Markdown in out_dir, and a Prefect table artifact)

The logic lives in `emotionclip.evaluation`, the tasks in `tasks/evaluation.py`;
this file only composes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from prefect import flow

from emotionclip.evaluation.datasets import get_spec
from emotionclip.evaluation.features import FeatureConfig
from emotionclip.evaluation.probes import PAPER_C_TRIALS, ProbeConfig
from emotionclip.evaluation.run import detector_for, needed_splits
from emotionclip.evaluation.sample import sample_roots
from tasks.evaluation import (
    ModelSpec, benchmark_progress, check_inputs, checkpoint_to_evaluate, features_task, make_sample_task,
    probe_task, results_task,
)


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
    datasets = {**datasets, **{name: make_sample_task(name, root, sample_size)
                               for name, root in sample_roots(samples or [], data_root).items()}}
    model = ModelSpec(checkpoint=checkpoint_to_evaluate(checkpoint, official_checkpoint, checkpoint_from_run),
                      official_checkpoint=official_checkpoint, profile=profile, device=device)
    check_inputs(model, datasets)  # before any model work: wrong folders, a bad checkpoint
    fcfg = FeatureConfig(detector=detector_for(profile) if detect else None, det_imgsz=det_imgsz)
    pcfg = ProbeConfig(c_mode=c_mode, c=c, c_trials=c_trials, seed=seed, smoothing=smoothing,  # type: ignore[arg-type]
                       savgol_window=savgol_window, savgol_order=savgol_order)
    cache = cache_dir or str(Path(out_dir) / "cache")
    rows: list[dict[str, Any]] = []
    skipped: dict[str, int] = {}
    for name, root in datasets.items():
        spec = get_spec(name)
        splits = needed_splits(spec)
        # one progress artifact per benchmark: its splits' features (at once), then the probe
        with benchmark_progress(spec.name, splits) as (progress, token):
            futures = {s: features_task.submit(model, spec.name, str(root), s, cache, fcfg, batch_size, limit, token)
                       for s in splits}
            data = {s: f.result() for s, f in futures.items()}
        skipped[spec.name] = sum(len(d.stats.skipped) for d in data.values())
        progress.probing()
        new = probe_task(model, spec.name, data, pcfg, cache)
        progress.done(len(new))
        rows += new
    paths = results_task(rows, out_dir)
    return {"paths": paths, "rows": len(rows), "skipped": skipped}
