"""ablation: pre-train and probe a list of variants of one base config, and compare
them with the paper (Table 1, Table 3, Fig. 6, appendix Fig. 2).

    benchmarks (default: a miniature BoLD written on the fly, as linear-probe/sample)
      -> per variant, a subflow `ablation-variant` named after the variant:
           plan (resolved config and its hash) -> finished before? its result.json, nothing runs
           -> max_neutral variants: re-filter the per-video clips into the variant's own manifests
           -> pretrain (subflow) -> linear-probe (subflow) -> result.json
      -> comparison table (Markdown + Parquet + table artifact), plots (PNG + markdown artifact)

A failed variant is recorded with its error and the others go on. The logic lives in
`emotionclip.training.variants` (configs, hashes, results) and
`emotionclip.evaluation.ablation_report` (table and plots), the tasks in
`tasks/ablation.py`; this file only composes them.
"""

from __future__ import annotations

import inspect
from typing import Any, Literal, Optional

from prefect import flow

from emotionclip.evaluation.ablation_report import outcomes
from emotionclip.evaluation.sample import sample_roots
from emotionclip.training.variants import variant_label
from flows.linear_probe import linear_probe
from flows.pretrain import pretrain
from tasks.ablation import (
    checked_probe_settings, clip_count_task, finished_before, plan_task, refilter_task, report_task, result_task,
    variant_record,
)
from tasks.evaluation import make_sample_task

# linear-probe parameters this flow sets itself; every other one is a probe setting.
_PROBE_OWN = {"datasets", "out_dir", "checkpoint", "official_checkpoint", "profile", "samples", "sample_size",
              "data_root", "checkpoint_from_run"}
PROBE_SETTINGS = {k: p.default for k, p in inspect.signature(linear_probe.fn).parameters.items()
                  if k not in _PROBE_OWN}


@flow(name="ablation-variant", log_prints=True)
def ablation_variant(spec: dict[str, Any], base: dict[str, Any], probe: dict[str, Any],
                     datasets: dict[str, str], devices: int = 1) -> Any:
    """One variant: its result.json if it has finished before, else pre-training and the probe."""
    plan = plan_task(spec, base, {"datasets": datasets, **probe})
    done = finished_before(plan)
    if done is not None:
        return done
    # a max_neutral variant trains on the dataset's clips re-filtered into manifests of its own
    kept = int(refilter_task(plan)["kept"]) if plan.catalog_overrides is not None else clip_count_task(plan.manifests)
    label = plan.variant.label
    cfg = plan.config
    trained = pretrain.with_options(flow_run_name=f"{label}-pretrain")(
        manifests=cfg.manifests, out_dir=cfg.out_dir, preset=cfg.preset, ablation=cfg.ablation,
        overrides=plan.pretrain_overrides, devices=devices, profile=cfg.profile, catalog=cfg.catalog,
        data_root=cfg.data_root, resume=cfg.resume, max_steps=cfg.max_steps)
    probed = linear_probe.with_options(flow_run_name=f"{label}-linear-probe")(
        datasets=datasets, out_dir=plan.probe_dir, checkpoint=trained["checkpoint"], profile=cfg.profile,
        **probe)
    return result_task(plan, kept, trained, probed["paths"]["parquet"])


@flow(name="ablation", log_prints=True)
def ablation(
    variants: list[dict[str, Any]],
    out_dir: str = "runs/ablation",
    preset: Literal["paper", "official-code"] = "paper",
    profile: Optional[str] = None,
    manifests: Optional[str] = None,
    overrides: Optional[dict[str, Any]] = None,
    max_steps: Optional[int] = None,
    catalog: Optional[str] = None,
    data_root: Optional[str] = None,
    catalog_overrides: Optional[dict[str, Any]] = None,
    datasets: Optional[dict[str, str]] = None,
    sample_size: Literal["small", "medium"] = "small",
    probe: Optional[dict[str, Any]] = None,
    devices: int = 1,
) -> dict[str, Any]:
    """Pre-train and linear-probe every variant of one base config.

    Args:
        variants: e.g. [{}, {"ablation": "saam"}, {"beta": 1.0}, {"max_neutral": 0.2}]; keys
            `ablation` (a row of Table 1 / Table 3), `beta` (Fig. 6), `max_neutral` (appendix
            Fig. 2: the dataset's clips re-filtered, nothing re-annotated), `overrides`
            (TrainConfig fields), `name` (display name). `{}` is the base config.
        out_dir: Each variant in `<out_dir>/<hash of its resolved config>/`; the report here.
        preset: Base config's hyper-parameters, as pretrain takes them: `paper` (appendix
            B.2) or `official-code` (the authors' public code).
        profile: Catalog model profile of every variant (paper, tiny), as pretrain takes it.
        manifests: Manifests the variants train on (file, folder or fsspec URL); default:
            the catalog's manifests folder.
        overrides: TrainConfig fields of the base config, e.g. {"batch_size": 32}; a
            variant's own `overrides` apply after them.
        max_steps: Stop each variant's pre-training after this many steps; empty: every epoch.
        catalog: Catalog file; default data_catalog.yaml (or $EMOTIONCLIP_CATALOG).
        data_root: Data root holding the manifests, frame stores and generated benchmarks;
            default: the catalog's.
        catalog_overrides: Dotted catalog keys the dataset was built with (e.g.
            build-tv-dataset/sample-tiny's); a max_neutral variant re-filters under them.
        datasets: Benchmark -> folder for the probe; default a miniature BoLD at
            `<data_root>/eval-samples/bold`, written when missing (`sample_size`).
        sample_size: Size of that generated BoLD: small (14 samples per split) or medium (56).
        probe: Other linear-probe parameters (c_mode, det_imgsz, device, ...).
        devices: GPUs per pre-training (torchrun when > 1).
    """
    settings = checked_probe_settings(probe, PROBE_SETTINGS)  # an unknown key fails before any variant
    if not datasets:
        datasets = {name: make_sample_task(name, root, sample_size)
                    for name, root in sample_roots(["bold"], data_root).items()}
    base = {"out_root": out_dir, "preset": preset, "profile": profile, "manifests": manifests,
            "overrides": overrides, "max_steps": max_steps, "catalog": catalog, "data_root": data_root,
            "catalog_overrides": catalog_overrides}
    records: list[dict[str, Any]] = []
    for spec in variants:  # a subflow per variant, named after it; a failed one is recorded, the others go on
        state = ablation_variant.with_options(flow_run_name=variant_label(spec))(
            spec, base, settings, datasets, devices, return_state=True)
        records.append(variant_record(spec, state))
    paths = report_task(records, out_dir)
    return {"variants": records, "paths": paths, **outcomes(records)}
