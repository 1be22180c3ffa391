"""The two limits every run and worker shares, as global concurrency limits on the
Prefect server (created by `deployments.definitions.ensure_limits`):

- `gpu`: the one GPU throttle. A slot is taken only around a model stage that
  really runs on this machine's GPU (never around an up-to-date check: a cached
  stage costs nothing); `prefect gcl update gpu --limit N` for N model stages at once.
- `youtube-requests`: YouTube throttles by IP, so search and download requests of
  every run share one budget (slot decay: a rate, not a count).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, ContextManager

from prefect.concurrency.sync import concurrency, rate_limit

GPU_LIMIT = "gpu"
YOUTUBE_RATE_LIMIT = "youtube-requests"


@functools.lru_cache(maxsize=None)
def _limit_exists(name: str) -> bool:
    """Whether the server has the global concurrency limit `name` (asked once per
    process): a run against a server without it (a test's, an ad hoc one) runs
    unthrottled instead of warning at every stage."""
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


def youtube_slot() -> None:
    """Take one slot of the global YouTube budget (all runs and workers share it)."""
    rate_limit(YOUTUBE_RATE_LIMIT, strict=False)
