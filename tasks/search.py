"""Prefect task for the search stage (logic: emotionclip.stages.search)."""

from __future__ import annotations

from prefect import task
from prefect.concurrency.sync import rate_limit
from prefect.tasks import exponential_backoff

from emotionclip.core.catalog import Catalog
from tasks.download import YOUTUBE_RATE_LIMIT, is_transient


@task(name="search", tags=["network", "youtube"], retries=3,
      retry_delay_seconds=exponential_backoff(backoff_factor=10), retry_jitter_factor=0.5,
      retry_condition_fn=is_transient)
def search(catalog: Catalog) -> list[dict]:
    """Search YouTube with the catalog's queries and filters; returns the candidates."""
    from emotionclip.stages.search import run_search

    rate_limit(YOUTUBE_RATE_LIMIT, strict=False)
    return run_search(catalog).to_dict("records")
