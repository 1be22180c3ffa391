"""The manifests stage: filter every video's clips (`emotionclip.stages.filter`,
catalog `stages.filter`) and write them as one new manifest generation, with the
rejected clips and the failures (format: `emotionclip.core.manifest_store`).

Each video's frame store is opened once for its frame count, so a clip whose
frames lie outside it, or whose sentiment scores are not valid numbers, is
rejected here (`frames_out_of_range`, `invalid_scores`) instead of reaching
training. A build that would shrink the current generation too much is refused
(`ManifestShrinkError`, catalog `stages.manifests.max_shrink_fraction`) before
anything is written, unless forced.

The manifests are always built over the whole dataset, so a build keeps every
video's unfiltered clips and frame count in one cache file (artifact
`clips_cache`), each with the identity of the file it came from (size, change
stamp and Parquet footer checksum of `clips.parquet`; size and stamp of
`frames.zip`). A build re-reads only the videos that are new or whose files
changed, drops the videos no longer listed, and re-filters everything from the
cache: a run that adds ten videos, or a changed filter parameter, reads no other
video's clips. The cache is checked before it is trusted (format, schema, a
checksum of its index, Parquet page checksums, row counts); a cache that fails
any check is ignored and rebuilt from the videos' own files. Output depends only
on the clips and parameters, never on what the cache held: a build from the
cache and one from scratch give the same shards byte for byte."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from emotionclip.core.frame_store import FrameStore
from emotionclip.core.io import atomic_path, exists, fingerprint_output, is_local, open_file
from emotionclip.core.manifest_store import catalog_fingerprint, write_failures, write_manifests, write_rejected
from emotionclip.core.schemas import CLIP, validate_table
from emotionclip.stages.filter import REASONS, rejection_reasons

log = logging.getLogger(__name__)

CACHE_FORMAT = "emotionclip-clips-cache"
CACHE_VERSION = 1
_CACHE_KEY = b"emotionclip.clips_cache"
# A change to the clip schema makes every cached row suspect: the cache is rebuilt.
_CLIP_SCHEMA_ID = hashlib.sha256(CLIP.to_string(show_schema_metadata=False).encode()).hexdigest()[:16]
# Per-video probes are small file reads (ranged requests on an object store): threads overlap their latency.
_WORKERS = 8
# Change stamps an fsspec filesystem may report (S3, GCS, Azure, memory); any one that changes means a new file.
_STAMP_KEYS = ("ETag", "etag", "generation", "md5Hash", "LastModified", "last_modified", "updated", "mtime", "created")
# Only video ids repeat enough for dictionary encoding; trying it on the scores and boxes
# (then falling back) makes writing, and reading with page checksums, several times slower.
_DICTIONARY_COLUMNS = ["video_id"]
# Columns the filter never looks at: left in Arrow (boxes are costly to convert to Python objects).
_NOT_FILTERED = ("clip_id", "boxes")


def _read_clips(catalog: Any, video_id: str) -> pa.Table:
    path = catalog.artifact("clips", video_id)
    if not exists(path):
        raise FileNotFoundError(f"clips not found at {path}")
    with open_file(path, "rb") as f:
        # ParquetFile.read: a third of read_table's cost on a small file (no dataset set-up);
        # one thread, as the videos are read in parallel.
        table = pq.ParquetFile(f).read(use_threads=False)
    validate_table(table, CLIP, f"clips of {video_id}")
    # No schema metadata: rows from a video's file and from the cache must concatenate to the same bytes.
    return table.select([f.name for f in CLIP]).replace_schema_metadata(None)


def _frame_count(catalog: Any, video_id: str) -> int:
    """Frames in the video's store (training reads every kept clip's frames from it)."""
    path = catalog.artifact("frames", video_id)
    if not exists(path):
        raise FileNotFoundError(f"frames not found at {path}")
    try:
        with FrameStore(path) as store:
            return len(store)
    except zipfile.BadZipFile as e:  # not an OSError: reported like an unreadable clips file
        raise ValueError(f"{path}: not a readable frame store ({e})") from e


def _stamp(path: str, what: str) -> dict[str, Any]:
    """Size and change stamp of a file from one stat (one HEAD request on an object store).
    An atomic rewrite makes a new file: a new inode and modification time locally, a new
    ETag or generation on an object store."""
    try:
        if is_local(path):
            st = os.stat(path[len("file://"):] if path.startswith("file://") else path)
            return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns), "ino": int(st.st_ino)}
        fs, p = fsspec.core.url_to_fs(path)
        info = fs.info(p)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found at {path}") from None
    return {"size": int(info["size"]), **{k: str(info[k]) for k in _STAMP_KEYS if info.get(k) is not None}}


def _clips_identity(path: str) -> dict[str, Any]:
    """The stamp plus the Parquet footer checksum (what the clips stage marker records):
    a file rewritten within the stamp's resolution still shows as changed."""
    stamp = _stamp(path, "clips")
    return {**stamp, "footer": fingerprint_output(path)["sha256"]}


@dataclass(frozen=True)
class _Entry:
    """What the cache knows of one video: the files its rows came from and their content's shape."""

    clips: dict[str, Any]  # `_clips_identity` of clips.parquet
    frames: dict[str, Any]  # `_stamp` of frames.zip
    n_frames: int
    rows: int


@dataclass
class _Cache:
    entries: dict[str, _Entry] = field(default_factory=dict)  # by video id, sorted
    table: pa.Table = field(default_factory=CLIP.empty_table)  # rows of every entry, in entry order
    valid: bool = False  # read and checked (an absent or rejected cache is not)

    def slices(self) -> dict[str, pa.Table]:
        """Each video's rows (zero-copy slices of the cache table)."""
        out, start = {}, 0
        for vid, e in self.entries.items():
            out[vid] = self.table.slice(start, e.rows)
            start += e.rows
        return out


def _index_json(entries: dict[str, _Entry]) -> str:
    videos = [{"video_id": v, "clips": e.clips, "frames": e.frames, "n_frames": e.n_frames, "rows": e.rows}
              for v, e in entries.items()]
    return json.dumps(videos, sort_keys=True, separators=(",", ":"))


def _read_cache(path: str) -> _Cache:
    """The cache at `path`, checked; an empty, invalid `_Cache` when absent or when any check fails."""
    if not exists(path):
        return _Cache()
    try:
        # Page checksums: a flipped byte in the rows fails the read instead of reaching a manifest.
        if is_local(path):
            table = pq.read_table(path[len("file://"):] if path.startswith("file://") else path,
                                  page_checksum_verification=True)
        else:
            with open_file(path, "rb") as f:
                table = pq.read_table(f, page_checksum_verification=True)
        meta = json.loads((table.schema.metadata or {})[_CACHE_KEY])
        if (meta.get("format"), meta.get("version"), meta.get("schema")) != (CACHE_FORMAT, CACHE_VERSION, _CLIP_SCHEMA_ID):
            raise ValueError(f"format {meta.get('format')!r} version {meta.get('version')!r} "
                             f"schema {meta.get('schema')!r}, expected {CACHE_FORMAT!r} {CACHE_VERSION} {_CLIP_SCHEMA_ID!r}")
        index = meta["index"]
        if hashlib.sha256(index.encode()).hexdigest() != meta.get("sha256"):
            raise ValueError("index checksum mismatch")
        validate_table(table, CLIP, f"clips cache {path}")
        if table.schema.names != CLIP.names:
            raise ValueError(f"columns {table.schema.names} are not {CLIP.names}")
        entries = {}
        for v in json.loads(index):
            entries[str(v["video_id"])] = _Entry(dict(v["clips"]), dict(v["frames"]), int(v["n_frames"]), int(v["rows"]))
        if list(entries) != sorted(entries):
            raise ValueError("videos not in sorted order")
        if any(e.rows < 0 or e.n_frames < 0 for e in entries.values()):
            raise ValueError("negative row or frame count")
        if sum(e.rows for e in entries.values()) != table.num_rows:
            raise ValueError(f"{table.num_rows} rows, the index lists {sum(e.rows for e in entries.values())}")
    except (OSError, ValueError, KeyError, TypeError, AttributeError, pa.ArrowException) as e:
        log.warning("ignoring the clips cache %s (%s: %s); rebuilding it from every video's clips",
                    path, type(e).__name__, e)
        return _Cache()
    return _Cache(entries, table.replace_schema_metadata(None), valid=True)


def _write_cache(path: str, entries: dict[str, _Entry], table: pa.Table) -> None:
    index = _index_json(entries)
    meta = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "schema": _CLIP_SCHEMA_ID,
            "index": index, "sha256": hashlib.sha256(index.encode()).hexdigest()}
    table = table.replace_schema_metadata({_CACHE_KEY: json.dumps(meta, sort_keys=True).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, write_page_checksum=True, use_dictionary=_DICTIONARY_COLUMNS)


@dataclass(frozen=True)
class _Scan:
    entry: _Entry | None = None
    table: pa.Table | None = None  # the rows, when they were read from the video's own file
    error: str | None = None


def _scan_video(catalog: Any, video_id: str, cached: _Entry | None) -> _Scan:
    """The video's entry, reading its clips and counting its frames only when their
    files differ from what the cache recorded. Identities are taken before the reads,
    so a file replaced in between shows as changed on the next build."""
    try:
        clips_id = _clips_identity(catalog.artifact("clips", video_id))
        table = _read_clips(catalog, video_id) if cached is None or cached.clips != clips_id else None
        frames_id = _stamp(catalog.artifact("frames", video_id), "frames")
        same_frames = cached is not None and cached.frames == frames_id
        n_frames = cached.n_frames if same_frames else _frame_count(catalog, video_id)
    except (OSError, ValueError, pa.ArrowException) as e:  # SchemaError and InvalidVideoId are ValueErrors
        return _Scan(error=f"{type(e).__name__}: {e}")
    rows = table.num_rows if table is not None else cached.rows
    return _Scan(_Entry(clips_id, frames_id, n_frames, rows), table)


def build_manifests(
    catalog: Any, video_ids: Iterable[str], failures: Iterable[dict[str, Any]] = (), *, force: bool = False
) -> dict[str, Any]:
    """Filter every video's clips and write manifests, rejected and failures.
    A video whose clips or frame store cannot be read is added to the failures;
    the rest go on. `force` writes even a build that shrinks the current
    generation beyond `stages.manifests.max_shrink_fraction` (ManifestShrinkError
    otherwise, with nothing written). Returns the counts (also stored in
    `_manifest.json`), plus `videos_read`: the videos whose clips were read from
    their own files this build (the others came from the clips cache)."""
    video_ids = list(dict.fromkeys(str(v) for v in video_ids))  # a video listed twice counts once
    failures = [dict(f) for f in failures]
    cache_path = catalog.artifact("clips_cache")
    cache = _read_cache(cache_path)
    with ThreadPoolExecutor(max_workers=max(1, min(_WORKERS, len(video_ids)))) as pool:
        scans = list(pool.map(lambda v: _scan_video(catalog, v, cache.entries.get(v)), video_ids))

    entries: dict[str, _Entry] = {}
    fresh: dict[str, pa.Table] = {}
    for vid, scan in zip(video_ids, scans):
        if scan.error is not None:
            failures.append({"video_id": vid, "stage": "manifests", "error": scan.error})
            continue
        entries[vid] = scan.entry
        if scan.table is not None:
            fresh[vid] = scan.table
    entries = dict(sorted(entries.items()))
    if cache.valid and entries == cache.entries and not fresh:
        table = cache.table  # nothing changed: the cache as it is
    else:
        cached = cache.slices()
        parts = [fresh[v] if v in fresh else cached[v] for v in entries]
        # One chunk: filtering and writing thousands of per-video chunks costs several times more.
        table = pa.concat_tables(parts).combine_chunks() if parts else CLIP.empty_table()
        try:
            _write_cache(cache_path, entries, table)
        except OSError as e:  # only a saving: the manifests do not depend on it
            log.warning("could not write the clips cache %s (%s); the next build re-reads the videos it lacks",
                        cache_path, e)

    frame_counts = {v: e.n_frames for v, e in entries.items()}
    reasons = rejection_reasons(table.drop_columns(list(_NOT_FILTERED)).to_pandas(), catalog.stages.filter, frame_counts)
    keep = reasons.isna().to_numpy()
    kept = table.filter(pa.array(keep))
    rejected = table.filter(pa.array(~keep)).append_column(
        "reason", pa.array(reasons[~keep].tolist(), pa.string()))
    by_reason = reasons[~keep].value_counts().to_dict()
    counts: dict[str, Any] = {
        "videos": len(video_ids),
        "videos_with_clips": len(entries),
        "videos_kept": int(pc.count_distinct(kept.column("video_id")).as_py()),
        "clips": int(table.num_rows),
        "kept": int(kept.num_rows),
        "rejected": int(rejected.num_rows),
        **{f"rejected_{r}": int(by_reason.get(r, 0)) for r in REASONS},
        "failures": len(failures),
    }
    fingerprint = catalog_fingerprint(catalog)
    out_dir = catalog.artifact("manifests")
    params = catalog.stages.manifests
    paths = write_manifests(kept, out_dir, params.shard_size, fingerprint, extra={"counts": counts},
                            keep_generations=params.keep_generations,
                            max_shrink_fraction=params.max_shrink_fraction, force=force)
    write_rejected(rejected, catalog.artifact("rejected"), fingerprint)
    write_failures(failures, catalog.artifact("failures"))
    return {**counts, "shards": len(paths), "manifests": out_dir, "fingerprint": fingerprint,
            "videos_read": len(fresh)}
