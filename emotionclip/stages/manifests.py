"""The manifests stage: filter every video's clips (`emotionclip.stages.filter`,
catalog `stages.filter`) and write them as one new manifest generation, with the
rejected clips and the failures (format: `emotionclip.core.manifest_store`)."""

from __future__ import annotations

from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from emotionclip.core.io import exists, open_file
from emotionclip.core.manifest_store import catalog_fingerprint, write_failures, write_manifests, write_rejected
from emotionclip.core.schemas import CLIP, validate_table
from emotionclip.stages.filter import REASONS, filter_clips


def _read_clips(catalog: Any, video_id: str) -> pa.Table:
    path = catalog.artifact("clips", video_id)
    if not exists(path):
        raise FileNotFoundError(f"clips not found at {path}")
    with open_file(path, "rb") as f:
        table = pq.read_table(f)
    validate_table(table, CLIP, f"clips of {video_id}")
    return table.select([f.name for f in CLIP])


def build_manifests(catalog: Any, video_ids: Iterable[str], failures: Iterable[dict[str, Any]] = ()) -> dict[str, Any]:
    """Filter every video's clips and write manifests, rejected and failures.
    A video whose clips cannot be read is added to the failures; the rest go on.
    Returns the counts (also stored in `_manifest.json`)."""
    video_ids = list(video_ids)
    failures = [dict(f) for f in failures]
    tables = []
    for vid in video_ids:
        try:
            tables.append(_read_clips(catalog, vid))
        except (OSError, ValueError, pa.ArrowException) as e:  # SchemaError and InvalidVideoId are ValueErrors
            failures.append({"video_id": str(vid), "stage": "manifests", "error": f"{type(e).__name__}: {e}"})
    clips = (pa.concat_tables(tables) if tables else CLIP.empty_table()).to_pandas()
    kept, rejected = filter_clips(clips, catalog.stages.filter)
    by_reason = rejected["reason"].value_counts().to_dict() if len(rejected) else {}
    counts: dict[str, Any] = {
        "videos": len(video_ids),
        "videos_with_clips": len(tables),
        "videos_kept": int(kept["video_id"].nunique()) if len(kept) else 0,
        "clips": int(len(clips)),
        "kept": int(len(kept)),
        "rejected": int(len(rejected)),
        **{f"rejected_{r}": int(by_reason.get(r, 0)) for r in REASONS},
        "failures": len(failures),
    }
    fingerprint = catalog_fingerprint(catalog)
    out_dir = catalog.artifact("manifests")
    paths = write_manifests(kept, out_dir, catalog.stages.manifests.shard_size, fingerprint,
                            extra={"counts": counts})
    write_rejected(rejected, catalog.artifact("rejected"), fingerprint)
    write_failures(failures, catalog.artifact("failures"))
    return {**counts, "shards": len(paths), "manifests": out_dir, "fingerprint": fingerprint}
