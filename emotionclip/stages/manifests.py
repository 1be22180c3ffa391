"""The manifests stage: filter every video's clips (`emotionclip.stages.filter`,
catalog `stages.filter`) and write them as one new manifest generation, with the
rejected clips and the failures (format: `emotionclip.core.manifest_store`).

Each video's frame store is opened once for its frame count, so a clip whose
frames lie outside it, or whose sentiment scores are not valid numbers, is
rejected here (`frames_out_of_range`, `invalid_scores`) instead of reaching
training. A build that would shrink the current generation too much is refused
(`ManifestShrinkError`, catalog `stages.manifests.max_shrink_fraction`) before
anything is written, unless forced."""

from __future__ import annotations

import zipfile
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from emotionclip.core.frame_store import FrameStore
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


def build_manifests(
    catalog: Any, video_ids: Iterable[str], failures: Iterable[dict[str, Any]] = (), *, force: bool = False
) -> dict[str, Any]:
    """Filter every video's clips and write manifests, rejected and failures.
    A video whose clips or frame store cannot be read is added to the failures;
    the rest go on. `force` writes even a build that shrinks the current
    generation beyond `stages.manifests.max_shrink_fraction` (ManifestShrinkError
    otherwise, with nothing written). Returns the counts (also stored in
    `_manifest.json`)."""
    video_ids = list(video_ids)
    failures = [dict(f) for f in failures]
    tables, frame_counts = [], {}
    for vid in video_ids:
        try:
            table = _read_clips(catalog, vid)
            frame_counts[str(vid)] = _frame_count(catalog, vid)
            tables.append(table)
        except (OSError, ValueError, pa.ArrowException) as e:  # SchemaError and InvalidVideoId are ValueErrors
            failures.append({"video_id": str(vid), "stage": "manifests", "error": f"{type(e).__name__}: {e}"})
    clips = (pa.concat_tables(tables) if tables else CLIP.empty_table()).to_pandas()
    kept, rejected = filter_clips(clips, catalog.stages.filter, frame_counts)
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
    params = catalog.stages.manifests
    paths = write_manifests(kept, out_dir, params.shard_size, fingerprint, extra={"counts": counts},
                            keep_generations=params.keep_generations,
                            max_shrink_fraction=params.max_shrink_fraction, force=force)
    write_rejected(rejected, catalog.artifact("rejected"), fingerprint)
    write_failures(failures, catalog.artifact("failures"))
    return {**counts, "shards": len(paths), "manifests": out_dir, "fingerprint": fingerprint}
