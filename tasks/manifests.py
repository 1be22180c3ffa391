"""Prefect task for filter + manifests (logic: emotionclip.stages.manifests.build_manifests)."""

from __future__ import annotations

import datetime as dt

from prefect import task

from emotionclip.core.catalog import Catalog


@task(name="manifests")
def manifests(catalog: Catalog, video_ids: list[str], failures: list[dict]) -> dict:
    """Filter every video's clips and write the manifests, rejected and failures, once, atomically."""
    from emotionclip.stages.manifests import build_manifests

    now = dt.datetime.now(dt.timezone.utc).isoformat()
    failures = [{"time": now, **f} for f in failures]
    return build_manifests(catalog, video_ids, failures)
