"""build-tv-dataset: from YouTube (or a URL list, or a local folder) to the Parquet
clip manifests that pre-training reads.

    acquire (search -> download | urls -> download | local folder)
      -> per video: words, frames, sentences, sentiment, humans, clips
      -> filter + manifests (written once, atomically) -> dataset card

Work is mapped per video, never per frame. A video that fails at a stage is
recorded in `failures` and the others go on; the flow still completes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.futures import as_completed
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

from emotionclip.core.catalog import Catalog, check_data_root, load_catalog
from emotionclip.core.errors import StageError
from emotionclip.stages.registry import VIDEO_STAGES, done_video_ids
from flows.tasks import PER_VIDEO_TASKS, dataset_card, download, import_local_folder, manifests, search

Source = Literal["youtube", "urls", "folder", "sample"]
RunnerKind = Literal["threads", "processes", "dask"]


def make_task_runner(kind: RunnerKind = "threads", max_workers: Optional[int] = None,
                     dask_address: Optional[str] = None):
    """threads (default), processes, or Dask (a local cluster, or an existing
    scheduler at `dask_address` so the same flow scales out to many machines)."""
    if kind == "threads":
        return ThreadPoolTaskRunner(max_workers=max_workers)
    if kind == "processes":
        return ProcessPoolTaskRunner(max_workers=max_workers)
    if kind == "dask":
        from prefect_dask import DaskTaskRunner

        if dask_address:
            return DaskTaskRunner(address=dask_address)
        kwargs = {"n_workers": max_workers} if max_workers else {}
        # Loopback only: Dask's dashboard defaults to all interfaces on :8787, an open
        # port on the network; port 0 also lets parallel runs each get a free port.
        return DaskTaskRunner(cluster_kwargs={
            "processes": True, "threads_per_worker": 1,
            "host": "127.0.0.1", "dashboard_address": "127.0.0.1:0", **kwargs,
        })
    raise ValueError(f"unknown task runner {kind!r}: threads, processes or dask")


@task(name="process-video", task_run_name="process-video-{video_id}", cache_policy=NO_CACHE)
def process_video(catalog: Catalog, video_id: str) -> dict[str, Any]:
    """Every per-video stage in order; stops at the first failure and reports it."""
    done: dict[str, Any] = {}
    for stage_task in PER_VIDEO_TASKS:
        try:
            # the state, not the return value: an up-to-date stage ends as a Cached state
            done[stage_task.name] = stage_task(catalog, video_id, return_state=True).result()
        except Exception as e:  # StageError names stage and video; keep the others going
            stage = e.stage if isinstance(e, StageError) else stage_task.name
            return {"video_id": video_id, "ok": False, "stage": stage, "error": str(e), "stages": done}
    return {"video_id": video_id, "ok": True, "stages": done}


@flow(name="process-videos")
def process_videos(catalog: Catalog, video_ids: list[str]) -> list[dict[str, Any]]:
    """Map the per-video chain over the videos, updating a progress artifact as each finishes."""
    logger = get_run_logger()
    progress_id = create_progress_artifact(progress=0.0, description="videos processed (%)")
    futures = [process_video.submit(catalog, vid) for vid in video_ids]
    results = []
    for i, fut in enumerate(as_completed(futures), start=1):
        res = fut.result()
        results.append(res)
        status = "ok" if res["ok"] else f"FAILED at {res['stage']}: {res['error']}"
        logger.info("video %s (%d/%d): %s", res["video_id"], i, len(futures), status)
        update_progress_artifact(progress_id, progress=100.0 * i / max(len(futures), 1))
    return sorted(results, key=lambda r: r["video_id"])


def _acquire(catalog: Catalog, source: Source, urls: list[str], folder: Optional[str]):
    """-> (video ids ready for processing, failures)."""
    failures: list[dict] = []
    if source in ("folder", "sample"):
        if source == "sample":
            from emotionclip.sample import ensure_sample_corpus

            folder = str(ensure_sample_corpus(folder or Path(catalog.root) / "sample_corpus"))
        if folder is None:
            raise ValueError("source='folder' needs the `folder` parameter")
        imported = import_local_folder(catalog, folder)
        return imported.video_ids, imported.failures

    if source == "youtube":
        candidates = search(catalog)
        jobs = [{"video_id": c["id"]} for c in candidates]
    elif source == "urls":
        if not urls:
            raise ValueError("source='urls' needs the `urls` parameter")
        jobs = [{"url": u} for u in urls]
    else:
        raise ValueError(f"unknown source {source!r}")

    futures = [download.submit(catalog, **job) for job in jobs]
    ids = []
    for job, fut in zip(jobs, futures):
        try:
            ids.append(fut.result()["video_id"])
        except Exception as e:  # recorded; the other videos go on
            failures.append({"video_id": job.get("video_id") or job.get("url"), "stage": "download", "error": str(e)})
    return ids, failures


@flow(name="build-tv-dataset", log_prints=True)
def build_tv_dataset(
    source: Source = "sample",
    queries: Optional[list[str]] = None,
    urls: Optional[list[str]] = None,
    folder: Optional[str] = None,
    max_videos: Optional[int] = None,
    profile: str = "tiny",
    catalog_path: Optional[str] = None,
    data_root: Optional[str] = None,
    overrides: Optional[dict[str, Any]] = None,
    task_runner: Optional[RunnerKind] = None,
    max_workers: Optional[int] = None,
    dask_address: Optional[str] = None,
    force_manifests: bool = False,
) -> dict[str, Any]:
    """Build the TV dataset. `overrides` take dotted catalog keys, e.g.
    {"stages.filter.max_neutral": 0.3}; `task_runner` picks threads (default),
    processes or dask for the per-video work; `force_manifests` writes manifests even
    when they would shrink by more than `stages.manifests.max_shrink_fraction`."""
    logger = get_run_logger()
    extra = dict(overrides or {})
    if queries:
        extra["stages.search.queries"] = queries
    if max_videos:
        extra["stages.search.max_videos"] = max_videos
    catalog = load_catalog(catalog_path, profile=profile, data_root=data_root, overrides=extra)
    check_data_root(catalog)  # one clear error now, not an OSError in every video's first stage
    logger.info("catalog %s, profile %s, data root %s", catalog_path or "default", catalog.profile, catalog.root)

    video_ids, failures = _acquire(catalog, source, urls or [], folder)
    if max_videos:
        video_ids = video_ids[:max_videos]
    logger.info("%d videos to process, %d failed to download", len(video_ids), len(failures))

    runner = make_task_runner(task_runner or "threads", max_workers, dask_address)
    results = process_videos.with_options(task_runner=runner)(catalog, video_ids)

    ok_ids = [r["video_id"] for r in results if r["ok"]]
    failures += [{"video_id": r["video_id"], "stage": r["stage"], "error": r["error"]} for r in results if not r["ok"]]
    # Every done video, not just this run's: a run over part of the videos (max_videos, a
    # new folder) must not replace the manifests with that part.
    summary = manifests(catalog, done_video_ids(catalog), failures, force=force_manifests)
    card_path = dataset_card(catalog, summary)

    stage_counts = [
        {"stage": stage, "videos_done": sum(1 for r in results if stage in r["stages"]),
         "skipped_up_to_date": sum(1 for r in results if r["stages"].get(stage, {}).get("skipped"))}
        for stage in VIDEO_STAGES
    ]
    create_table_artifact(table=stage_counts, key="build-tv-dataset-stages", description="Per-stage counts")
    if failures:
        create_table_artifact(table=failures, key="build-tv-dataset-failures", description="Videos that failed")
    result = {
        **{k: v for k, v in summary.items() if isinstance(v, (int, float, str))},
        "videos": len(video_ids) + sum(1 for f in failures if f["stage"] == "download"),
        "processed": len(ok_ids),
        "failures": len(failures),
        "card": card_path,
    }
    logger.info("done: %s", result)
    return result


if __name__ == "__main__":
    build_tv_dataset()
