"""The Prefect tasks of build-tv-dataset, made from the stage registry
(`emotionclip.stages.registry.STAGES`): the stage logic lives in the library,
here only orchestration (names, retries, limits, artifacts).

- One task per per-video stage (words, frames, sentences, sentiment, humans,
  clips), each run over a batch of videos (stage-major): it takes the batch, and
  the outcomes of the stages that gate it (`chain.gates`: its task run's upstream
  edges in the UI graph), runs the videos that passed them through
  `chain.run_stage_over` (the same function `emotionclip stage` calls) and
  returns one outcome per video (ran / cached / failed with the reason). A failed
  video drops out of the later stages; the batch goes on. The stage markers are
  the one cache, so an up-to-date stage costs a few file reads and takes no GPU
  slot; a model stage takes a slot of the global `gpu` limit only while it runs
  (`tasks.limits.gpu_slot`), and its model loads once per process.
- search and download talk to YouTube: Prefect retries what the library's one
  classifier (`is_transient_error`) calls transient, under the global YouTube
  rate limit. import, manifests and card are one task each per run.

Task runs grow with batches x stages (about 600 at 3,613 videos), never with
videos x stages (25,000: more than the server's event broker kept up with).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Optional, Sequence

from prefect import Task, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, State
from prefect.tasks import exponential_backoff

from emotionclip.core.catalog import Catalog
from emotionclip.stages.chain import StageOutcome, passed, run_stage_over
from emotionclip.stages.download import LocalImport, is_transient_error
from emotionclip.stages.registry import STAGES, VIDEO_STAGES
from tasks.limits import gpu_slot, youtube_slot

NETWORK_RETRIES = 3


def retry_if_transient(task: Task, task_run: Any, state: State) -> bool:
    """Prefect's retry condition for the network stages: the library's classifier."""
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


def _video_stage_task(name: str) -> Task:
    """The task of per-video stage `name` over a batch of videos."""
    spec = VIDEO_STAGES[name]

    def run(catalog: Catalog, video_ids: list[str], upstream: Sequence[list[StageOutcome]] = (),
            batch: str = "batch") -> list[StageOutcome] | State:
        todo = passed(video_ids, upstream)
        outcomes = run_stage_over(catalog, name, todo, run_slot=gpu_slot if spec.uses_model else None)
        logger = get_run_logger()
        for o in outcomes:
            if not o.ok:
                logger.warning("video %s FAILED at %s: %s", o.video_id, o.stage, o.reason)
        counts = {k: sum(o.outcome == k for o in outcomes) for k in ("ran", "cached", "failed")}
        logger.info("%s %s: %d videos (%d dropped out earlier): ran %d, cached %d, failed %d", name, batch,
                    len(todo), len(video_ids) - len(todo), counts["ran"], counts["cached"], counts["failed"])
        if outcomes and counts["cached"] == len(outcomes):  # the UI shows a fully up-to-date stage as Cached
            return Completed(name="Cached", data=outcomes, message=f"{name}: every video up to date (stage markers)")
        return outcomes

    run.__name__ = run.__qualname__ = name
    run.__doc__ = spec.help
    return task(run, name=name, description=spec.help, task_run_name=f"{name}-{{batch}}",
                tags=["model"] if spec.uses_model else [], cache_policy=NO_CACHE,  # the markers are the cache
                retries=0)  # local computation: a retry would fail the same way; failures are per video


# In DAG order; each takes (catalog, video_ids, upstream outcomes, batch name).
VIDEO_STAGE_TASKS: dict[str, Task] = {name: _video_stage_task(name) for name in VIDEO_STAGES}


@_network_task("search")
def search(catalog: Catalog, known: Optional[set[str]] = None) -> list[dict]:
    """`known`: ids the video registry says not to fetch again (done, excluded, given
    up on); dropped before any metadata request is made for them."""
    youtube_slot()  # the search requests themselves; each metadata probe takes its own slot
    return STAGES["search"].run(catalog, throttle=youtube_slot, known=set(known or ())).to_dict("records")


@_network_task("download", task_run_name="download-{video_id}{url}")
def download(catalog: Catalog, video_id: str = "", url: str = "") -> dict:
    if video_id:
        youtube_slot()
    return STAGES["download"].run(catalog, video_id=video_id or None, url=url or None)


def download_task(catalog: Catalog) -> Task:
    """`download` with the catalog's in-run retry policy (`stages.download.task_retries`,
    backoff from `task_retry_delay_s`); later runs retry what is still failing."""
    params = catalog.stages.download
    delays = exponential_backoff(backoff_factor=params.task_retry_delay_s)(params.task_retries) \
        if params.task_retries else 0
    return download.with_options(retries=params.task_retries, retry_delay_seconds=delays)


@task(name="import", description="Import a local folder of videos with caption files (sources folder and sample).",
      cache_policy=NO_CACHE)
def import_folder(catalog: Catalog, folder: str) -> LocalImport:
    from emotionclip.stages.download import import_local_folder

    return import_local_folder(catalog, folder)


@task(name="manifests", description=STAGES["manifests"].help, cache_policy=NO_CACHE)
def manifests(catalog: Catalog, video_ids: list[str], failures: list[dict], force: bool = False) -> dict:
    """`video_ids`: every done video (`done_video_ids`); a build that shrinks the
    current generation too much fails the task (ManifestShrinkError) unless `force`."""
    now = dt.datetime.now(dt.timezone.utc).isoformat()
    return STAGES["manifests"].run(catalog, video_ids, [{"time": now, **f} for f in failures], force=force)


@task(name="card", description=STAGES["card"].help, cache_policy=NO_CACHE)
def card(catalog: Catalog, summary: dict) -> str:
    """Write the dataset card and publish it as the `dataset-card` markdown artifact; returns its path."""
    written = STAGES["card"].run(catalog, counts=summary)
    # The UI form: the plots embedded as data URIs (the UI cannot reach the card's plots/ folder).
    create_markdown_artifact(markdown=written.ui_markdown, key="dataset-card",
                             description="build-tv-dataset dataset card")
    return str(written.path)


# Every stage's task, by stage name (tests check it covers the registry), and import.
TASKS: dict[str, Task] = {**VIDEO_STAGE_TASKS, "search": search, "download": download, "import": import_folder,
                          "manifests": manifests, "card": card}
