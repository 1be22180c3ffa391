"""The Prefect tasks of the ablation flows: plan a variant, re-filter its manifests,
count its clips, record its result, write the comparison report; plus the flow-side
helpers around them (the probe settings, a variant finished before, a variant's
record from its subflow's state).

The logic lives in `emotionclip.training.variants` (configs, hashes, results) and
`emotionclip.evaluation.ablation_report` (table and plots); these tasks only wrap it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, State

from emotionclip.training.variants import VariantPlan, variant_kind, variant_label


def checked_probe_settings(probe: Optional[Mapping[str, Any]],
                           defaults: Mapping[str, Any]) -> dict[str, Any]:
    """`defaults` (every linear-probe setting the ablation passes on) updated with
    `probe`; an unknown key fails here, before any variant runs."""
    unknown = sorted(set(probe or {}) - set(defaults))
    if unknown:
        raise ValueError(f"probe: unknown linear-probe setting(s) {unknown}; choose from {sorted(defaults)}")
    return {**defaults, **(probe or {})}


def finished_before(plan: VariantPlan) -> Optional[State]:
    """The variant's result.json as a completed state when this config has finished
    before (nothing is to run), else None."""
    from emotionclip.training.variants import read_result

    done = read_result(plan)
    if done is None:
        return None
    get_run_logger().info("%s: finished before (%s), nothing to run", plan.variant.label, plan.result_path)
    # the same config may come under another name this time
    now = {"variant": plan.variant.label, "kind": plan.variant.kind, "spec": plan.variant.spec, "cached": True}
    return Completed(message=f"cached: {plan.result_path}", data={**done, **now})


def variant_record(spec: dict[str, Any], state: State) -> dict[str, Any]:
    """The report's record of one variant from its subflow's final state: its result,
    or its error (the other variants go on)."""
    if state.is_completed():
        return {**state.result(), "status": "done"}
    label = variant_label(spec)
    error = state.result(raise_on_failure=False)
    message = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(state.message)
    get_run_logger().warning("variant %s failed: %s", label, message)
    return {"variant": label, "kind": variant_kind(spec), "spec": spec, "status": "failed", "cached": False,
            "error": message}


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
    summary = build_manifests(catalog, videos)
    get_run_logger().info("%s: %d of %d clips kept at neutral < %s", plan.variant.label, int(summary["kept"]),
                          summary["clips"], plan.max_neutral)
    return summary


@task(name="clip-count", cache_policy=NO_CACHE)
def clip_count_task(manifests: str) -> int:
    from emotionclip.training.variants import manifests_clip_count

    return manifests_clip_count(manifests)


@task(name="variant-result", cache_policy=NO_CACHE)
def result_task(plan: VariantPlan, kept_clips: int, train: dict[str, Any], probe_results: str) -> dict[str, Any]:
    """The variant's result.json, written; returned marked as trained this time."""
    from emotionclip.evaluation.ablation_report import probe_metrics
    from emotionclip.training.variants import make_result, write_result

    result = make_result(plan, kept_clips=kept_clips, train=train, metrics=probe_metrics(probe_results),
                         probe_results=probe_results)
    write_result(plan, result)
    return {**result, "cached": False}


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
