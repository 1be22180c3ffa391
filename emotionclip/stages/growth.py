"""How a build run grows the dataset, on the registry's side (no Prefect here: the
build-tv-dataset flow composes these): adopting a data root built before the
registry, which videos a run processes, recording their outcomes in one write,
the manifests lock, and the run's growth table (docs/design.md section 3)."""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, Optional

from emotionclip.core import io
from emotionclip.core.catalog import Catalog
from emotionclip.core.manifest_store import MANIFEST_FILE, manifest_info
from emotionclip.core.video_registry import VideoRegistry
from emotionclip.stages.registry import VIDEO_STAGES, is_up_to_date, list_video_ids


def info_record(catalog: Catalog, video_id: str, **extra: Any) -> dict[str, Any]:
    """A registry record from the video's info.json (written by download or import)."""
    try:
        info = io.read_json(catalog.artifact("info", video_id))
    except (OSError, ValueError):
        info = {}
    return {"video_id": video_id, "title": info.get("title"), "channel": info.get("channel"),
            "url": info.get("url"), "source": info.get("source") or None, **extra}


def stage_states(catalog: Catalog, video_id: str) -> dict[str, str]:
    """{stage: "done" | "pending"} from the stage markers (for adopting a data root)."""
    return {s: "done" if is_up_to_date(catalog, s, video_id) else "pending" for s in VIDEO_STAGES}


def adopt_data_root(catalog: Catalog, registry: VideoRegistry) -> list[str]:
    """Register the videos of a data root built before the registry existed (once:
    only while there is no registry file). Returns the adopted ids."""
    if registry.exists():
        return []
    ids = list_video_ids(catalog)
    if not ids:
        return []
    return registry.adopt(ids, lambda v: io.read_json(catalog.artifact("info", v)),
                          lambda v: stage_states(catalog, v))


@contextlib.contextmanager
def manifests_lock(catalog: Catalog) -> Iterator[None]:
    """One manifests build (and card) at a time per local data root. The build reads
    the registry's done ids inside the lock, so of two concurrent runs the one that
    builds last sees both runs' videos, and each card matches the manifests it
    describes."""
    path = catalog.artifact("video_registry") + ".manifests.lock"
    if not io.is_local(path):
        yield
        return
    from filelock import FileLock

    with FileLock(path):
        yield


def clips_now(catalog: Catalog) -> int:
    out = catalog.artifact("manifests")
    if not io.exists(f"{out}/{MANIFEST_FILE}"):
        return 0
    try:
        return int(manifest_info(out).get("n_clips") or 0)
    except (OSError, ValueError):
        return 0


def videos_to_process(catalog: Catalog, registry: VideoRegistry, acquired: list[str], *, retry_failed: bool,
                limit: Optional[int]) -> tuple[list[str], int]:
    """The videos to run the per-video chain on, and how many were done videos whose
    clips are no longer up to date: this run's videos; earlier per-video failures that
    may heal; done videos gone stale (a changed parameter). Not: excluded videos, and
    per-video failures that are permanent or out of attempts (unless `retry_failed`);
    a download failure healed by this run's import is processed; pending videos on disk are."""
    max_attempts = catalog.stages.download.max_attempts
    rows = registry.read().set_index("video_id", drop=False)
    skip = registry.skip_ids(max_attempts, retry_failed)
    retry = [v for v in registry.retry_ids(max_attempts, retry_failed)
             if rows.loc[v, "failed_stage"] != "download" and io.exists(catalog.artifact("info", v))]
    # Pending videos already on disk: a killed run's, one back from an exclusion, one a
    # target_videos limit held back; processing converges on them.
    pending = [v for v in rows.index[rows["status"] == "pending"] if io.exists(catalog.artifact("info", v))]
    this_run = set(acquired)
    done = [v for v in registry.done_ids() if v not in this_run]
    # A few small reads per video (0.6 ms locally, ~2 s at 3,613 videos); threads overlap
    # their latency on an object store.
    with ThreadPoolExecutor(max_workers=8) as pool:
        fresh = list(pool.map(lambda v: is_up_to_date(catalog, "clips", v), done))
    stale = [v for v, ok in zip(done, fresh) if not ok]
    todo, new = [], 0
    for vid in dict.fromkeys([*acquired, *retry, *pending, *stale]):
        row = rows.loc[vid] if vid in rows.index else None
        if row is not None and row["status"] == "excluded":
            continue
        if row is not None and row["status"] == "failed" and row["failed_stage"] != "download" and vid in skip:
            continue
        if row is None or row["status"] != "done":
            if limit is not None and new >= limit:  # target_videos: the rest stays pending
                continue
            new += 1
        todo.append(vid)
    return todo, len(stale)


def record_results(registry: VideoRegistry, results: list[dict[str, Any]], run_id: str) -> None:
    """The per-video outcomes, in one registry write."""
    with registry.batch() as b:
        for r in results:
            states = {s: "done" for s in r["stages"]}
            if r["ok"]:
                b.mark_done(r["video_id"], run_id, states)
            else:
                b.mark_failed(r["video_id"], r["stage"], r["error"], r["transient"], run_id, stages=states)


def growth_table(before: dict[str, Any], after: dict[str, Any], videos_added: int, clips_added: int) -> list[dict]:
    """The artifact: per status, the videos now, the change in this run, and why."""
    reasons = {"failed": after["failed_reasons"], "excluded": after["excluded_reasons"]}
    table = [{"status": s, "videos": after[s], "change": after[s] - before[s],
              "reasons": "; ".join(f"{r}: {n}" for r, n in reasons.get(s, {}).items())}
             for s in ("done", "failed", "excluded", "pending")]
    table.append({"status": "clips (kept)", "videos": after["clips"], "change": clips_added, "reasons": ""})
    table.append({"status": "videos added by this run", "videos": videos_added, "change": videos_added, "reasons": ""})
    return table
