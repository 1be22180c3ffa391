"""build-tv-dataset: from YouTube (or a URL list, or a local folder) to the Parquet
clip manifests that pre-training reads, growing one dataset run after run.

    start: adopt an older data root, apply the exclusion rules
      -> search -> download (or: download a URL list, or: import a local folder),
         plus the transient failures of earlier runs
      -> per batch of videos_per_batch videos (a `process-videos` run, inline or on
         any worker), one task run per stage over the batch:
             words, frames -> sentences -> sentiment -> humans -> clips
      -> manifests (filter + Parquet, over every done video) -> card
      -> the run's row in the runs table; what it added as result and artifacts

The rules (which downloads to retry, URL stand-ins, the registry records, the
run's bookkeeping) live in the library (`emotionclip.stages.acquisition`,
`.growth`, `.chain`), the tasks in `tasks/dataset.py`; this file composes them.
Task runs grow with batches x stages, never with videos x stages, so a
3,613-video run is recorded in full by the server (bench/bench_scale.py). A video
that fails at a stage is recorded (registry, failures, its batch's outcome table)
and drops out of the later stages; the others go on and the flow completes.
"""

from __future__ import annotations

import json
from typing import Any, Literal, Optional

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.futures import PrefectFuture

from emotionclip.core import io
from emotionclip.core.catalog import Catalog, check_data_root, load_catalog
from emotionclip.core.video_registry import VideoRegistry
from emotionclip.sample import source_folder
from emotionclip.stages import acquisition
from emotionclip.stages.chain import (
    StageOutcome, VideoResult, gates, near_equal_parts, split, unfinished, video_results,
)
from emotionclip.stages.growth import (
    finish_run, manifests_lock, record_manifests, record_results, restored_on_disk, stage_counts, start_run,
    videos_to_process,
)
from tasks.dataset import VIDEO_STAGE_TASKS, card, download_task, import_folder, manifests, search
from tasks.runners import RunnerKind, make_task_runner, wait_for_flow_runs

Source = Literal["youtube", "urls", "folder", "sample"]
BatchRuns = Literal["inline", "deployment"]
# 3,613 videos -> 73 batches x 6 stage tasks: few enough task runs for the server and
# the UI, small enough that a failed batch run retries little work.
VIDEOS_PER_BATCH = 50
# Chains per batch when max_workers is not given: one, since the model stages and
# ffmpeg already use every core (parallel videos only contended for them; bench/bench_scale.py).
DEFAULT_SLICES = 1
BATCH_DEPLOYMENT = "process-videos/batch"
BATCH_RETRIES = 2  # a batch run (a lost worker, a full disk) retries by itself; its cached stages cost little


# -- one batch: a task run per stage -----------------------------------------------------
def batch_name(i: int, n: int) -> str:
    """The run name of batch i (0-based) of n: batch-0001-of-0073."""
    return f"batch-{i + 1:04d}-of-{n:04d}"


def submit_stages(catalog: Catalog, video_ids: list[str], name: str) -> dict[str, PrefectFuture]:
    """The per-video stages over `video_ids`, one task run each, every stage wired to
    the stages that gate it (words and frames side by side)."""
    futures: dict[str, PrefectFuture] = {}
    for stage, stage_task in VIDEO_STAGE_TASKS.items():
        futures[stage] = stage_task.submit(catalog, video_ids, [futures[g] for g in gates(stage)], name)
    return futures


def _outcomes(future: PrefectFuture) -> list[StageOutcome] | BaseException:
    """A stage task's outcomes, or why it has none (its process died; an upstream task did)."""
    future.wait()
    state = future.state
    if state.is_completed():
        return future.result()
    return RuntimeError(f"{state.name}: {state.message or ''}".strip())


def _results_path(catalog: Catalog, run_id: str, name: str) -> str:
    """Where a batch run leaves its results for the parent (in the data root, so any
    machine's batch run can write it and the parent read it)."""
    return f"{catalog.artifact('video_registry').rsplit('/', 1)[0]}/batches/{run_id}/{name}.json"


@flow(name="process-videos", flow_run_name="{batch_name}", retries=BATCH_RETRIES, retry_delay_seconds=10)
def process_videos(
    video_ids: Optional[list[str]] = None,
    batch_name: str = "batch-0001-of-0001",
    profile: str = "tiny",
    catalog_path: Optional[str] = None,
    data_root: Optional[str] = None,
    overrides: Optional[dict[str, Any]] = None,
    slices: Optional[int] = None,
    results_path: Optional[str] = None,
) -> list[dict[str, Any]]:
    """One batch of build-tv-dataset's videos: a task run per per-video stage over the
    batch (words and frames side by side, then sentences, sentiment, humans, clips),
    in `slices` parallel chains (default 1). A stage found up to date costs a few
    file reads and takes no GPU slot; a video that fails drops out of the later
    stages. Returns one record per video (`VideoResult.to_dict`: each stage ran /
    cached / failed, and on failure the stage, error and whether it may heal), also
    written to `results_path` when given (the parent reads it there when the batch
    ran on a worker), and shown as a table artifact.

    Args:
        video_ids: The batch's videos (already downloaded or imported into the data root);
            the parent run fills them in.
        batch_name: The run's name, e.g. batch-0001-of-0073.
        profile: Model profile of the catalog (as the parent's).
        catalog_path: Catalog file (as the parent's).
        data_root: Data root (as the parent's).
        overrides: Catalog overrides (as the parent's).
        slices: Parallel chains the batch is split into (on the flow's task runner);
            default 1.
        results_path: Where to write the results (JSON) for the parent run.
    """
    logger = get_run_logger()
    catalog = load_catalog(catalog_path, profile=profile, data_root=data_root, overrides=overrides)
    parts = near_equal_parts(list(video_ids or []), slices or DEFAULT_SLICES) if video_ids else []
    names = [batch_name if len(parts) == 1 else f"{batch_name}-part-{j + 1}-of-{len(parts)}"
             for j in range(len(parts))]
    chains = [submit_stages(catalog, part, name) for part, name in zip(parts, names)]
    results: list[VideoResult] = []
    for part, futures in zip(parts, chains):
        results += video_results(part, {stage: _outcomes(f) for stage, f in futures.items()})
    results.sort(key=lambda r: r.video_id)
    logger.info("%s: %d videos, %d ok", batch_name, len(results), sum(r.ok for r in results))
    if results:
        create_table_artifact(table=[r.table_row() for r in results],
                              description=f"{batch_name}: per video, each stage's outcome (ran with its "
                                          "seconds / cached: up to date from its stage marker / failed)")
    records = [r.to_dict() for r in results]
    if results_path:
        io.atomic_write_json(results_path, records)
    return records


def _process(catalog: Catalog, video_ids: list[str], spec: dict[str, Any], *, run_id: str, videos_per_batch: int,
             batch_runs: BatchRuns, task_runner: Optional[RunnerKind], max_workers: Optional[int],
             dask_address: Optional[str], upstream: Optional[dict[str, Any]] = None
             ) -> tuple[list[VideoResult], list[Any]]:
    """The per-video work of a run, batch by batch: inline (each batch a subflow of
    this run, on the chosen task runner, drawn after the import or downloads of its
    videos: `upstream`) or as runs of the `process-videos/batch` deployment that any
    worker of the pool picks up. Returns the results and the inline batches' states
    (the manifests are drawn after them)."""
    logger = get_run_logger()
    batches = split(video_ids, videos_per_batch)
    names = [batch_name(i, len(batches)) for i in range(len(batches))]
    slices = max_workers or DEFAULT_SLICES
    if not batches:
        return [], []
    progress_id = create_progress_artifact(progress=0.0, description="batches of videos processed (%)")
    results: list[VideoResult] = []
    states: list[Any] = []
    if batch_runs == "inline":
        for i, (name, batch) in enumerate(zip(names, batches), start=1):
            runner = make_task_runner(task_runner or "threads", max_workers, dask_address)
            # the import or downloads of its videos: the graph's edges into the batch
            after = list({id(u): u for v in batch if (u := (upstream or {}).get(v)) is not None}.values())
            state = process_videos.with_options(task_runner=runner)(
                batch, batch_name=name, slices=slices, return_state=True, wait_for=after, **spec)
            if state.is_completed():  # a failed batch must not hold back the manifests of the others
                states.append(state)
            try:
                results += [VideoResult.from_dict(d) for d in state.result()]
            except Exception as e:  # failed after its retries: recorded, the other batches go on
                results += unfinished(batch, "process-videos", f"batch run {name} failed: {e}")
            update_progress_artifact(progress_id, progress=100.0 * i / len(batches))
        return results, states
    if batch_runs != "deployment":
        raise ValueError(f"unknown batch_runs {batch_runs!r}: inline or deployment")
    import os

    from prefect.deployments import run_deployment

    if task_runner not in (None, "threads"):
        logger.warning("batch_runs=deployment: each batch runs on its worker's threads (task_runner %s ignored)",
                       task_runner)
    # The offline switches of this run hold for its batches too (a tiny-profile run stays offline).
    env = {k: os.environ[k] for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "YOLO_OFFLINE") if k in os.environ}
    paths = [_results_path(catalog, run_id, name) for name in names]
    runs = [run_deployment(BATCH_DEPLOYMENT, parameters={"video_ids": batch, "batch_name": name, "slices": slices,
                                                         "results_path": path, **spec},
                           flow_run_name=name, timeout=0, job_variables={"env": env} if env else None)
            for name, batch, path in zip(names, batches, paths)]
    logger.info("submitted %d batch runs of %s to the work pool", len(runs), BATCH_DEPLOYMENT)
    finals = wait_for_flow_runs([r.id for r in runs])
    for i, (name, batch, path, run) in enumerate(zip(names, batches, paths, runs), start=1):
        state = finals[run.id]
        if state.is_completed() and io.exists(path):
            results += [VideoResult.from_dict(d) for d in io.read_json(path)]
        else:
            results += unfinished(batch, "process-videos",
                                  f"batch run {name} ended {state.name}: {state.message or ''}".strip())
        update_progress_artifact(progress_id, progress=100.0 * i / len(batches))
    io.remove(paths[0].rsplit("/", 1)[0], recursive=True)  # read: the parent records them
    return results, []


# -- acquisition: tasks composed, rules in emotionclip.stages.acquisition ---------------
def _run_id() -> str:
    from prefect.runtime import flow_run

    return str(flow_run.id or "cli")


def _acquire(catalog: Catalog, registry: VideoRegistry, source: Source, urls: list[str], folder: Optional[str],
             run_id: str, *, retry_failed: bool, limit: Optional[int],
             reason_of: acquisition.ExclusionRule) -> acquisition.Acquired:
    """import | search -> download | download a URL list; registered in one write per phase."""
    max_attempts = catalog.stages.download.max_attempts
    if source in ("folder", "sample"):
        imported = import_folder(catalog, source_folder(catalog, source, folder), return_state=True)
        out = acquisition.record_import(catalog, registry, imported.result(), run_id, reason_of)
        out.task_runs, out.upstream = 1, {v: imported for v in out.video_ids}
        return out
    if source == "youtube":
        candidates = search(catalog, known=registry.skip_ids(max_attempts, retry_failed))
        jobs = acquisition.record_candidates(registry, candidates, run_id)
    elif source == "urls":
        if not urls:
            raise ValueError("source='urls' needs the `urls` parameter")
        jobs = acquisition.url_jobs(registry, urls, retry_failed=retry_failed, max_attempts=max_attempts)
    else:
        raise ValueError(f"unknown source {source!r}")
    jobs, retried = acquisition.plan_downloads(catalog, registry, jobs, retry_failed=retry_failed, limit=limit)
    dl = download_task(catalog)
    futures = [dl.submit(catalog, video_id=job.video_id, url=job.url) for job in jobs]
    results = [(job, f.result(raise_on_failure=False)) for job, f in zip(jobs, futures)]
    out = acquisition.record_downloads(catalog, registry, results, run_id, reason_of)
    out.retried, out.task_runs = retried, len(jobs) + (source == "youtube")
    out.upstream = {r["video_id"]: f for f, (_, r) in zip(futures, results) if isinstance(r, dict) and r.get("video_id")}
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
    videos_per_batch: int = VIDEOS_PER_BATCH,
    batch_runs: BatchRuns = "inline",
) -> dict[str, Any]:
    """Build the TV dataset, or grow it: every run adds its videos to the ones earlier
    runs finished.

    Args:
        source: Where the videos come from: youtube (search with `queries`, then
            download), urls (the `urls` list), folder (videos with .vtt captions in
            `folder`), sample (the bundled generated corpus, written on first use).
        queries: YouTube search queries; default: the catalog's (the paper's "TV series",
            "TV shows", section 3.1).
        urls: Video URLs to download (source urls).
        folder: Local folder of videos and captions (source folder; for source sample,
            where the corpus is written, default `<data_root>/sample_corpus`).
        max_videos: At most this many videos in this run; empty: every video of the folder
            or URL list, and for youtube the catalog's `stages.search.max_videos`.
        profile: Model profile of the catalog: paper (the paper's models, fetched on first
            use) or tiny (random-weight models, offline).
        catalog_path: Catalog file; default data_catalog.yaml (or $EMOTIONCLIP_CATALOG).
        data_root: Where the dataset lives (a folder or an fsspec URL such as s3://...);
            default: the catalog's data_root.
        overrides: Dotted catalog keys for this run, e.g. {"stages.filter.max_neutral": 0.3}.
        task_runner: How the per-video work runs: threads (default), processes or dask.
        max_workers: Parallel chains per batch, each a slice of its videos with a task
            per stage (threads, processes or local Dask workers); default 1: the model
            stages and ffmpeg already use every core.
        dask_address: Address of an existing Dask scheduler (tcp://host:8786) for
            task_runner dask; empty: a local cluster.
        force_manifests: Write the manifests even when they would shrink by more than
            `stages.manifests.max_shrink_fraction`.
        target_videos: Stop growing at this many done videos (a run that finds them does
            nothing but report); empty: no limit.
        retry_failed: Also retry the videos that failed permanently or ran out of attempts
            (`stages.download.max_attempts`).
        videos_per_batch: Videos per batch run (`process-videos`, named batch-0001-of-0073);
            each batch runs one task per stage over its videos (words-batch-0001-of-0073,
            ...), a stage found up to date in a few file reads. Default 50.
        batch_runs: inline (default): each batch is a subflow of this run, on task_runner;
            deployment: each batch is a run of the process-videos/batch deployment that
            any worker of the work pool picks up (several machines on a shared data root),
            retried by itself; this run waits for all of them, then builds the manifests once.
    """
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
    if videos_per_batch < 1:
        raise ValueError(f"videos_per_batch must be >= 1, got {videos_per_batch}")
    spec = {"profile": profile, "catalog_path": catalog_path, "data_root": data_root, "overrides": extra}
    batching = {"videos_per_batch": videos_per_batch, "batch_runs": batch_runs, "task_runner": task_runner,
                "max_workers": max_workers, "dask_address": dask_address}

    registry = VideoRegistry(catalog)
    start = start_run(catalog, registry, _run_id())
    if start.adopted:
        logger.info("adopted %d videos of a data root built before the video registry", len(start.adopted))
    reached = target_videos is not None and len(start.done_before) >= target_videos
    acquired, stale = acquisition.Acquired(), 0
    if reached:
        logger.info("target_videos=%d reached (%d done): nothing to fetch", target_videos, len(start.done_before))
        video_ids = restored_on_disk(catalog, start)  # no longer excluded: back in the manifests, target or not
    else:
        limit = None if target_videos is None else target_videos - len(start.done_before)
        acquired = _acquire(catalog, registry, source, urls or [], folder, start.run_id, retry_failed=retry_failed,
                            limit=limit, reason_of=start.reason_of)
        if max_videos:
            acquired.video_ids = acquired.video_ids[:max_videos]
        video_ids, stale = videos_to_process(catalog, registry, acquired.video_ids, retry_failed=retry_failed,
                                             limit=limit)
        logger.info("%d videos to process (%d done ones gone stale), %d failed to download", len(video_ids), stale,
                    len(acquired.failures))
    results, batch_states = _process(catalog, video_ids, spec, run_id=start.run_id, upstream=acquired.upstream,
                                     **batching)
    record_results(registry, results, start.run_id)

    failures = [f.record() for f in acquired.failures]
    failures += [{"video_id": r.video_id, "stage": r.stage, "error": r.error} for r in results if not r.ok]
    summary: dict[str, Any] = {}
    if not reached or start.newly_excluded or start.restored:
        with manifests_lock(catalog):
            # Every done video of the registry, not just this run's: a run over part of
            # the videos (max_videos, a new folder) must not replace the manifests with that part.
            summary = manifests(catalog, registry.done_ids(), failures, force=force_manifests, wait_for=batch_states)
            record_manifests(catalog, registry)
    result, growth = finish_run(catalog, registry, start, source=source, acquired=acquired, results=results,
                                stale=stale, manifests_summary=summary, target_videos=target_videos)
    card_path = None
    if summary:  # after the run's row: the card's "Latest run" and growth plot include this run
        with manifests_lock(catalog):
            card_path = card(catalog, summary)

    if results:
        create_table_artifact(table=stage_counts(results), key="build-tv-dataset-stages",
                              description="Per-stage counts (per video: each batch run's table)")
    if failures:
        create_table_artifact(table=failures, key="build-tv-dataset-failures", description="Videos that failed")
    create_table_artifact(table=growth, key="build-tv-dataset-growth",
                          description=f"The dataset after run {start.run_id}: videos per status (change in this "
                                      "run, reasons) and kept clips")
    n_batches = -(-len(results) // videos_per_batch) if results else 0
    stage_tasks = len(VIDEO_STAGE_TASKS) * sum(min(max_workers or DEFAULT_SLICES, len(b))
                                               for b in split([r.video_id for r in results], videos_per_batch))
    result.update({
        "card": card_path,
        "batches": n_batches,
        # Task runs this run made (acquisition, a task per stage and batch chain, the
        # batch runs' links, manifests, card): what the server should record (bench/bench_scale.py).
        "task_runs": acquired.task_runs + stage_tasks + n_batches + bool(summary) + bool(card_path),
    })
    logger.info("done: %s", json.dumps(result, default=str))
    return result


if __name__ == "__main__":
    build_tv_dataset()
