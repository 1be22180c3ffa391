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
`emotionclip.evaluation.ablation_report` (table and plots); this file only orchestrates.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Literal, Optional

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed

from emotionclip.training.variants import VariantPlan, variant_kind, variant_label
from flows.linear_probe import linear_probe, sample_inputs
from flows.pretrain import pretrain

# linear-probe parameters this flow sets itself; every other one is a probe setting.
_PROBE_OWN = {"datasets", "out_dir", "checkpoint", "official_checkpoint", "profile", "samples", "sample_size",
              "data_root", "checkpoint_from_run"}
PROBE_SETTINGS = {k: p.default for k, p in inspect.signature(linear_probe.fn).parameters.items()
                  if k not in _PROBE_OWN}


@task(name="plan-variant", cache_policy=NO_CACHE)
def plan_task(spec: dict[str, Any], base: dict[str, Any], probe: dict[str, Any]) -> VariantPlan:
    """The variant's resolved config and hash (`probe`: the benchmarks and the probe
    settings, part of it); fails on a bad variant before anything runs."""
    from emotionclip.training.variants import plan_variant

    return plan_variant(spec, probe=probe, **base)


@task(name="refilter-manifests", cache_policy=NO_CACHE)
def refilter_task(plan: VariantPlan) -> dict[str, Any]:
    """The manifests stage over every video whose clips are up to date, with the
    variant's filter, into the variant's own folder (no stage before it runs again)."""
    from emotionclip.core.catalog import load_catalog
    from emotionclip.stages.manifests import build_manifests
    from emotionclip.stages.registry import done_video_ids

    cfg = plan.config
    catalog = load_catalog(cfg.catalog, profile=cfg.profile, data_root=cfg.data_root,
                           overrides=plan.catalog_overrides)
    videos = done_video_ids(catalog)
    if not videos:
        raise ValueError(f"no video under {catalog.root} has up-to-date clips with these catalog overrides "
                         f"({plan.catalog_overrides}); they must match the ones the dataset was built with")
    return build_manifests(catalog, videos)


@task(name="clip-count", cache_policy=NO_CACHE)
def clip_count_task(manifests: str) -> int:
    from emotionclip.training.variants import manifests_clip_count

    return manifests_clip_count(manifests)


@task(name="variant-result", cache_policy=NO_CACHE)
def result_task(plan: VariantPlan, kept_clips: int, train: dict[str, Any], probe_results: str) -> dict[str, Any]:
    from emotionclip.evaluation.ablation_report import probe_metrics
    from emotionclip.training.variants import make_result, write_result

    result = make_result(plan, kept_clips=kept_clips, train=train, metrics=probe_metrics(probe_results),
                         probe_results=probe_results)
    write_result(plan, result)
    return result


@flow(name="ablation-variant", log_prints=True)
def ablation_variant(spec: dict[str, Any], base: dict[str, Any], probe: dict[str, Any],
                     datasets: dict[str, str], devices: int = 1) -> Any:
    """One variant: its result.json if it has finished before, else pre-training and the probe."""
    from emotionclip.training.variants import read_result

    logger = get_run_logger()
    plan = plan_task(spec, base, {"datasets": datasets, **probe})
    label = plan.variant.label
    done = read_result(plan)
    if done is not None:
        logger.info("%s: finished before (%s), nothing to run", label, plan.result_path)
        # the same config may come under another name this time
        now = {"variant": label, "kind": plan.variant.kind, "spec": plan.variant.spec, "cached": True}
        return Completed(message=f"cached: {plan.result_path}", data={**done, **now})
    if plan.catalog_overrides is not None:
        summary = refilter_task(plan)
        kept = int(summary["kept"])
        logger.info("%s: %d of %d clips kept at neutral < %s", label, kept, summary["clips"], plan.max_neutral)
    else:
        kept = clip_count_task(plan.manifests)
    cfg = plan.config
    trained = pretrain.with_options(flow_run_name=f"{label}-pretrain")(
        manifests=cfg.manifests, out_dir=cfg.out_dir, preset=cfg.preset, ablation=cfg.ablation,
        overrides=plan.pretrain_overrides, devices=devices, profile=cfg.profile, catalog=cfg.catalog,
        data_root=cfg.data_root, resume=cfg.resume, max_steps=cfg.max_steps)
    probed = linear_probe.with_options(flow_run_name=f"{label}-linear-probe")(
        datasets=datasets, out_dir=plan.probe_dir, checkpoint=trained["checkpoint"], profile=cfg.profile,
        **probe)
    return {**result_task(plan, kept, trained, probed["paths"]["parquet"]), "cached": False}


@task(name="ablation-report", cache_policy=NO_CACHE)
def report_task(records: list[dict[str, Any]], out_dir: str) -> dict[str, str]:
    from emotionclip.evaluation.ablation_report import comparison_frame, table_records, to_markdown, write_report

    paths = write_report(records, out_dir)
    df = comparison_frame(records)
    create_table_artifact(table=table_records(df), key="ablation-comparison",
                          description="Ablation variants x linear-probe metrics, beside paper Table 1 / Table 3")
    plots = [f"- {what}: [{Path(paths[k]).name}]({Path(paths[k]).resolve().as_uri()})"
             for k, what in (("beta", "metric against beta (paper Fig. 6)"),
                             ("neutral", "metric and kept clips against the neutral threshold (appendix Fig. 2)"))
             if k in paths]
    create_markdown_artifact(
        key="ablation-report", description="Ablation comparison and plots",
        markdown=to_markdown(df) + "\n### Files\n\n" + "\n".join(
            plots + [f"- table: `{paths['markdown']}`, `{paths['parquet']}`"]) + "\n")
    return paths


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
    logger = get_run_logger()
    unknown = sorted(set(probe or {}) - set(PROBE_SETTINGS))
    if unknown:
        raise ValueError(f"probe: unknown linear-probe setting(s) {unknown}; choose from {sorted(PROBE_SETTINGS)}")
    probe_settings = {**PROBE_SETTINGS, **(probe or {})}
    if not datasets:
        datasets, _ = sample_inputs({}, ["bold"], sample_size, data_root, None, None, None)
    base = {"out_root": out_dir, "preset": preset, "profile": profile, "manifests": manifests,
            "overrides": overrides, "max_steps": max_steps, "catalog": catalog, "data_root": data_root,
            "catalog_overrides": catalog_overrides}
    records: list[dict[str, Any]] = []
    for spec in variants:
        label = variant_label(spec)
        state = ablation_variant.with_options(flow_run_name=label)(
            spec, base, probe_settings, datasets, devices, return_state=True)
        if state.is_completed():
            records.append({**state.result(), "status": "done"})
            continue
        error = state.result(raise_on_failure=False)
        message = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(state.message)
        logger.warning("variant %s failed: %s", label, message)
        records.append({"variant": label, "kind": variant_kind(spec), "spec": spec, "status": "failed",
                        "cached": False, "error": message})
    paths = report_task(records, out_dir)
    by = {s: [r["variant"] for r in records if r["status"] == s] for s in ("done", "failed")}
    return {"variants": records, "paths": paths, "failed": by["failed"],
            "cached": [r["variant"] for r in records if r["status"] == "done" and r.get("cached")],
            "trained": [r["variant"] for r in records if r["status"] == "done" and not r.get("cached")]}
