"""Atomic writes and fsspec-aware file access.

Every artifact is written under a temporary name and renamed into place, so a
killed run never leaves a half file that a later run takes for a finished one.
Paths may be local or fsspec URLs (s3://, gs://, memory://).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any, Iterator

import fsspec
import fsspec.config
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

# A data root on an object store is shared: other processes and machines write into
# it while this one runs. fsspec keeps every directory listing for the life of the
# process by default, so a file another worker wrote after a listing would read as
# missing (an up-to-date stage re-run, a done video not found). Listings are not
# cached for the object stores, unless the user's fsspec config says otherwise.
for _protos in (("s3", "s3a"), ("gs", "gcs"), ("abfs", "abfss", "az"), ("adl",)):
    # fsspec applies the entries of every name of a filesystem's protocol: one set by
    # the user under any of them (FSSPEC_S3_USE_LISTINGS_CACHE=true, a config file) wins.
    if not any("use_listings_cache" in fsspec.config.conf.get(p, {}) for p in _protos):
        fsspec.config.conf.setdefault(_protos[0], {})["use_listings_cache"] = False


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


def remove(path: str | os.PathLike, recursive: bool = False) -> None:
    """Delete a file (or, with `recursive`, a folder and everything under it); a
    missing path is no error."""
    if is_local(path):
        p = _local(path)
        if p.is_dir() and not p.is_symlink():
            if recursive:
                import shutil

                shutil.rmtree(p)
            else:
                p.rmdir()
        else:
            p.unlink(missing_ok=True)
        return
    fs, p = fsspec.core.url_to_fs(str(path))
    try:
        fs.rm(p, recursive=recursive)
    except FileNotFoundError:
        pass


def upload_folder(local_dir: str | os.PathLike, dest: str) -> list[str]:
    """Copy the files directly in `local_dir` to the remote folder `dest` (one put per
    file, each visible whole or not at all). Returns the destination paths. Callers
    write their own "done" marker after it, since a folder has no atomic rename on an
    object store."""
    fs, p = fsspec.core.url_to_fs(dest)
    out = []
    for f in sorted(Path(local_dir).iterdir()):
        if f.is_file():
            target = f"{p.rstrip('/')}/{f.name}"
            fs.put_file(str(f), target)
            out.append(target)
    return out


def local_cache_dir(*parts: str) -> Path:
    """A local folder for caches that outlive a run (`EMOTIONCLIP_CACHE`, default
    `.cache/` of the project), for what cannot live on a remote data root (e.g.
    yt-dlp's cache). Scratch files go to the temporary folder (`TMPDIR`) instead."""
    base = os.environ.get("EMOTIONCLIP_CACHE") or str(Path(__file__).resolve().parents[2] / ".cache")
    path = Path(base, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


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
    **write_options: Any,
) -> None:
    """Write a DataFrame/Table to Parquet atomically (optionally cast to `schema`);
    `write_options` go to `pyarrow.parquet.write_table` (e.g. `use_dictionary`)."""
    table = df if isinstance(df, pa.Table) else pa.Table.from_pandas(df, schema=schema, preserve_index=False)
    if schema is not None and not isinstance(df, pd.DataFrame):
        table = table.cast(schema)
    if metadata:
        meta = dict(table.schema.metadata or {})
        meta.update({k.encode(): v.encode() for k, v in metadata.items()})
        table = table.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, **write_options)


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


# --- Output fingerprints -----------------------------------------------------
# What a stage marker records about each output, so that the up-to-date check can
# tell a finished output from a truncated or overwritten one without reading it
# whole: the size plus a checksum of the part a reader depends on first (a zip's
# central directory, a Parquet footer). A cut-off file loses that part or moves it.

_SMALL_FILE = 1 << 20  # other files: hashed whole below 1 MiB, else their last 64 KiB
_TAIL = 64 << 10
_EOCD_SIG = b"PK\x05\x06"
_EOCD_LEN = 22
_ZIP64_LOCATOR_SIG = b"PK\x06\x07"
_ZIP64_EOCD_SIG = b"PK\x06\x06"
_CD_SIG = b"PK\x01\x02"


def _read_range(f, start: int, length: int) -> bytes:
    f.seek(start)
    data = f.read(length)
    if len(data) != length:
        raise ValueError(f"short read at byte {start}: {len(data)} of {length} bytes")
    return data


def _zip_region(f, size: int) -> bytes:
    """The central directory through the end of the file (zip64 records and the End
    Of Central Directory record with its comment), checked for consistency. Parsed
    here rather than by zipfile, which accepts an End Of Central Directory record
    whose comment was cut off (a file truncated by a few bytes)."""
    tail_len = min(size, _EOCD_LEN + 0xFFFF)  # the EOCD is followed by at most a 64 KiB comment
    tail = _read_range(f, size - tail_len, tail_len)
    pos = tail.rfind(_EOCD_SIG)
    while pos >= 0:  # the last signature whose comment length reaches exactly the end of the file
        if pos + _EOCD_LEN <= len(tail) and pos + _EOCD_LEN + int.from_bytes(tail[pos + 20:pos + 22], "little") == len(tail):
            break
        pos = tail.rfind(_EOCD_SIG, 0, pos)
    if pos < 0:
        raise ValueError("no End Of Central Directory record at the end (truncated zip?)")
    eocd_at = size - tail_len + pos
    eocd = tail[pos:pos + _EOCD_LEN]
    cd_size = int.from_bytes(eocd[12:16], "little")
    cd_offset = int.from_bytes(eocd[16:20], "little")
    cd_end = eocd_at
    if cd_size == 0xFFFFFFFF or cd_offset == 0xFFFFFFFF or eocd[10:12] == b"\xff\xff":
        if eocd_at < 20:
            raise ValueError("zip64 locator missing")
        loc = _read_range(f, eocd_at - 20, 20)
        if loc[:4] != _ZIP64_LOCATOR_SIG:
            raise ValueError("zip64 locator missing")
        z64_at = int.from_bytes(loc[8:16], "little")
        if not 0 <= z64_at <= eocd_at - 20 - 56:
            raise ValueError("zip64 End Of Central Directory offset out of range")
        z64 = _read_range(f, z64_at, 56)
        if z64[:4] != _ZIP64_EOCD_SIG:
            raise ValueError("zip64 End Of Central Directory record missing")
        cd_size = int.from_bytes(z64[40:48], "little")
        cd_offset = int.from_bytes(z64[48:56], "little")
        cd_end = z64_at
    if cd_offset + cd_size != cd_end:
        raise ValueError(f"central directory (offset {cd_offset}, {cd_size} bytes) does not end "
                         f"at the End Of Central Directory record (byte {cd_end})")
    region = _read_range(f, cd_offset, size - cd_offset)
    if cd_size and region[:4] != _CD_SIG:
        raise ValueError(f"no central directory at byte {cd_offset}")
    return region


def _parquet_region(f, size: int) -> bytes:
    """The footer: Thrift file metadata, its 4-byte length and the closing "PAR1"."""
    if size < 12:
        raise ValueError(f"{size} bytes is too short for Parquet")
    end = _read_range(f, size - 8, 8)
    if end[4:] != b"PAR1":
        raise ValueError("no Parquet footer magic 'PAR1' at the end (truncated file?)")
    meta_len = int.from_bytes(end[:4], "little")
    if meta_len > size - 12:
        raise ValueError(f"Parquet footer length {meta_len} exceeds the file ({size} bytes)")
    return _read_range(f, size - 8 - meta_len, meta_len) + end


def _fingerprint(fs, p: str, name: str, size: int) -> dict[str, Any]:
    with fs.open(p, "rb") as f:
        if name.endswith(".zip"):
            kind, region = "zip-central-directory", _zip_region(f, size)
        elif name.endswith(".parquet"):
            kind, region = "parquet-footer", _parquet_region(f, size)
        elif size < _SMALL_FILE:
            kind, region = "whole-file", _read_range(f, 0, size)
        else:
            kind, region = "last-64KiB", _read_range(f, size - _TAIL, _TAIL)
    return {"size": size, "region": kind, "sha256": hashlib.sha256(region).hexdigest()}


def fingerprint_output(path: str | os.PathLike) -> dict[str, Any]:
    """A cheap identity of a finished output: {"size", "region", "sha256"}, where
    sha256 covers the zip's central directory + End Of Central Directory record, the
    Parquet footer, or for other files the whole file below 1 MiB, else its last 64
    KiB. Reads only the file's size and tail (ranged reads on an object store).
    Raises ValueError when that region is missing or inconsistent (a truncated
    file), OSError when the file cannot be read."""
    fs, p = fsspec.core.url_to_fs(str(path))
    return _fingerprint(fs, p, str(path), int(fs.size(p)))


def check_output(path: str | os.PathLike, expected: dict[str, Any]) -> str | None:
    """None when `path` still matches `expected` (a `fingerprint_output` result),
    else why not (e.g. "size 123 != 456"). Compares the size first, so a resized
    file costs no read."""
    fs, p = fsspec.core.url_to_fs(str(path))
    try:
        size = int(fs.size(p))
    except (OSError, ValueError) as e:
        return f"unreadable: {e}"
    if size != expected.get("size"):
        return f"size {size} != {expected.get('size')}"
    try:
        now = _fingerprint(fs, p, str(path), size)
    except (OSError, ValueError) as e:
        return f"unreadable: {e}"
    if now != expected:
        return f"{now['region']} checksum {now['sha256'][:12]} != {str(expected.get('sha256'))[:12]}"
    return None


def remove_stale_temps(path: str | os.PathLike) -> list[str]:
    """Remove the temporary files (or folders) that `atomic_path` left next to a
    local `path` when a run was killed mid-write; returns what was removed.
    Only safe while nobody is writing `path` (the caller holds its writer's lock):
    a live writer's temporary file has the same name pattern. Remote paths have no
    such files (their temporary copy is local), so nothing is done there."""
    if not is_local(path):
        return []
    final = _local(path)
    if not final.parent.is_dir():
        return []
    # exactly the names atomic_path makes: ".<name>.tmp-<hex>"
    pattern = re.compile(re.escape(f".{final.name}.tmp-") + "[0-9a-f]+")
    removed = []
    for entry in os.scandir(final.parent):
        if not pattern.fullmatch(entry.name):
            continue
        if entry.is_dir(follow_symlinks=False):
            import shutil

            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            Path(entry.path).unlink(missing_ok=True)
        removed.append(entry.path)
    return removed
