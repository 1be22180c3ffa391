"""Atomic writes and fsspec-aware file access.

Every artifact is written under a temporary name and renamed into place, so a
killed run never leaves a half file that a later run takes for a finished one.
Paths may be local or fsspec URLs (s3://, gs://, memory://).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import uuid
from pathlib import Path
from typing import Any, Iterator

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


def is_local(path: str | os.PathLike) -> bool:
    s = str(path)
    return "://" not in s or s.startswith("file://")


def _local(path: str | os.PathLike) -> Path:
    s = str(path)
    return Path(s[len("file://"):] if s.startswith("file://") else s)


def exists(path: str | os.PathLike) -> bool:
    if is_local(path):
        return _local(path).exists()
    fs, p = fsspec.core.url_to_fs(str(path))
    return fs.exists(p)


def makedirs(path: str | os.PathLike) -> None:
    if is_local(path):
        _local(path).mkdir(parents=True, exist_ok=True)
    else:
        fs, p = fsspec.core.url_to_fs(str(path))
        fs.makedirs(p, exist_ok=True)


def open_file(path: str | os.PathLike, mode: str = "rb"):
    """Open a local path or fsspec URL (seekable for reads)."""
    if is_local(path):
        return open(_local(path), mode)
    return fsspec.open(str(path), mode).open()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary local path next to `path`; on success rename it into place.
    For remote URLs the temporary file is local and uploaded in one put (object
    stores make a put visible atomically)."""
    if is_local(path):
        final = _local(path)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            yield tmp
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                if tmp.is_dir():
                    import shutil

                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    tmp.unlink()
    else:
        import tempfile

        fs, p = fsspec.core.url_to_fs(str(path))
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d) / Path(p).name
            yield tmp
            fs.makedirs(str(Path(p).parent), exist_ok=True)
            fs.put_file(str(tmp), p)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open_file(path, "rb") as f:
        return json.loads(f.read().decode("utf-8"))


def atomic_write_parquet(
    path: str | os.PathLike,
    df: pd.DataFrame | pa.Table,
    schema: pa.Schema | None = None,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write a DataFrame/Table to Parquet atomically (optionally cast to `schema`)."""
    table = df if isinstance(df, pa.Table) else pa.Table.from_pandas(df, schema=schema, preserve_index=False)
    if schema is not None and not isinstance(df, pd.DataFrame):
        table = table.cast(schema)
    if metadata:
        meta = dict(table.schema.metadata or {})
        meta.update({k.encode(): v.encode() for k, v in metadata.items()})
        table = table.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_parquet(path: str | os.PathLike, columns: list[str] | None = None) -> pd.DataFrame:
    if is_local(path):
        return pq.read_table(_local(path), columns=columns).to_pandas()
    with open_file(path, "rb") as f:
        return pq.read_table(io.BytesIO(f.read()), columns=columns).to_pandas()


def parquet_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The key/value metadata of a Parquet file (e.g. the fingerprint it was made with)."""
    with open_file(path, "rb") as f:
        meta = pq.read_schema(f).metadata or {}
    return {k.decode(): v.decode() for k, v in meta.items()}
