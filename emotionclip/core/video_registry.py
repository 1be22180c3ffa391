"""The video registry: the dataset across runs (docs/design.md section 3).

One row per video ever seen (`schemas.VIDEOS`, artifact `video_registry`): where it
came from, and whether it is done (in the manifests), failed (at which stage, how
often, whether the failure may heal), excluded (why), or pending. One row per
build-tv-dataset run (`schemas.RUNS`, artifact `runs`). The registry, not a listing
of the videos folder, says which videos the manifests are built from, so a run over
new videos adds them to the dataset and a scheduled run does not fetch again what
an earlier run finished, gave up on or excluded.

Writes are read-modify-write of the whole table (a few hundred KB at the paper's
3,613 videos), written atomically (`io.atomic_write_parquet`). They are batched:
`VideoRegistry.batch()` collects any number of changes and writes once, so a run
writes the table once per phase, not once per video. On a local data root a batch
holds `filelock.FileLock("<registry>.lock")` from its read to its write, so
concurrent runs (threads or processes) never lose each other's updates. On a remote
(fsspec URL) data root there is no lock: concurrent runs there may lose updates of
one another (the last write wins); run one at a time or keep the registry local.

The library's core layer cannot import the stages, so `adopt` (registering a data
root built before the registry existed) takes the video ids and two callables from
its caller (the flow and `emotionclip dataset status` pass
`emotionclip.stages.registry.list_video_ids` and marker checks).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import threading
from collections import Counter
from typing import Any, Callable, Iterable, Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from emotionclip.core import io
from emotionclip.core.catalog import Catalog
from emotionclip.core.ids import validate_video_id
from emotionclip.core.schemas import RUNS, VIDEO_STATUSES, VIDEOS, SchemaError, validate_table

SOURCES = ("youtube", "url", "local")
_TEXT = [f.name for f in VIDEOS if pa.types.is_string(f.type)]
_DEFAULTS: dict[str, Any] = {**{name: "" for name in _TEXT}, "status": "pending", "attempts": 0,
                             "transient": False, "stages": "{}", "n_clips": 0}
# Error texts are kept whole up to this many characters: enough for any StageError,
# and a runaway traceback cannot bloat a table read by every run.
MAX_ERROR_CHARS = 2000


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def url_key(url: str) -> str:
    """Registry id of a URL whose video id is not known (its download failed before
    yt-dlp extracted one): stable, valid, and recognisable."""
    import hashlib

    return "url-" + hashlib.sha1(url.encode("utf-8")).hexdigest()[:12]


_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    """A thread lock and, on a local root, a file lock across processes (the OS drops
    it when a process dies, so a killed run blocks nobody)."""
    with _thread_locks_guard:
        tlock = _thread_locks.setdefault(path, threading.Lock())
    with tlock:
        if io.is_local(path):
            from filelock import FileLock

            io.makedirs(path.rsplit("/", 1)[0])
            with FileLock(path + ".lock"):
                yield
        else:
            yield


def _read_table(path: str, schema: pa.Schema) -> pd.DataFrame:
    if not io.exists(path):
        return schema.empty_table().to_pandas()
    try:
        with io.open_file(path, "rb") as f:
            table = pq.read_table(f)
    except (OSError, pa.ArrowException) as e:
        raise SchemaError(f"{path}: not a readable Parquet file ({e})") from None
    validate_table(table, schema, str(path))
    return table.select([f.name for f in schema]).to_pandas()


def _write_table(path: str, rows: Iterable[dict[str, Any]], schema: pa.Schema) -> None:
    rows = list(rows)
    table = pa.Table.from_pylist([{f.name: r.get(f.name) for f in schema} for r in rows], schema=schema)
    io.atomic_write_parquet(path, table)


def _blank(v: Any) -> bool:
    """None or NaN (what a pandas record holds for a missing value)."""
    return v is None or (isinstance(v, float) and v != v)


def _clean(row: dict[str, Any]) -> dict[str, Any]:
    """A row with every column, missing or null values as their defaults."""
    out = {}
    for f in VIDEOS:
        v = row.get(f.name)
        if _blank(v):
            v = _DEFAULTS[f.name]
        if f.name in ("attempts", "n_clips"):
            v = int(v)
        elif f.name == "transient":
            v = bool(v)
        else:
            v = str(v)
        out[f.name] = v
    return out


class RegistryBatch:
    """The registry's rows during one `VideoRegistry.batch()`: changes are made here,
    in memory, and written once when the batch ends. Every method of `VideoRegistry`
    that changes rows exists here too (that one is a batch of one change)."""

    def __init__(self, rows: dict[str, dict[str, Any]]):
        self.rows = rows
        self.now = now_iso()

    def get(self, video_id: str) -> dict[str, Any] | None:
        return self.rows.get(video_id)

    def _row(self, video_id: str, run_id: str) -> dict[str, Any]:
        row = self.rows.get(video_id)
        if row is None:
            row = self.rows[video_id] = _clean({"video_id": validate_video_id(video_id), "first_seen": self.now,
                                                "added_by_run": run_id, "updated": self.now})
        return row

    def _set(self, row: dict[str, Any], **fields: Any) -> None:
        # `updated` moves only on a real change: a run that finds everything as it
        # was leaves the table's content as it was.
        changed = {k: v for k, v in fields.items() if row.get(k) != v}
        if changed:
            row.update(changed)
            row["updated"] = self.now

    def register(self, records: list[dict[str, Any]], run_id: str) -> list[str]:
        """Add the unknown videos of `records` (dicts with `video_id` and any of title,
        channel, source, query, url) as pending; known ones are left as they are.
        Returns the new ids, in the records' order."""
        new = []
        for rec in records:
            vid = validate_video_id(str(rec.get("video_id") or ""))
            if vid in self.rows:
                continue
            source = "" if _blank(rec.get("source")) else str(rec["source"])
            if source and source not in SOURCES:
                raise ValueError(f"video {vid}: source {source!r} is not one of {list(SOURCES)}")
            row = self._row(vid, run_id)
            for k in ("title", "channel", "source", "query", "url"):
                if not _blank(rec.get(k)):
                    row[k] = str(rec[k])
            new.append(vid)
        return new

    def mark_done(self, video_id: str, run_id: str, stages: dict[str, str], n_clips: int | None = None) -> None:
        """Every stage of the video is done. An excluded video stays excluded."""
        row = self._row(video_id, run_id)
        fields: dict[str, Any] = {"stages": json.dumps(dict(stages), sort_keys=True)}
        if n_clips is not None:
            fields["n_clips"] = int(n_clips)
        if row["status"] != "excluded":
            fields.update(status="done", failed_stage="", error="", transient=False)
        self._set(row, **fields)

    def mark_failed(self, video_id: str, stage: str, error: str, transient: bool, run_id: str,
                    stages: dict[str, str] | None = None) -> None:
        """The video failed at `stage` once more (`attempts` + 1). `transient`: the
        failure may heal (later runs retry it up to `stages.download.max_attempts`).
        `stages`: the states of its other stages. An excluded video stays excluded."""
        row = self._row(video_id, run_id)
        if row["status"] == "excluded":
            return
        states = {**(json.loads(row["stages"] or "{}") if stages is None else dict(stages)), stage: "failed"}
        self._set(row, status="failed", failed_stage=stage, error=str(error)[:MAX_ERROR_CHARS],
                  transient=bool(transient), attempts=row["attempts"] + 1,
                  stages=json.dumps(states, sort_keys=True))

    def exclude(self, video_id: str, reason: str) -> None:
        """Keep the video out of the dataset (it leaves the manifests at the next build
        and is not fetched or processed again). Add a rule to the exclusion file too
        (`exclusions.add_exclusions`), or the next `apply_exclusions` brings it back."""
        row = self._row(video_id, "cli")
        self._set(row, status="excluded", excluded_reason=str(reason))

    def apply_exclusions(self, reason_of: Callable[[str, str], str | None]) -> tuple[list[str], list[str]]:
        """Make the rows follow the exclusion rules (`reason_of(video_id, title)`, e.g.
        `Exclusions.reason`, is the source of truth): exclude every row it gives a
        reason for, and bring back as pending an excluded row it no longer does (its
        rule was deleted). Returns (newly excluded ids, restored ids)."""
        newly, restored = [], []
        for vid, row in sorted(self.rows.items()):
            reason = reason_of(vid, row["title"])
            if reason and row["status"] != "excluded":
                self.exclude(vid, reason)
                newly.append(vid)
            elif not reason and row["status"] == "excluded":
                self._set(row, status="pending", excluded_reason="")
                restored.append(vid)
        return newly, restored

    def forget(self, video_id: str) -> bool:
        """Drop a row (a `url_key` stand-in once the URL's real id is known)."""
        return self.rows.pop(video_id, None) is not None

    def set_clips(self, counts: dict[str, int]) -> None:
        """Each done video's kept clips in the current manifests (0 when it has none)."""
        for vid, row in self.rows.items():
            n = int(counts.get(vid, 0)) if row["status"] == "done" else 0
            self._set(row, n_clips=n)


class VideoRegistry:
    """The registry of one catalog's data root; see the module docstring."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self.path = catalog.artifact("video_registry")
        self.runs_path = catalog.artifact("runs")

    # -- reading -------------------------------------------------------------
    def exists(self) -> bool:
        return io.exists(self.path)

    def read(self) -> pd.DataFrame:
        """Every row (`schemas.VIDEOS` columns, sorted by video_id); empty when the
        registry does not exist yet. A damaged file raises SchemaError naming it."""
        return _read_table(self.path, VIDEOS)

    def _rows(self) -> dict[str, dict[str, Any]]:
        return {r["video_id"]: _clean(r) for r in self.read().to_dict("records")}

    def skip_ids(self, max_attempts: int, retry_failed: bool = False) -> set[str]:
        """Videos a run must not fetch again: done, excluded, failed permanently
        (unless `retry_failed`), and failed transiently `max_attempts` times or more
        (unless `retry_failed`)."""
        df = self.read()
        skip = df["status"].isin(["done", "excluded"])
        if not retry_failed:
            failed = df["status"] == "failed"
            skip |= failed & (~df["transient"].astype(bool) | (df["attempts"] >= max_attempts))
        return set(df.loc[skip, "video_id"])

    def retry_ids(self, max_attempts: int, retry_failed: bool = False) -> list[str]:
        """Failed videos a run should try again, sorted: transient failures with
        fewer than `max_attempts` attempts; with `retry_failed`, every failure."""
        df = self.read()
        pick = df["status"] == "failed"
        if not retry_failed:
            pick &= df["transient"].astype(bool) & (df["attempts"] < max_attempts)
        return sorted(df.loc[pick, "video_id"])

    def done_ids(self) -> list[str]:
        """The videos the manifests are built from (status done), sorted."""
        df = self.read()
        return sorted(df.loc[df["status"] == "done", "video_id"])

    def counts(self) -> dict[str, Any]:
        """Videos per status, and the reasons behind the failed and excluded ones:
        {"done": n, "failed": n, "excluded": n, "pending": n, "clips": kept clips,
        "failed_reasons": {"<stage> (transient|permanent)": n}, "excluded_reasons": {reason: n}}."""
        return summarize(self.read())

    # -- writing -------------------------------------------------------------
    @contextlib.contextmanager
    def batch(self) -> Iterator[RegistryBatch]:
        """Read the rows under the lock, let the caller change them, write once (only
        when something changed). An exception inside leaves the registry as it was."""
        with _locked(self.path):
            rows = self._rows()
            before = {vid: dict(r) for vid, r in rows.items()}
            b = RegistryBatch(rows)
            yield b
            if b.rows != before:
                _write_table(self.path, [_clean(b.rows[v]) for v in sorted(b.rows)], VIDEOS)

    @contextlib.contextmanager
    def update(self) -> Iterator[pd.DataFrame]:
        """The rows as a DataFrame to change in place (indexed by video_id; add a row
        with `df.loc["<id>"] = {...}`), written atomically on exit, under the lock."""
        with _locked(self.path):
            df = self.read().set_index("video_id", drop=False)
            yield df
            df = df.copy()
            df["video_id"] = df.index
            rows = [_clean({**r, "video_id": validate_video_id(str(r["video_id"]))}) for r in df.to_dict("records")]
            _write_table(self.path, sorted(rows, key=lambda r: r["video_id"]), VIDEOS)

    def register(self, records: list[dict[str, Any]], run_id: str) -> list[str]:
        with self.batch() as b:
            return b.register(records, run_id)

    def mark_done(self, video_id: str, run_id: str, stages: dict[str, str]) -> None:
        with self.batch() as b:
            b.mark_done(video_id, run_id, stages)

    def mark_failed(self, video_id: str, stage: str, error: str, transient: bool, run_id: str) -> None:
        with self.batch() as b:
            b.mark_failed(video_id, stage, error, transient, run_id)

    def exclude(self, video_id: str, reason: str) -> None:
        with self.batch() as b:
            b.exclude(video_id, reason)

    def adopt(self, video_ids: Iterable[str], info_of: Callable[[str], dict[str, Any]],
              is_done: Callable[[str], bool | dict[str, str]]) -> list[str]:
        """Register videos already on disk that the registry does not know (a data
        root built before the registry existed): `info_of(id)` gives the video's
        info.json (title, channel, url, source), `is_done(id)` whether its clips are
        up to date, or its stage states ({stage: "done"}; done when all are). Both are
        called outside the lock. Returns the adopted ids; they count as added by run
        "adopted"."""
        known = set(self.read()["video_id"])
        found: list[tuple[dict[str, Any], bool, dict[str, str]]] = []
        for vid in video_ids:
            if vid in known:
                continue
            try:
                info = dict(info_of(vid) or {})
            except (OSError, ValueError):  # unreadable info.json: registered with its id only
                info = {}
            state = is_done(vid)
            if isinstance(state, dict):
                done = bool(state) and all(v == "done" for v in state.values())
                stages = {k: v for k, v in state.items() if v in ("done", "failed")}
            else:
                done, stages = bool(state), {}
            source = info.get("source") if info.get("source") in SOURCES else ""
            found.append(({"video_id": vid, "title": info.get("title"), "channel": info.get("channel"),
                           "url": info.get("url"), "source": source}, done, stages))
        with self.batch() as b:
            new = b.register([rec for rec, _, _ in found], "adopted")
            for rec, done, stages in found:
                if rec["video_id"] in new and done:
                    b.mark_done(rec["video_id"], "adopted", stages)
        return new

    # -- runs ------------------------------------------------------------------
    def append_run(self, row: dict[str, Any]) -> None:
        """Add one run's row (`schemas.RUNS`; missing counts are 0)."""
        full = {f.name: row.get(f.name, 0 if pa.types.is_integer(f.type) else "") for f in RUNS}
        with _locked(self.runs_path):
            rows = self.runs().to_dict("records") + [full]
            _write_table(self.runs_path, rows, RUNS)

    def runs(self) -> pd.DataFrame:
        """Every run's row, oldest first; empty when none was recorded."""
        return _read_table(self.runs_path, RUNS)


def summarize(df: pd.DataFrame) -> dict[str, Any]:
    """Counts of a registry table; see `VideoRegistry.counts`."""
    status = df["status"].value_counts().to_dict()
    failed = df[df["status"] == "failed"]
    excluded = df[df["status"] == "excluded"]
    failed_reasons = Counter(f"{s} ({'transient' if t else 'permanent'})"
                             for s, t in zip(failed["failed_stage"], failed["transient"]))
    return {
        **{s: int(status.get(s, 0)) for s in VIDEO_STATUSES},
        "clips": int(df.loc[df["status"] == "done", "n_clips"].sum()),
        "failed_reasons": dict(sorted(failed_reasons.items())),
        "excluded_reasons": dict(sorted(Counter(excluded["excluded_reason"]).items())),
    }


def kept_clips_per_video(manifests_dir: str) -> dict[str, int]:
    """Kept clips per video in the current manifest generation (reads only the
    video_id column of its shards); {} when there are no manifests yet."""
    from emotionclip.core.manifest_store import MANIFEST_FILE, manifest_info

    base = str(manifests_dir).rstrip("/")
    if not io.exists(f"{base}/{MANIFEST_FILE}"):
        return {}
    counts: Counter[str] = Counter()
    for shard in manifest_info(base)["shards"]:
        with io.open_file(f"{base}/{shard['path']}", "rb") as f:
            counts.update(pq.read_table(f, columns=["video_id"]).column("video_id").to_pylist())
    return dict(counts)
