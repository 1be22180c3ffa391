"""build-tv-dataset: from YouTube (or a URL list, or a local folder) to the Parquet
clip manifests that pre-training reads, growing one dataset run after run.

    registry: adopt an older data root, apply the exclusions
      -> acquire (search -> download | urls -> download | local folder),
         plus the transient failures of earlier runs (up to stages.download.max_attempts)
      -> per video: words, frames, sentences, sentiment, humans, clips
      -> filter + manifests over every done video of the registry -> dataset card
      -> a row in the runs table; what this run added as result and artifact

The video registry (`emotionclip.core.video_registry`, docs/design.md section 3)
is the dataset across runs: a scheduled run searches past what is done, excluded or
given up on, and the manifests hold every done video, not just this run's. Registry
writes are batched, one per phase. Work is mapped per video, never per frame. A
video that fails at a stage is recorded (registry, `failures`) and the others go
on; the flow still completes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.futures import as_completed
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

from emotionclip.core import io
from emotionclip.core.catalog import Catalog, check_data_root, load_catalog
from emotionclip.core.errors import StageError
from emotionclip.core.exclusions import load_exclusions
from emotionclip.core.video_registry import VideoRegistry, kept_clips_per_video, now_iso, summarize, url_key
from emotionclip.stages.download import is_transient_error
from emotionclip.stages.growth import (
    adopt_data_root, clips_now, growth_table, info_record, manifests_lock, record_results, videos_to_process,
)
from emotionclip.stages.registry import VIDEO_STAGES
from flows.tasks import (
    PER_VIDEO_TASKS, dataset_card, download_task, import_local_folder, is_transient_stage_failure, manifests, search,
)

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
            return {"video_id": video_id, "ok": False, "stage": stage, "error": str(e),
                    "transient": is_transient_stage_failure(e), "stages": done}
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


# -- the registry's side of a run ------------------------------------------------------
def _run_id() -> str:
    from prefect.runtime import flow_run

    return str(flow_run.id or "cli")


@dataclass
class Acquired:
    """What acquisition produced: ids ready for processing, failures
    ({video_id, stage, error, transient}), how many jobs were earlier runs' retries."""

    video_ids: list[str] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    retried: int = 0


def _acquire(catalog: Catalog, registry: VideoRegistry, source: Source, urls: list[str], folder: Optional[str],
             run_id: str, *, retry_failed: bool, limit: Optional[int],
             reason_of: Callable[[str, Optional[str]], Optional[str]]) -> Acquired:
    """Search + download, a URL list, or a local folder; registered in two batches
    (the candidates before downloading, the outcomes after)."""
    max_attempts = catalog.stages.download.max_attempts
    skip = registry.skip_ids(max_attempts, retry_failed)
    rows = registry.read().set_index("video_id", drop=False)
    out = Acquired()
    if source in ("folder", "sample"):
        if source == "sample":
            from emotionclip.sample import ensure_sample_corpus

            folder = str(ensure_sample_corpus(folder or Path(catalog.root) / "sample_corpus"))
        if folder is None:
            raise ValueError("source='folder' needs the `folder` parameter")
        imported = import_local_folder(catalog, folder)
        out.video_ids = list(imported.video_ids)
        out.failures = [{**f, "transient": False} for f in imported.failures]  # a bad file stays bad
        with registry.batch() as b:
            b.register([info_record(catalog, v) for v in out.video_ids], run_id)
            for f in out.failures:
                b.register([{"video_id": f["video_id"], "source": "local"}], run_id)
                b.mark_failed(f["video_id"], f["stage"], f["error"], False, run_id)
            b.apply_exclusions(reason_of)
        return out

    jobs: list[dict[str, str]] = []
    if source == "youtube":
        candidates = search(catalog, known=skip)
        jobs = [{"video_id": c["id"]} for c in candidates]
        registry.register([{"video_id": c["id"], "title": c.get("title"), "channel": c.get("channel"),
                            "url": c.get("url"), "query": c.get("query") or "", "source": "youtube"}
                           for c in candidates], run_id)
    elif source == "urls":
        if not urls:
            raise ValueError("source='urls' needs the `urls` parameter")
        # A URL whose video the registry knows as done, excluded or given up on costs no request.
        skip_urls = set(rows.loc[rows["video_id"].isin(skip), "url"])
        jobs = [{"url": u} for u in dict.fromkeys(urls) if u not in skip_urls and url_key(u) not in skip]
    else:
        raise ValueError(f"unknown source {source!r}")

    # Download failures of earlier runs that may heal (all of them with retry_failed) go first.
    queued = {j.get("video_id") or j.get("url") for j in jobs}
    retries = []
    for vid in registry.retry_ids(max_attempts, retry_failed):
        row = rows.loc[vid]
        if row["failed_stage"] != "download":
            continue  # downloaded already: processing retries it (videos_to_process)
        if row["source"] == "youtube" and vid not in queued:
            retries.append({"video_id": vid})
        elif row["source"] == "url" and row["url"] and row["url"] not in queued:
            retries.append({"url": row["url"]})
    out.retried = len(retries)
    jobs = retries + jobs
    if limit is not None:
        jobs = jobs[:max(limit, 0)]

    dl = download_task(catalog)
    futures = [dl.submit(catalog, **job) for job in jobs]
    ok: list[tuple[dict[str, str], str]] = []
    for job, fut in zip(jobs, futures):
        try:
            vid = fut.result().get("video_id")
        except Exception as e:  # recorded; the other videos go on
            vid = getattr(e, "video_id", None) or job.get("video_id") or url_key(job["url"])
            out.failures.append({"video_id": vid, "stage": "download", "error": str(e),
                                 "transient": is_transient_error(e), "url": job.get("url", "")})
            continue
        if vid:  # None: yt-dlp skipped an archived URL before naming its video
            ok.append((job, vid))
    with registry.batch() as b:
        for job, vid in ok:
            if job.get("url") and url_key(job["url"]) != vid:
                b.forget(url_key(job["url"]))  # the stand-in of an earlier failure: the real id is known now
            b.register([info_record(catalog, vid)], run_id)
        for f in out.failures:
            b.register([{"video_id": f["video_id"], "url": f["url"] or None,
                         "source": "url" if f["url"] else "youtube"}], run_id)
            b.mark_failed(f["video_id"], "download", f["error"], f["transient"], run_id)
        b.apply_exclusions(reason_of)  # titles are known now
    out.video_ids = list(dict.fromkeys(vid for _, vid in ok))
    return out


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
    target_videos: Optional[int] = None,
    retry_failed: bool = False,
) -> dict[str, Any]:
    """Build the TV dataset, or grow it: every run adds its videos to the ones earlier
    runs finished. `overrides` take dotted catalog keys, e.g.
    {"stages.filter.max_neutral": 0.3}; `task_runner` picks threads (default),
    processes or dask for the per-video work; `force_manifests` writes manifests even
    when they would shrink by more than `stages.manifests.max_shrink_fraction`.
    `target_videos`: stop growing at this many done videos (a run that finds them
    does nothing but report); `retry_failed`: also retry the videos that failed
    permanently or ran out of attempts (`stages.download.max_attempts`)."""
    logger = get_run_logger()
    extra = dict(overrides or {})
    if queries:
        extra["stages.search.queries"] = queries
    if max_videos:
        extra["stages.search.max_videos"] = max_videos
    catalog = load_catalog(catalog_path, profile=profile, data_root=data_root, overrides=extra)
    check_data_root(catalog)  # one clear error now, not an OSError in every video's first stage
    logger.info("catalog %s, profile %s, data root %s", catalog_path or "default", catalog.profile, catalog.root)
    if target_videos is not None and target_videos < 0:
        raise ValueError(f"target_videos must be >= 0, got {target_videos}")

    started, run_id = now_iso(), _run_id()
    registry = VideoRegistry(catalog)
    adopted = adopt_data_root(catalog, registry)
    if adopted:
        logger.info("adopted %d videos of a data root built before the video registry", len(adopted))
    before = registry.counts()  # the dataset as this run found it
    reason_of = load_exclusions(catalog).reason
    with registry.batch() as b:  # exclusion rules added or deleted since the last run
        newly_excluded, restored = b.apply_exclusions(reason_of)
    before_df = registry.read()
    done_before = set(before_df.loc[before_df["status"] == "done", "video_id"])
    clips_before = clips_now(catalog)

    reached = target_videos is not None and len(done_before) >= target_videos
    limit = None if target_videos is None else target_videos - len(done_before)
    acquired, results, stale = Acquired(), [], 0
    if reached:
        logger.info("target_videos=%d reached (%d done): nothing to fetch", target_videos, len(done_before))
        if restored:  # no longer excluded: back in the manifests, target or not
            results = process_videos(catalog, [v for v in restored if io.exists(catalog.artifact("info", v))])
            record_results(registry, results, run_id)
    else:
        acquired = _acquire(catalog, registry, source, urls or [], folder, run_id, retry_failed=retry_failed,
                            limit=limit, reason_of=reason_of)
        if max_videos:
            acquired.video_ids = acquired.video_ids[:max_videos]
        video_ids, stale = videos_to_process(catalog, registry, acquired.video_ids, retry_failed=retry_failed, limit=limit)
        logger.info("%d videos to process (%d done ones gone stale), %d failed to download", len(video_ids), stale,
                    len(acquired.failures))
        runner = make_task_runner(task_runner or "threads", max_workers, dask_address)
        results = process_videos.with_options(task_runner=runner)(catalog, video_ids)
        record_results(registry, results, run_id)

    failures = [{"video_id": f["video_id"], "stage": f["stage"], "error": f["error"]} for f in acquired.failures]
    failures += [{"video_id": r["video_id"], "stage": r["stage"], "error": r["error"]} for r in results if not r["ok"]]
    summary: dict[str, Any] = {}
    card_path = None
    if not reached or newly_excluded or restored:
        with manifests_lock(catalog):
            # Every done video of the registry, not just this run's: a run over part of
            # the videos (max_videos, a new folder) must not replace the manifests with that part.
            summary = manifests(catalog, registry.done_ids(), failures, force=force_manifests)
            per_video = kept_clips_per_video(catalog.artifact("manifests"))
            with registry.batch() as b:
                b.set_clips(per_video)

    after_df = registry.read()
    after = summarize(after_df)
    clips_total = clips_now(catalog)
    videos_added = int(((after_df["status"] == "done") & ~after_df["video_id"].isin(done_before)).sum())
    clips_added = clips_total - clips_before
    registry.append_run({
        "run_id": run_id, "started": started, "finished": now_iso(), "source": source,
        "videos_added": videos_added, "videos_done": after["done"], "videos_failed": after["failed"],
        "videos_excluded": after["excluded"], "clips_added": clips_added, "clips_total": clips_total,
    })
    if summary:  # after the run's row: the card's "Latest run" and growth plot include this run
        with manifests_lock(catalog):
            card_path = dataset_card(catalog, summary)

    if results:
        stage_counts = [
            {"stage": stage, "videos_done": sum(1 for r in results if stage in r["stages"]),
             "skipped_up_to_date": sum(1 for r in results if r["stages"].get(stage, {}).get("skipped"))}
            for stage in VIDEO_STAGES
        ]
        create_table_artifact(table=stage_counts, key="build-tv-dataset-stages", description="Per-stage counts")
    if failures:
        create_table_artifact(table=failures, key="build-tv-dataset-failures", description="Videos that failed")
    create_table_artifact(table=growth_table(before, after, videos_added, clips_added), key="build-tv-dataset-growth",
                          description=f"The dataset after run {run_id}: videos per status (change in this run, "
                                      "reasons) and kept clips")
    result = {
        **{k: v for k, v in summary.items() if isinstance(v, (int, float, str))},
        "videos": len(acquired.video_ids) + sum(1 for f in failures if f["stage"] == "download"),
        "processed": sum(1 for r in results if r["ok"]),
        "failures": len(failures),
        "card": card_path,
        "run_id": run_id,
        "videos_added": videos_added,
        "clips_added": clips_added,
        "videos_done": after["done"],
        "videos_failed": after["failed"],
        "videos_excluded": after["excluded"],
        "videos_pending": after["pending"],
        "clips_total": clips_total,
        "failed_reasons": after["failed_reasons"],
        "excluded_reasons": after["excluded_reasons"],
        "retried": acquired.retried,
        "stale_reprocessed": stale,
        "adopted": len(adopted),
        "target_reached": bool(target_videos is not None and after["done"] >= target_videos),
        # Per stage, how many videos ran it rather than finding it up to date.
        "stage_runs": {s: sum(1 for r in results if s in r["stages"] and not r["stages"][s].get("skipped"))
                       for s in VIDEO_STAGES},
    }
    logger.info("done: %s", json.dumps(result, default=str))
    return result


if __name__ == "__main__":
    build_tv_dataset()
