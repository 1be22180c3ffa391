"""The clip-manifest format (docs/design.md section 3): the Parquet shards training
reads, plus `rejected` (with reasons) and `failures`. Written by the manifests
stage, read by training, evaluation tools and the dataset card.

Layout under the manifests folder:

    _manifest.json                 # the commit point: shards, counts, fingerprint
    v-<time>-<id>/_generation.json # that generation's own copy of its pointer content
    v-<time>-<id>/clips-00000.parquet
    v-<time>-<id>/clips-00001.parquet ...

A new set of shards is written into a fresh generation folder that nothing
references yet; `_manifest.json` is then replaced atomically to point at it.
A reader going through `read_manifests` therefore sees the old set or the new
set, never a mix, and a killed run leaves the previous set intact (this also
works on object stores, which have no atomic folder rename). The newest
`keep_generations` generations (and always the one that was current) are kept:
a reader that started before the switch can finish, and `rollback` can make an
older one current again from its `_generation.json`.

Two guards keep a bad build from replacing good manifests: a write that would
shrink the current generation by more than `max_shrink_fraction` (or empty it)
raises ManifestShrinkError unless forced, and every row's sentiment scores are
validated on write and on read (`schemas.validate_scores`).

Rows are sorted by (video_id, sentence_idx), so the same clips give the same
shards byte for byte.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import uuid
from typing import Any, Iterable

import fsspec
import pandas as pd
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from emotionclip.core.io import atomic_write_json, atomic_write_parquet, exists, open_file, read_json
from emotionclip.core.schemas import FAILURES, MANIFEST, REJECTED, SchemaError, validate_scores, validate_table

MANIFEST_FILE = "_manifest.json"
GENERATION_FILE = "_generation.json"
SHARD_PATTERN = "clips-{:05d}.parquet"
FORMAT = "emotionclip-manifest"
FORMAT_VERSION = 1
_SORT = ["video_id", "sentence_idx"]
# Dictionary encoding only where values repeat: tried on the scores and boxes (then
# dropped) it makes writing several times slower for no smaller file.
_WRITE_OPTIONS: dict[str, Any] = {"use_dictionary": ["video_id", "reason"]}
# The pointer plus the newest one: a reader that opened the pointer just before a
# switch still finds its shards.
MIN_KEEP_GENERATIONS = 2


class ManifestShrinkError(ValueError):
    """A new generation would lose too many of the current generation's clips."""

    def __init__(self, message: str, previous: int, new: int):
        super().__init__(message)
        self.previous = previous
        self.new = new


def _join(base: str | os.PathLike, *parts: str) -> str:
    return "/".join([str(base).rstrip("/"), *parts])


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _as_table(data: pd.DataFrame | pa.Table, schema: pa.Schema, name: str) -> pa.Table:
    """Exactly `schema`'s columns, in order; a missing or mistyped column is a SchemaError naming it."""
    if isinstance(data, pd.DataFrame):
        missing = [f.name for f in schema if f.name not in data.columns]
        if missing:
            raise SchemaError(f"{name}: missing column {missing[0]!r}")
        data = pa.Table.from_pandas(data[[f.name for f in schema]], schema=schema, preserve_index=False)
    else:
        validate_table(data, schema, name)
    return data.select([f.name for f in schema])


def _sorted(table: pa.Table) -> pa.Table:
    """Rows in (video_id, sentence_idx) order (a stable sort)."""
    if not table.num_rows:
        return table
    order = pc.sort_indices(table, sort_keys=[(c, "ascending") for c in _SORT])
    # Usually in order already (built video by video): then the costly take of the boxes is skipped.
    return table if np.array_equal(order.to_numpy(), np.arange(table.num_rows)) else table.take(order)


def catalog_fingerprint(catalog: Any) -> str:
    """Hash of every stage's parameters and models: what made these manifests."""
    from emotionclip.core.catalog import STAGES

    stages = {s: catalog.stage_fingerprint(s) for s in STAGES if s != "manifests"}
    # Of the manifests parameters only the sharding shapes the output; the guards
    # (max_shrink_fraction, keep_generations) do not change what was made.
    stages["manifests"] = {"shard_size": catalog.stages.manifests.shard_size}
    payload = {"profile": catalog.profile, "stages": stages}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _new_generation_name() -> str:
    # Microseconds: generations written within one second still sort by time.
    return f"v-{_dt.datetime.now(_dt.timezone.utc):%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex[:8]}"


def check_shrink(
    out_dir: str | os.PathLike, new_clips: int, max_shrink_fraction: float | None, force: bool = False
) -> None:
    """Raise ManifestShrinkError when `new_clips` would replace the current generation's
    n_clips with none, or with fewer by more than `max_shrink_fraction` (None: only the
    drop to zero is refused). Nothing is checked when forced or with no current generation."""
    if force:
        return
    current = _pointer(_join(str(out_dir), MANIFEST_FILE))
    previous = int((current or {}).get("n_clips") or 0)
    if previous <= 0:
        return
    lost = (previous - new_clips) / previous
    too_many = max_shrink_fraction is not None and lost > max_shrink_fraction
    if new_clips == 0 or too_many:
        limit = "to zero" if new_clips == 0 else f"by {lost:.0%}, more than max_shrink_fraction={max_shrink_fraction}"
        raise ManifestShrinkError(
            f"{out_dir}: refusing to shrink the manifests from {previous} to {new_clips} clips ({limit}, current "
            f"generation {current.get('generation')}); check the catalog overrides and the videos' clips, "
            f"or force the write (force=True, --force)", previous, new_clips)


def write_manifests(
    kept: pd.DataFrame | pa.Table,
    out_dir: str | os.PathLike,
    shard_size: int = 10000,
    fingerprint: str | None = None,
    extra: dict[str, Any] | None = None,
    *,
    keep_generations: int = MIN_KEEP_GENERATIONS,
    max_shrink_fraction: float | None = None,
    force: bool = False,
) -> list[str]:
    """Write the kept clips as shards of `shard_size` rows and switch
    `_manifest.json` to them in one atomic step. Returns the shard paths.
    An empty set still gets one (empty) shard, so readers see the schema.

    Raises SchemaError for rows with invalid sentiment scores and
    ManifestShrinkError when the set would shrink too much (see `check_shrink`),
    both before anything is written. Keeps the newest `keep_generations`
    generations (at least 2) and the one that was current."""
    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    if keep_generations < MIN_KEEP_GENERATIONS:
        raise ValueError(f"keep_generations must be >= {MIN_KEEP_GENERATIONS}, got {keep_generations}")
    table = _sorted(_as_table(kept, MANIFEST, "manifest"))
    out_dir = str(out_dir)
    validate_scores(table, f"manifest for {out_dir}")
    check_shrink(out_dir, table.num_rows, max_shrink_fraction, force)
    pointer = _join(out_dir, MANIFEST_FILE)
    previous = _generation_of(pointer)
    generation = _new_generation_name()

    shards, paths = [], []
    n_shards = max(1, -(-table.num_rows // shard_size))
    try:
        for i in range(n_shards):
            part = table.slice(i * shard_size, shard_size)
            rel = f"{generation}/{SHARD_PATTERN.format(i)}"
            path = _join(out_dir, rel)
            atomic_write_parquet(path, part, **_WRITE_OPTIONS)
            shards.append({"path": rel, "rows": part.num_rows})
            paths.append(path)
        content = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "generation": generation,
            "shards": shards,
            "n_clips": table.num_rows,
            "n_videos": len(set(table.column("video_id").to_pylist())),
            "fingerprint": fingerprint,
            "created": _now(),
            "columns": [f.name for f in MANIFEST],
            **(extra or {}),
        }
        # The generation's own record of its pointer: what `rollback` restores.
        atomic_write_json(_join(out_dir, generation, GENERATION_FILE), content)
    except BaseException:
        # Nothing points at this generation yet: drop it, the previous set stays current.
        _remove_generations(out_dir, [generation])
        raise
    atomic_write_json(pointer, content)
    _prune_generations(out_dir, keep_generations, protect={generation, previous})
    return paths


def _pointer(pointer: str) -> dict[str, Any] | None:
    if not exists(pointer):
        return None
    try:
        return read_json(pointer)
    except (ValueError, OSError):
        return None


def _generation_of(pointer: str) -> str | None:
    return (_pointer(pointer) or {}).get("generation")


def _generation_dirs(out_dir: str) -> dict[str, str]:
    """Generation name -> its folder as the filesystem lists it, oldest first."""
    fs, root = fsspec.core.url_to_fs(out_dir)
    if not fs.exists(root):
        return {}
    found = {}
    for entry in fs.ls(root, detail=False):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if name.startswith("v-") and fs.isdir(entry):
            found[name] = entry
    return dict(sorted(found.items()))


def _remove_generations(out_dir: str, names: Iterable[str]) -> None:
    fs, _ = fsspec.core.url_to_fs(out_dir)
    dirs = _generation_dirs(out_dir)
    for name in names:
        if name in dirs:
            fs.rm(dirs[name], recursive=True)


def _prune_generations(out_dir: str, keep: int, protect: set[str | None]) -> None:
    """Remove all but the newest `keep` generations and those in `protect`."""
    names = list(_generation_dirs(out_dir))
    _remove_generations(out_dir, [n for n in names[:-keep] if n not in protect])


def list_generations(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The generations in a manifests folder, newest first: `generation`, `created`,
    `n_clips`, `n_videos`, `fingerprint`, `current` (what `_manifest.json` points at)
    and `restorable` (its `_generation.json` and every shard it lists are there)."""
    path = str(path)
    current = _generation_of(_join(path, MANIFEST_FILE))
    out = []
    for name in reversed(list(_generation_dirs(path))):
        record = _generation_record(path, name)
        out.append({
            "generation": name,
            "created": (record or {}).get("created"),
            "n_clips": (record or {}).get("n_clips"),
            "n_videos": (record or {}).get("n_videos"),
            "fingerprint": (record or {}).get("fingerprint"),
            "current": name == current,
            "restorable": record is not None and all(exists(_join(path, s["path"])) for s in record["shards"]),
        })
    return out


def _generation_record(path: str, name: str) -> dict[str, Any] | None:
    """A generation's `_generation.json`, or None when missing, unreadable or not its own."""
    record = _pointer(_join(path, name, GENERATION_FILE))
    if not record or record.get("format") != FORMAT or record.get("generation") != name:
        return None
    return record


def rollback(path: str | os.PathLike, generation: str | None = None) -> dict[str, Any]:
    """Make an older generation current again: `_manifest.json` is replaced atomically
    by that generation's recorded pointer content (shards, counts, fingerprint).
    Default: the newest restorable generation older than the current one.
    Returns the new pointer content."""
    path = str(path)
    gens = list_generations(path)
    current = next((g["generation"] for g in gens if g["current"]), None)
    if generation is None:
        if current is None:
            raise FileNotFoundError(f"{_join(path, MANIFEST_FILE)}: no current generation to roll back from")
        older = [g for g in gens if g["generation"] < current and g["restorable"]]
        if not older:
            raise ValueError(f"{path}: no older restorable generation than {current} to roll back to")
        generation = older[0]["generation"]
    chosen = next((g for g in gens if g["generation"] == generation), None)
    if chosen is None:
        raise ValueError(f"{path}: no generation {generation!r}; choose from {[g['generation'] for g in gens]}")
    record = _generation_record(path, generation)
    if not chosen["restorable"] or record is None:
        raise ValueError(f"{_join(path, generation)}: cannot restore: {GENERATION_FILE} or a shard is missing")
    atomic_write_json(_join(path, MANIFEST_FILE), record)
    return record


def manifest_info(path: str | os.PathLike) -> dict[str, Any]:
    """The `_manifest.json` of a manifests folder."""
    pointer = _join(path, MANIFEST_FILE)
    if not exists(pointer):
        raise FileNotFoundError(f"no {MANIFEST_FILE} in {path}")
    info = read_json(pointer)
    if info.get("format") != FORMAT:
        raise SchemaError(f"{pointer}: not an emotionclip manifest (format {info.get('format')!r})")
    return info


def _shard_paths(path: str) -> list[str]:
    """Shards named by `_manifest.json`; a single Parquet file; or, for a folder
    without one (hand-made), its clips-*.parquet files in name order."""
    if path.endswith(".parquet"):
        return [path]
    if exists(_join(path, MANIFEST_FILE)):
        return [_join(path, s["path"]) for s in manifest_info(path)["shards"]]
    fs, root = fsspec.core.url_to_fs(path)
    found = sorted(fs.glob(_join(root, "clips-*.parquet")))
    if not found:
        raise FileNotFoundError(f"no manifest shards in {path}")
    return [p if "://" not in path else f"{path.split('://', 1)[0]}://{p}" for p in found]


def read_manifests(path: str | os.PathLike) -> pd.DataFrame:
    """All manifest rows (a manifests folder, or one shard file), validated
    against `schemas.MANIFEST`: a missing or mistyped column, or an invalid
    sentiment score, raises SchemaError naming the shard, the column and (for a
    score) the first bad clip."""
    tables = []
    for shard in _shard_paths(str(path)):
        with open_file(shard, "rb") as f:
            table = pq.read_table(f)
        validate_table(table, MANIFEST, f"manifest shard {shard}")
        validate_scores(table, f"manifest shard {shard}")
        tables.append(table.select([f.name for f in MANIFEST]))
    table = pa.concat_tables(tables) if tables else MANIFEST.empty_table()
    return table.to_pandas()


def write_rejected(rejected: pd.DataFrame | pa.Table, path: str | os.PathLike, fingerprint: str | None = None) -> str:
    """The rejected clips with their `reason`, sorted like the manifests."""
    table = _sorted(_as_table(rejected, REJECTED, "rejected"))
    atomic_write_parquet(path, table, metadata={"fingerprint": fingerprint} if fingerprint else None, **_WRITE_OPTIONS)
    return str(path)


def write_failures(failures: Iterable[dict[str, Any]], path: str | os.PathLike) -> str:
    """Videos that failed: {video_id, stage, error, time} (time filled in when missing)."""
    now = _now()
    rows = [{
        "video_id": str(f.get("video_id") or ""),
        "stage": str(f.get("stage") or ""),
        "error": str(f.get("error") or ""),
        "time": str(f.get("time") or now),
    } for f in failures]
    table = pa.Table.from_pylist(rows, schema=FAILURES) if rows else FAILURES.empty_table()
    atomic_write_parquet(path, table)
    return str(path)


