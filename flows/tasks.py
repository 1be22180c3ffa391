"""The Prefect tasks of build-tv-dataset, made from the stage registry
(`emotionclip.stages.registry.STAGES`): the stage logic lives in the library, here
only orchestration (names, tags, retries, rate limits, artifacts).

The flow runs the per-video stages in-process, one task per slice of a batch of
videos (`process_video_slice`): each stage goes through `run_stage`, whose stage
markers are the one cache, so an up-to-date stage costs a few file reads and no
task run, and only a model stage that really runs takes a slot of the global
`gpu` concurrency limit. Per video and stage the outcome (ran / cached / failed,
with the reason) is returned and shown as a table artifact. At 3,613 videos a
task run per stage (25,000 in all) was more than the server could record, and
each cached model stage waited seconds for its tag-limit slot (bench/bench_scale.py).
`video_stage_task` still makes one Prefect task of one stage (ad hoc runs; its
up-to-date result is a `Cached` state built from the marker). Network stages
(search, download) retry only what `is_transient_error` calls transient, under
the global YouTube rate limit.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import time
from typing import Any, ContextManager, Optional

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.artifacts import create_markdown_artifact
from prefect.concurrency.sync import concurrency, rate_limit
from prefect.states import Completed, State
from prefect.tasks import exponential_backoff

from emotionclip.core.catalog import Catalog
from emotionclip.core.errors import StageError
from emotionclip.stages.download import LocalImport, is_transient_error
from emotionclip.stages.registry import STAGES, VIDEO_STAGES, run_stage

GPU_TAG = "gpu"  # the tag of `video_stage_task`'s model stages (a tag limit caps them)
# Global concurrency limit taken only around a model stage that runs (not its
# up-to-date check): `prefect gcl update gpu --limit N`. Created by `deployments/local.py setup`.
GPU_LIMIT = "gpu"
# Global concurrency limit with slot decay, shared by every run and worker: YouTube
# throttles by IP. Created by `deployments/local.py setup`.
YOUTUBE_RATE_LIMIT = "youtube-requests"
NETWORK_RETRIES = 3


def retry_if_transient(task: Task, task_run: Any, state: State) -> bool:
    """Prefect's retry condition for the network stages: the stage's own classifier."""
    try:
        state.result()
    except BaseException as e:  # the failed state's exception
        return is_transient_error(e)
    return False


def _network_task(name: str, **kwargs: Any):
    if not STAGES[name].network:  # the registry says which stages talk to YouTube
        raise ValueError(f"stage {name!r} is not a network stage in the registry")
    return task(name=name, description=STAGES[name].help, tags=["network", "youtube"], cache_policy=NO_CACHE,
                retries=NETWORK_RETRIES,
                retry_delay_seconds=exponential_backoff(backoff_factor=10), retry_jitter_factor=0.5,
                retry_condition_fn=retry_if_transient, **kwargs)


def video_stage_task(name: str) -> Task:
    """The Prefect task of a per-video stage: `run_stage(catalog, name, video_id)`;
    an up-to-date stage ends Cached (from its marker), without running."""
    spec = VIDEO_STAGES[name]

    def run(catalog: Catalog, video_id: str) -> Any:
        summary = run_stage(catalog, name, video_id)
        if summary.get("skipped"):
            return Completed(name="Cached", data=summary, message=f"{name} is up to date (stage marker)")
        return summary

    run.__name__ = name
    run.__qualname__ = name
    run.__doc__ = spec.help
    return task(run, name=name, description=spec.help, task_run_name=f"{name}-{{video_id}}",
                tags=[GPU_TAG] if spec.uses_model else [], cache_policy=NO_CACHE,  # the markers are the cache
                retries=0)  # local computation: a retry would fail the same way


# In DAG order; each takes (catalog, video_id).
PER_VIDEO_TASKS: list[Task] = [video_stage_task(name) for name in VIDEO_STAGES]


@functools.lru_cache(maxsize=None)
def _limit_exists(name: str) -> bool:
    """Whether the server has the global concurrency limit `name` (asked once per
    process): a run against a server without it (a test's, an ad hoc one) runs
    its model stages unthrottled instead of warning at every stage."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            return False
    return True


@functools.lru_cache(maxsize=None)
def _has_gpu() -> bool:
    from emotionclip.zoo.loaders import default_device

    return default_device() == "cuda"


def gpu_slot() -> ContextManager[Any]:
    """One slot of the global `gpu` limit, for a model stage that really runs on
    this machine's GPU. None on a machine without one (nothing to share; a slot
    costs two API calls) or against a server without the limit."""
    if not _has_gpu() or not _limit_exists(GPU_LIMIT):
        return contextlib.nullcontext()
    return concurrency(GPU_LIMIT, occupy=1, strict=False)


def run_video_stages(catalog: Catalog, video_id: str) -> dict[str, Any]:
    """Every per-video stage of `video_id` in order, in this process; stops at the
    first failure. Returns {video_id, ok, stages: {stage: summary} of the stages
    done, outcomes: {stage: {outcome: ran|cached|failed, seconds, reason}}, and on
    failure stage, error, transient}."""
    done: dict[str, Any] = {}
    outcomes: dict[str, dict[str, Any]] = {}
    for name, spec in VIDEO_STAGES.items():
        t0 = time.perf_counter()
        try:
            # The slot per stage, inside run_stage's (video, stage) lock: a slot is never held
            # while waiting for a lock, so two runs on the same videos cannot deadlock.
            summary = run_stage(catalog, name, video_id, run_slot=gpu_slot if spec.uses_model else None)
        except Exception as e:  # StageError names stage and video; keep the others going
            stage = e.stage if isinstance(e, StageError) else name
            outcomes[stage] = {"outcome": "failed", "seconds": round(time.perf_counter() - t0, 3), "reason": str(e)}
            return {"video_id": video_id, "ok": False, "stage": stage, "error": str(e),
                    "transient": is_transient_stage_failure(e), "stages": done, "outcomes": outcomes}
        done[name] = summary
        outcomes[name] = {"outcome": "cached" if summary.get("skipped") else "ran",
                          "seconds": round(time.perf_counter() - t0, 3),
                          "reason": summary.get("rerun_reason", "")}
    return {"video_id": video_id, "ok": True, "stages": done, "outcomes": outcomes}


@task(name="process-videos-slice", task_run_name="{slice_name}", cache_policy=NO_CACHE,
      retries=0)  # local computation: a retry would fail the same way; failures are per video
def process_video_slice(catalog: Catalog, video_ids: list[str], slice_name: str = "slice") -> list[dict[str, Any]]:
    """The per-video chain (`run_video_stages`) over a slice of a batch's videos."""
    return [run_video_stages(catalog, vid) for vid in video_ids]


def _youtube_slot() -> None:
    """Take one slot of the global YouTube budget (all runs and workers share it)."""
    rate_limit(YOUTUBE_RATE_LIMIT, strict=False)


@_network_task("search")
def search(catalog: Catalog, known: Optional[set[str]] = None) -> list[dict]:
    """`known`: ids the video registry says not to fetch again (done, excluded, given
    up on); dropped before any metadata request is made for them."""
    _youtube_slot()  # the search requests themselves; each metadata probe takes its own slot
    return STAGES["search"].run(catalog, throttle=_youtube_slot, known=set(known or ())).to_dict("records")


@_network_task("download", task_run_name="download-{video_id}{url}")
def download(catalog: Catalog, video_id: str = "", url: str = "") -> dict:
    if video_id:
        _youtube_slot()
    return STAGES["download"].run(catalog, video_id=video_id or None, url=url or None)


def download_task(catalog: Catalog) -> Task:
    """`download` with the catalog's in-run retry policy (`stages.download.task_retries`,
    backoff from `task_retry_delay_s`); later runs retry what is still failing."""
    params = catalog.stages.download
    delays = exponential_backoff(backoff_factor=params.task_retry_delay_s)(params.task_retries) \
        if params.task_retries else 0
    return download.with_options(retries=params.task_retries, retry_delay_seconds=delays)


def is_transient_stage_failure(exc: BaseException) -> bool:
    """Whether a per-video stage failure may heal by itself: a network error (the
    download classifier), a timeout, memory or disk running out. Anything else (bad
    input, a bug, a missing model) is permanent: retrying would fail the same way."""
    import errno

    seen: set[int] = set()
    cur: Optional[BaseException] = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if is_transient_error(cur) or isinstance(cur, (TimeoutError, MemoryError)) \
                or type(cur).__name__ == "OutOfMemoryError" \
                or (isinstance(cur, OSError) and cur.errno in (errno.ENOSPC, errno.ENOMEM, errno.EDQUOT)):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


@task(name="import-local-folder", cache_policy=NO_CACHE)
def import_local_folder(catalog: Catalog, folder: str) -> LocalImport:
    """Import a local folder of videos with caption files (the `folder`/`sample` sources)."""
    from emotionclip.stages.download import import_local_folder as _import

    return _import(catalog, folder)


@task(name="manifests", description=STAGES["manifests"].help, cache_policy=NO_CACHE)
def manifests(catalog: Catalog, video_ids: list[str], failures: list[dict], force: bool = False) -> dict:
    """`video_ids`: every done video (`done_video_ids`); a build that shrinks the
    current generation too much fails the task (ManifestShrinkError) unless `force`."""
    now = dt.datetime.now(dt.timezone.utc).isoformat()
    return STAGES["manifests"].run(catalog, video_ids, [{"time": now, **f} for f in failures], force=force)


@task(name="dataset-card", description=STAGES["card"].help, cache_policy=NO_CACHE)
def dataset_card(catalog: Catalog, summary: dict) -> str:
    """Write the dataset card and publish it as a markdown artifact; returns its path."""
    card = STAGES["card"].run(catalog, counts=summary)
    # The UI form: the plots embedded as data URIs (the UI cannot reach the card's plots/ folder).
    create_markdown_artifact(markdown=card.ui_markdown, key="dataset-card", description="build-tv-dataset dataset card")
    return str(card.path)


# Every stage's task, by stage name (tests check it covers the registry).
TASKS: dict[str, Task] = {**{t.name: t for t in PER_VIDEO_TASKS}, "search": search, "download": download,
                          "manifests": manifests, "card": dataset_card}
