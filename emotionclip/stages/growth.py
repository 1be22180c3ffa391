"""How a build run grows the dataset, on the registry's side (no Prefect here: the
build-tv-dataset flow composes these): adopting a data root built before the
registry, which videos a run processes, recording their outcomes in one write,
the manifests lock, and the run's growth table (docs/design.md section 3)."""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

from emotionclip.core import io
from emotionclip.core.catalog import Catalog
from emotionclip.core.manifest_store import MANIFEST_FILE, manifest_info
from emotionclip.core.video_registry import VideoRegistry, kept_clips_per_video
from emotionclip.stages.registry import VIDEO_STAGES, is_up_to_date, list_video_ids

if TYPE_CHECKING:
    from emotionclip.stages.chain import VideoResult


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


def record_results(registry: VideoRegistry, results: list["VideoResult"], run_id: str) -> None:
    """The per-video outcomes of the chain (`chain.VideoResult`), in one registry write."""
    with registry.batch() as b:
        for r in results:
            states = {s: "done" for s in r.done_stages()}
            if r.ok:
                b.mark_done(r.video_id, run_id, states)
            else:
                b.mark_failed(r.video_id, r.stage or "process-videos", r.error or "did not finish every stage",
                              r.transient, run_id, stages=states)


def growth_table(before: dict[str, Any], after: dict[str, Any], videos_added: int, clips_added: int) -> list[dict]:
    """The artifact: per status, the videos now, the change in this run, and why."""
    reasons = {"failed": after["failed_reasons"], "excluded": after["excluded_reasons"]}
    table = [{"status": s, "videos": after[s], "change": after[s] - before[s],
              "reasons": "; ".join(f"{r}: {n}" for r, n in reasons.get(s, {}).items())}
             for s in ("done", "failed", "excluded", "pending")]
    table.append({"status": "clips (kept)", "videos": after["clips"], "change": clips_added, "reasons": ""})
    table.append({"status": "videos added by this run", "videos": videos_added, "change": videos_added, "reasons": ""})
    return table


# -- a run's bookkeeping ---------------------------------------------------------------
@dataclass
class RunStart:
    """The dataset as a build run found it (after adopting an older data root and
    applying the exclusion rules added or deleted since the last run)."""

    run_id: str
    started: str
    adopted: list[str]
    before: dict[str, Any]
    done_before: set[str]
    clips_before: int
    newly_excluded: list[str]
    restored: list[str]
    reason_of: Callable[[str, Optional[str]], Optional[str]]


def start_run(catalog: Catalog, registry: VideoRegistry, run_id: str) -> RunStart:
    from emotionclip.core.exclusions import load_exclusions
    from emotionclip.core.video_registry import now_iso

    started = now_iso()
    adopted = adopt_data_root(catalog, registry)
    before = registry.counts()
    reason_of = load_exclusions(catalog).reason
    with registry.batch() as b:
        newly_excluded, restored = b.apply_exclusions(reason_of)
    df = registry.read()
    return RunStart(run_id, started, adopted, before, set(df.loc[df["status"] == "done", "video_id"]),
                    clips_now(catalog), list(newly_excluded), list(restored), reason_of)


def restored_on_disk(catalog: Catalog, start: RunStart) -> list[str]:
    """Videos no longer excluded whose downloads are still there: back in the manifests."""
    return [v for v in start.restored if io.exists(catalog.artifact("info", v))]


def record_manifests(catalog: Catalog, registry: VideoRegistry) -> None:
    """Each done video's kept clips, from the manifests just written (one registry write)."""
    per_video = kept_clips_per_video(catalog.artifact("manifests"))
    with registry.batch() as b:
        b.set_clips(per_video)


def stage_counts(results: list["VideoResult"]) -> list[dict[str, Any]]:
    """Per stage: videos that reached it, found it up to date, failed there."""
    return [{"stage": stage,
             "videos_done": sum(1 for r in results if stage in r.outcomes and r.outcomes[stage].ok),
             "skipped_up_to_date": sum(1 for r in results if stage in r.outcomes and
                                       r.outcomes[stage].outcome == "cached"),
             "failed": sum(1 for r in results if stage in r.outcomes and not r.outcomes[stage].ok)}
            for stage in VIDEO_STAGES]


def finish_run(catalog: Catalog, registry: VideoRegistry, start: RunStart, *, source: str, acquired: Any,
               results: list["VideoResult"], stale: int, manifests_summary: dict[str, Any],
               target_videos: Optional[int]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Append the run's row to the runs table; returns the run's result (what the flow
    returns and logs) and its growth table (the artifact). `acquired`: the run's
    `acquisition.Acquired`."""
    from emotionclip.core.video_registry import now_iso, summarize

    after_df = registry.read()
    after = summarize(after_df)
    clips_total = clips_now(catalog)
    videos_added = int(((after_df["status"] == "done") & ~after_df["video_id"].isin(start.done_before)).sum())
    clips_added = clips_total - start.clips_before
    registry.append_run({
        "run_id": start.run_id, "started": start.started, "finished": now_iso(), "source": source,
        "videos_added": videos_added, "videos_done": after["done"], "videos_failed": after["failed"],
        "videos_excluded": after["excluded"], "clips_added": clips_added, "clips_total": clips_total,
    })
    n_failures = len(acquired.failures) + sum(1 for r in results if not r.ok)
    result = {
        **{k: v for k, v in manifests_summary.items() if isinstance(v, (int, float, str))},
        "videos": len(acquired.video_ids) + sum(1 for f in acquired.failures if f.stage == "download"),
        "processed": sum(1 for r in results if r.ok),
        "failures": n_failures,
        "run_id": start.run_id,
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
        "adopted": len(start.adopted),
        "target_reached": bool(target_videos is not None and after["done"] >= target_videos),
        # Per stage, how many videos ran it rather than finding it up to date.
        "stage_runs": {s: sum(1 for r in results if s in r.outcomes and r.outcomes[s].outcome == "ran")
                       for s in VIDEO_STAGES},
    }
    return result, growth_table(start.before, after, videos_added, clips_added)


# -- replicas, for scale tests and benchmarks ------------------------------------------
def replicate_video(catalog: Catalog, source_id: str, new_id: str, corpus: Optional[str] = None) -> None:
    """Copy the processed video `source_id` under `new_id` so that every stage is
    genuinely up to date for it: the same media and tables (hard-linked on a local
    root), the id rewritten where a file holds it (the raw file names, info.json,
    the clips), and each stage's marker written by the registry's own marker code
    (`write_marker`: the key of `new_id`'s paths and inputs, fingerprints of its
    outputs), so `run_stage` finds every stage of `new_id` up to date, as after a
    real run. `corpus`: a local folder that also gets the video and its captions as
    `<new_id>.<ext>` (a folder import of it finds the replica already imported).
    Stands in for thousands of processed videos in the scale test and benchmark
    (tests/test_scale.py, bench/bench_scale.py)."""
    import os

    import fsspec
    import pyarrow as pa
    import pyarrow.parquet as pq

    from emotionclip.core.ids import validate_video_id
    from emotionclip.stages.registry import read_marker, write_marker

    new_id = validate_video_id(new_id)
    src_dir, dst_dir = catalog.artifact("video_dir", source_id), catalog.artifact("video_dir", new_id)
    fs, src_path = fsspec.core.url_to_fs(src_dir)
    dst_path = fsspec.core.url_to_fs(dst_dir)[1]
    local = io.is_local(src_dir)
    info = io.read_json(catalog.artifact("info", source_id))
    rename = {n: new_id + n[len(source_id):] for n in (info.get("video_file"), info.get("caption_file"))
              if n and n.startswith(source_id)}
    skip = {"info.json", _name(catalog, "clips", source_id)}

    def place(src: str, target: str) -> None:
        if local:
            os.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            if not os.path.exists(target):
                os.link(src, target)  # same bytes, no copy: thousands of replicas fit on a small disk
        else:
            fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            fs.copy(src, target)

    for f in fs.find(src_path):
        rel = f[len(src_path.rstrip("/")) + 1:]
        name = rel.rsplit("/", 1)[-1]
        if rel.startswith(".stages/") or rel in skip or ".tmp-" in name:
            continue  # markers and ids are written below; a killed run's temporaries are not data
        parent = rel[: -len(name)]
        place(f, f"{dst_path}/{parent}{rename.get(name, name)}")
        if corpus and parent == "raw/" and name in rename:
            place(f, f"{corpus}/{rename[name]}")
    new_info = {**info, "id": new_id, "title": new_id,
                **{k: rename.get(info[k], info[k]) for k in ("video_file", "caption_file") if info.get(k)}}
    if corpus and info.get("video_file"):
        new_info["url"] = (Path(corpus) / rename.get(info["video_file"], info["video_file"])).resolve().as_uri()
    io.atomic_write_json(catalog.artifact("info", new_id), new_info)
    with io.open_file(catalog.artifact("clips", source_id), "rb") as f:
        clips = pq.read_table(f)
    if "video_id" in clips.column_names:
        clips = clips.set_column(clips.column_names.index("video_id"), "video_id",
                                 pa.array([new_id] * clips.num_rows, type=clips.schema.field("video_id").type))
    if "clip_id" in clips.column_names:  # "<video_id>:<sentence_idx>"
        ids = [f"{new_id}:{c.rsplit(':', 1)[-1]}" for c in clips.column("clip_id").to_pylist()]
        clips = clips.set_column(clips.column_names.index("clip_id"), "clip_id",
                                 pa.array(ids, type=clips.schema.field("clip_id").type))
    io.atomic_write_parquet(catalog.artifact("clips", new_id), clips)  # a Table keeps its schema metadata
    for stage in VIDEO_STAGES:  # DAG order: each key builds on the ones before
        summary = dict((read_marker(catalog, stage, source_id) or {}).get("summary") or {})
        if "video_id" in summary:
            summary["video_id"] = new_id
        write_marker(catalog, stage, new_id, summary)


def _name(catalog: Catalog, artifact: str, video_id: str) -> str:
    """The artifact's path inside the video's folder."""
    return catalog.artifact(artifact, video_id)[len(catalog.artifact("video_dir", video_id)) + 1:]


def replicate_dataset(catalog: Catalog, registry: VideoRegistry, source_ids: list[str], n: int,
                      corpus: Optional[str] = None, run_id: str = "replicas", prefix: str = "rep") -> list[str]:
    """Grow a data root to `n` done videos by replicating the processed `source_ids`
    in turn (`replicate_video`, into `corpus` too when given) under ids
    `<prefix>-00001-<source>`, registered as done in one registry write. Returns
    the new ids."""
    if not source_ids:
        raise ValueError("replicate_dataset needs at least one processed video")
    for vid in source_ids:
        if not is_up_to_date(catalog, "clips", vid):
            raise ValueError(f"{vid} is not processed (its clips stage is not up to date)")
    pairs = [(source_ids[i % len(source_ids)], f"{prefix}-{i + 1:05d}-{source_ids[i % len(source_ids)]}")
             for i in range(max(n - len(source_ids), 0))]
    # Hard links and small rewrites: I/O-bound, so threads overlap it.
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda p: replicate_video(catalog, p[0], p[1], corpus), pairs))
    new_ids = [new for _, new in pairs]
    with registry.batch() as b:
        b.register([info_record(catalog, v) for v in new_ids], run_id)
        for v in new_ids:
            b.mark_done(v, run_id, {s: "done" for s in VIDEO_STAGES})
    return new_ids
