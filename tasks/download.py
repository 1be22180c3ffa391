"""Prefect tasks for the download stage (logic: emotionclip.stages.download)."""

from __future__ import annotations

import re

from prefect import task
from prefect.concurrency.sync import rate_limit
from prefect.tasks import exponential_backoff

from emotionclip.core.catalog import Catalog

# Global concurrency limit with slot decay, shared by every run and worker:
# YouTube throttles by IP. Created by `deployments/local.py setup`.
YOUTUBE_RATE_LIMIT = "youtube-requests"
_TRANSIENT = re.compile(r"\b(429|5\d\d)\b|timed? ?out|temporar|connection (reset|refused|aborted)", re.I)


def is_transient(task, task_run, state) -> bool:
    """Retry only what a retry can fix (throttling, server errors, timeouts), not a 404."""
    try:
        state.result()
    except Exception as e:  # the failed state's exception
        return bool(_TRANSIENT.search(str(e)))
    return False


@task(name="download", task_run_name="download-{video_id}{url}", tags=["network", "youtube"], retries=3,
      retry_delay_seconds=exponential_backoff(backoff_factor=10), retry_jitter_factor=0.5,
      retry_condition_fn=is_transient)
def download(catalog: Catalog, video_id: str = "", url: str = "") -> dict:
    """Download one video (a YouTube id or any URL yt-dlp supports) with English captions."""
    from emotionclip.stages.download import run_download

    if video_id:
        rate_limit(YOUTUBE_RATE_LIMIT, strict=False)
    return run_download(catalog, video_id=video_id or None, url=url or None)


@task(name="import-local-folder")
def import_local_folder(catalog: Catalog, folder: str) -> tuple[list[str], list[dict]]:
    """Import a local folder of videos with caption files; returns the video ids
    imported and the failures (videos that could not be imported, with why)."""
    from emotionclip.stages.download import import_local_folder as _import

    failures: list[dict] = []
    return _import(catalog, folder, failures=failures), failures
