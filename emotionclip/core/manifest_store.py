"""The clip-manifest format (docs/design.md section 3): the Parquet shards training
reads, plus `rejected` (with reasons) and `failures`. Written by the manifests
stage, read by training, evaluation tools and the dataset card.
plus `rejected` (with reasons) and `failures`.

Layout under the manifests folder:

    _manifest.json                 # the commit point: shards, counts, fingerprint
    v-<time>-<id>/clips-00000.parquet
    v-<time>-<id>/clips-00001.parquet ...

A new set of shards is written into a fresh generation folder that nothing
references yet; `_manifest.json` is then replaced atomically to point at it.
A reader going through `read_manifests` therefore sees the old set or the new
set, never a mix, and a killed run leaves the previous set intact (this also
works on object stores, which have no atomic folder rename). The previous
generation is kept, so a reader that started before the switch can finish;
older ones are removed.

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
import pyarrow as pa
import pyarrow.parquet as pq

from emotionclip.core.io import atomic_write_json, atomic_write_parquet, exists, open_file, read_json
from emotionclip.core.schemas import FAILURES, MANIFEST, REJECTED, SchemaError, validate_table

MANIFEST_FILE = "_manifest.json"
SHARD_PATTERN = "clips-{:05d}.parquet"
FORMAT = "emotionclip-manifest"
FORMAT_VERSION = 1
_SORT = ["video_id", "sentence_idx"]


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
    return table.sort_by([(c, "ascending") for c in _SORT]) if table.num_rows else table


def catalog_fingerprint(catalog: Any) -> str:
    """Hash of every stage's parameters and models: what made these manifests."""
    from emotionclip.core.catalog import STAGES

    payload = {"profile": catalog.profile, "stages": {s: catalog.stage_fingerprint(s) for s in STAGES}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def write_manifests(
    kept: pd.DataFrame | pa.Table,
    out_dir: str | os.PathLike,
    shard_size: int = 10000,
    fingerprint: str | None = None,
    extra: dict[str, Any] | None = None,
) -> list[str]:
    """Write the kept clips as shards of `shard_size` rows and switch
    `_manifest.json` to them in one atomic step. Returns the shard paths.
    An empty set still gets one (empty) shard, so readers see the schema."""
    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    table = _sorted(_as_table(kept, MANIFEST, "manifest"))
    out_dir = str(out_dir)
    pointer = _join(out_dir, MANIFEST_FILE)
    previous = _generation_of(pointer)
    generation = f"v-{_dt.datetime.now(_dt.timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"

    shards, paths = [], []
    n_shards = max(1, -(-table.num_rows // shard_size))
    try:
        for i in range(n_shards):
            part = table.slice(i * shard_size, shard_size)
            rel = f"{generation}/{SHARD_PATTERN.format(i)}"
            path = _join(out_dir, rel)
            atomic_write_parquet(path, part)
            shards.append({"path": rel, "rows": part.num_rows})
            paths.append(path)
    except BaseException:
        # Nothing points at this generation yet: drop it, the previous set stays current.
        _remove_old_generations(out_dir, keep={previous}, only={generation})
        raise
    atomic_write_json(pointer, {
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
    })
    _remove_old_generations(out_dir, keep={generation, previous})
    return paths


def _generation_of(pointer: str) -> str | None:
    if not exists(pointer):
        return None
    try:
        return read_json(pointer).get("generation")
    except (ValueError, OSError):
        return None


def _remove_old_generations(out_dir: str, keep: set[str | None], only: set[str] | None = None) -> None:
    """Remove generation folders not in `keep` (restricted to `only` when given)."""
    fs, root = fsspec.core.url_to_fs(out_dir)
    if not fs.exists(root):
        return
    for entry in fs.ls(root, detail=False):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if name.startswith("v-") and name not in keep and (only is None or name in only):
            fs.rm(entry, recursive=True)


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
    against `schemas.MANIFEST`: a missing or mistyped column raises SchemaError
    naming the column and the shard."""
    tables = []
    for shard in _shard_paths(str(path)):
        with open_file(shard, "rb") as f:
            table = pq.read_table(f)
        validate_table(table, MANIFEST, f"manifest shard {shard}")
        tables.append(table.select([f.name for f in MANIFEST]))
    table = pa.concat_tables(tables) if tables else MANIFEST.empty_table()
    return table.to_pandas()


def write_rejected(rejected: pd.DataFrame | pa.Table, path: str | os.PathLike, fingerprint: str | None = None) -> str:
    """The rejected clips with their `reason`, sorted like the manifests."""
    table = _sorted(_as_table(rejected, REJECTED, "rejected"))
    atomic_write_parquet(path, table, metadata={"fingerprint": fingerprint} if fingerprint else None)
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


