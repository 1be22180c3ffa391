"""build-tv-dataset: from YouTube (or a URL list, or a local folder) to the Parquet
clip manifests that pre-training reads, growing one dataset run after run.

    registry: adopt an older data root, apply the exclusions
      -> acquire (search -> download | urls -> download | local folder),
         plus the transient failures of earlier runs (up to stages.download.max_attempts)
      -> per video, in batches of videos_per_batch (each a `process-videos` run, inline
         or on any worker): words, frames, sentences, sentiment, humans, clips
      -> filter + manifests over every done video of the registry -> dataset card
      -> a row in the runs table; what this run added as result and artifact

The video registry (`emotionclip.core.video_registry`, docs/design.md section 3)
is the dataset across runs: a scheduled run searches past what is done, excluded or
given up on, and the manifests hold every done video, not just this run's. Registry
writes are batched, one per phase. Work is mapped per batch of videos, never per
frame or per stage: a batch run loops its videos' stages in-process (a stage found
up to date costs a few file reads), which keeps a 3,613-video run to ~150 task
runs that the server records in full (bench/bench_scale.py). A video that fails at
a stage is recorded (registry, `failures`, its batch's outcome table) and the
others go on; the flow still completes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

from emotionclip.core import io
from emotionclip.core.catalog import Catalog, check_data_root, load_catalog
from emotionclip.core.exclusions import load_exclusions
from emotionclip.core.video_registry import VideoRegistry, kept_clips_per_video, now_iso, summarize, url_key
from emotionclip.stages.download import is_transient_error
from emotionclip.stages.growth import (
    adopt_data_root, clips_now, growth_table, info_record, manifests_lock, record_results, videos_to_process,
)
from emotionclip.stages.registry import VIDEO_STAGES
from flows.tasks import dataset_card, download_task, import_local_folder, manifests, process_video_slice, search

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


# -- the per-video work, in batches ----------------------------------------------------
BatchRuns = Literal["inline", "deployment"]
# 3,613 videos -> 73 batches: few enough runs for the server and the UI, small
# enough that a failed batch run retries little work.
VIDEOS_PER_BATCH = 50
# Tasks per batch when max_workers is not given: one, since the model stages and
# ffmpeg already use every core (parallel videos only contended for them; bench/bench_scale.py).
DEFAULT_SLICES = 1
BATCH_DEPLOYMENT = "process-videos/batch"
BATCH_RETRIES = 2  # a batch run (a lost worker, a full disk) retries by itself; its cached stages cost little


def batch_name(i: int, n: int) -> str:
    """The run name of batch i (0-based) of n: batch-0001-of-0073."""
    return f"batch-{i + 1:04d}-of-{n:04d}"


def split(items: list[str], size: int) -> list[list[str]]:
    """Consecutive chunks of at most `size` items."""
    if size < 1:
        raise ValueError(f"videos_per_batch must be >= 1, got {size}")
    return [items[i:i + size] for i in range(0, len(items), size)]


def _slices(items: list[str], k: int) -> list[list[str]]:
    """`items` in at most k near-equal consecutive parts (none empty)."""
    k = max(1, min(k, len(items)))
    q, r = divmod(len(items), k)
    out, i = [], 0
    for j in range(k):
        n = q + (1 if j < r else 0)
        out.append(items[i:i + n])
        i += n
    return out


def _outcome_table(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per video: each stage's outcome (ran 1.2 s / cached / failed), the error."""
    rows = []
    for r in results:
        row: dict[str, Any] = {"video_id": r["video_id"]}
        for stage in VIDEO_STAGES:
            o = r.get("outcomes", {}).get(stage)
            row[stage] = "" if o is None else o["outcome"] if o["outcome"] == "cached" else \
                f"{o['outcome']} {o['seconds']:.1f} s"
        row["error"] = r.get("error", "")
        rows.append(row)
    return rows


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
    """One batch of build-tv-dataset's videos: the per-video stages of each video,
    in-process, in `slices` tasks (default 1). A stage found up to date costs a few
    file reads and takes no GPU slot. Returns one record per video ({video_id, ok,
    stages, outcomes: each stage ran / cached / failed, stage, error, transient on
    failure}), also written to `results_path` when given (the parent run reads it
    there when the batch ran on a worker), and shown as a table artifact.

    Args:
        video_ids: The batch's videos (already downloaded or imported into the data root);
            the parent run fills them in.
        batch_name: The run's name, e.g. batch-0001-of-0073.
        profile: Model profile of the catalog (as the parent's).
        catalog_path: Catalog file (as the parent's).
        data_root: Data root (as the parent's).
        overrides: Catalog overrides (as the parent's).
        slices: Tasks the batch is split into (parallel on the flow's task runner);
            default 1.
        results_path: Where to write the results (JSON) for the parent run.
    """
    logger = get_run_logger()
    catalog = load_catalog(catalog_path, profile=profile, data_root=data_root, overrides=overrides)
    parts = _slices(list(video_ids or []), slices or DEFAULT_SLICES) if video_ids else []
    futures = [process_video_slice.submit(catalog, part, f"{batch_name}-part-{j + 1}-of-{len(parts)}")
               for j, part in enumerate(parts)]
    results: list[dict[str, Any]] = []
    for part, fut in zip(parts, futures):
        try:
            results += fut.result()
        except Exception as e:  # the slice's process died (a crash, out of memory): its videos failed
            results += [{"video_id": v, "ok": False, "stage": "process-videos", "error": f"{type(e).__name__}: {e}",
                         "transient": True, "stages": {}, "outcomes": {}} for v in part]
    results.sort(key=lambda r: r["video_id"])
    counts = {o: sum(1 for r in results for x in r.get("outcomes", {}).values() if x["outcome"] == o)
              for o in ("ran", "cached", "failed")}
    for r in results:
        if not r["ok"]:
            logger.warning("video %s FAILED at %s: %s", r["video_id"], r["stage"], r["error"])
    logger.info("%s: %d videos, %d ok; stages ran %d, cached %d, failed %d", batch_name, len(results),
                sum(r["ok"] for r in results), counts["ran"], counts["cached"], counts["failed"])
    if results:
        create_table_artifact(table=_outcome_table(results),
                              description=f"{batch_name}: per video, each stage's outcome (ran with its "
                                          "seconds / cached: up to date from its stage marker / failed)")
    if results_path:
        io.atomic_write_json(results_path, results)
    return results


def _failed_batch(video_ids: list[str], name: str, why: str) -> list[dict[str, Any]]:
    """The records of a batch that never reported: its videos failed (transient: the
    next run finds the stages it finished up to date and retries the rest)."""
    return [{"video_id": v, "ok": False, "stage": "process-videos", "error": f"batch run {name} {why}",
             "transient": True, "stages": {}, "outcomes": {}} for v in video_ids]


def _wait_for_flow_runs(ids: list[Any], poll_s: float = 2.0) -> dict[Any, Any]:
    """Block until every flow run in `ids` is final (a retrying one is not); their states."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    logger = get_run_logger()
    states: dict[Any, Any] = {}
    last_log = 0.0
    with get_client(sync_client=True) as client:
        while True:
            pending = [i for i in ids if i not in states]
            for k in range(0, len(pending), 200):
                for fr in client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=pending[k:k + 200]))):
                    if fr.state is not None and fr.state.is_final():
                        states[fr.id] = fr.state
            if len(states) == len(ids):
                return states
            if time.monotonic() - last_log > 60:
                logger.info("waiting for batch runs: %d of %d finished", len(states), len(ids))
                last_log = time.monotonic()
            time.sleep(poll_s)


def _process(catalog: Catalog, video_ids: list[str], spec: dict[str, Any], *, run_id: str, videos_per_batch: int,
             batch_runs: BatchRuns, task_runner: Optional[RunnerKind], max_workers: Optional[int],
             dask_address: Optional[str]) -> tuple[list[dict[str, Any]], int]:
    """The per-video work of a run, batch by batch: inline (each batch a subflow of
    this run, on the chosen task runner) or as runs of the `process-videos/batch`
    deployment that any worker of the pool picks up. Returns the per-video records
    and how many task runs this took (each slice one; each batch run one more: the
    parent's link to its subflow or deployment run)."""
    logger = get_run_logger()
    batches = split(video_ids, videos_per_batch)
    names = [batch_name(i, len(batches)) for i in range(len(batches))]
    slices = max_workers or DEFAULT_SLICES
    n_tasks = sum(min(slices, len(b)) for b in batches)
    if not batches:
        return [], 0
    progress_id = create_progress_artifact(progress=0.0, description="batches of videos processed (%)")
    results: list[dict[str, Any]] = []
    if batch_runs == "inline":
        for i, (name, batch) in enumerate(zip(names, batches), start=1):
            runner = make_task_runner(task_runner or "threads", max_workers, dask_address)
            state = process_videos.with_options(task_runner=runner)(
                batch, batch_name=name, slices=slices, return_state=True, **spec)
            try:
                results += state.result()
            except Exception as e:  # failed after its retries: recorded, the other batches go on
                results += _failed_batch(batch, name, f"failed: {e}")
            update_progress_artifact(progress_id, progress=100.0 * i / len(batches))
        return results, n_tasks + len(batches)
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
    states = _wait_for_flow_runs([r.id for r in runs])
    for i, (name, batch, path, run) in enumerate(zip(names, batches, paths, runs), start=1):
        state = states[run.id]
        if state.is_completed() and io.exists(path):
            results += io.read_json(path)
        else:
            results += _failed_batch(batch, name, f"ended {state.name}: {state.message or ''}".strip())
        update_progress_artifact(progress_id, progress=100.0 * i / len(batches))
    io.remove(paths[0].rsplit("/", 1)[0], recursive=True)  # read: the parent records them
    return results, n_tasks + len(runs)


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
    task_runs: int = 0  # the tasks acquisition ran (import, search, one per download)


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

            # generated locally: on an object-store root it is only the import's source
            default = Path(catalog.root) / "sample_corpus" if io.is_local(catalog.root) \
                else io.local_cache_dir("sample_corpus")
            folder = str(ensure_sample_corpus(folder or default))
        if folder is None:
            raise ValueError("source='folder' needs the `folder` parameter")
        imported = import_local_folder(catalog, folder)
        out.task_runs = 1
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
    out.task_runs = len(jobs) + (source == "youtube")
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
        max_workers: Parallel tasks per batch, each a slice of its videos (threads,
            processes or local Dask workers); default 1: the model stages and ffmpeg
            already use every core.
        dask_address: Address of an existing Dask scheduler (tcp://host:8786) for
            task_runner dask; empty: a local cluster.
        force_manifests: Write the manifests even when they would shrink by more than
            `stages.manifests.max_shrink_fraction`.
        target_videos: Stop growing at this many done videos (a run that finds them does
            nothing but report); empty: no limit.
        retry_failed: Also retry the videos that failed permanently or ran out of attempts
            (`stages.download.max_attempts`).
        videos_per_batch: Videos per batch run (`process-videos`, named batch-0001-of-0073);
            each batch runs its videos' stages in max_workers tasks (default 1), a stage
            found up to date in a few file reads. Default 50.
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

    started, run_id = now_iso(), _run_id()
    batching = {"run_id": run_id, "videos_per_batch": videos_per_batch, "batch_runs": batch_runs,
                "task_runner": task_runner, "max_workers": max_workers, "dask_address": dask_address}
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
    acquired, results, stale, task_runs = Acquired(), [], 0, 0
    if reached:
        logger.info("target_videos=%d reached (%d done): nothing to fetch", target_videos, len(done_before))
        if restored:  # no longer excluded: back in the manifests, target or not
            results, task_runs = _process(catalog, [v for v in restored if io.exists(catalog.artifact("info", v))],
                                          spec, **batching)
            record_results(registry, results, run_id)
    else:
        acquired = _acquire(catalog, registry, source, urls or [], folder, run_id, retry_failed=retry_failed,
                            limit=limit, reason_of=reason_of)
        if max_videos:
            acquired.video_ids = acquired.video_ids[:max_videos]
        video_ids, stale = videos_to_process(catalog, registry, acquired.video_ids, retry_failed=retry_failed, limit=limit)
        logger.info("%d videos to process (%d done ones gone stale), %d failed to download", len(video_ids), stale,
                    len(acquired.failures))
        results, task_runs = _process(catalog, video_ids, spec, **batching)
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
        outcome = [r.get("outcomes", {}) for r in results]
        stage_counts = [
            {"stage": stage, "videos_done": sum(1 for r in results if stage in r["stages"]),
             "skipped_up_to_date": sum(1 for r in results if r["stages"].get(stage, {}).get("skipped")),
             "failed": sum(1 for o in outcome if o.get(stage, {}).get("outcome") == "failed")}
            for stage in VIDEO_STAGES
        ]
        create_table_artifact(table=stage_counts, key="build-tv-dataset-stages",
                              description="Per-stage counts (per video: each batch run's table)")
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
        # Task runs this run made (acquisition, batch slices, manifests, card): what the
        # server should record (bench/bench_scale.py checks it did).
        "task_runs": acquired.task_runs + task_runs + bool(summary) + bool(card_path),
        "batches": -(-len(results) // videos_per_batch) if results else 0,
    }
    logger.info("done: %s", json.dumps(result, default=str))
    return result


if __name__ == "__main__":
    build_tv_dataset()
