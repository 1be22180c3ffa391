"""Incremental manifests: a build re-reads only the videos whose clips or frame store
changed (the clips cache holds the others), picks up rewritten and removed videos,
re-filters without reading clips, gives the same bytes as a build from scratch, and
never trusts a corrupt cache."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import emotionclip.stages.manifests as manifests
from emotionclip.core.catalog import load_catalog
from emotionclip.core.io import atomic_write_parquet, read_parquet
from emotionclip.core.manifest_store import manifest_info, read_manifests
from emotionclip.core.schemas import CLIP, EMOTIONS
from emotionclip.stages.manifests import build_manifests
from training_data import write_frame_store

VIDEOS = ["v1", "v2", "v3", "v4"]


def clip(video_id: str, i: int, *, neutral: float = 0.01, text: str = "Oh no!") -> dict:
    start = 1.0 + 4 * (i % 10)  # frames 8..328: inside a 400-frame store
    end = start + 4.0
    row = {"clip_id": f"{video_id}:{i}", "video_id": video_id, "sentence_idx": i, "text": text,
           "start_s": start, "end_s": end, "frame_start": int(np.ceil(start * 8)), "frame_end": int(np.floor(end * 8)),
           "neutral": neutral, "person_frac": 0.5,
           "boxes": [{"frame_idx": int(np.ceil(start * 8)), "x1": 0.1, "y1": 0.2, "x2": 0.3, "y2": 0.4, "conf": 0.9}]}
    for k, e in enumerate(EMOTIONS):
        row[f"logit_{e}"] = float(k)
        row[f"prob_{e}"] = neutral if e == "neutral" else (1 - neutral) / 6
    return row


def write_clips(cat, video_id: str, n: int = 3, **kw) -> None:
    # Every third clip is neutral, so each video has kept and rejected clips.
    rows = [clip(video_id, i, neutral=0.5 if i % 3 == 2 else 0.01, **kw) for i in range(n)]
    atomic_write_parquet(cat.artifact("clips", video_id), pa.Table.from_pylist(rows, schema=CLIP))


def add_video(cat, video_id: str, n: int = 3) -> None:
    write_clips(cat, video_id, n)
    write_frame_store(cat.artifact("frames", video_id), 400)


@pytest.fixture
def cat(tmp_path):
    c = load_catalog(profile="tiny", data_root=str(tmp_path / "data"), overrides={"stages.manifests.shard_size": 4})
    for vid in VIDEOS:
        add_video(c, vid)
    return c


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """The video ids whose clips file the manifests stage reads (in any order)."""
    seen: list[str] = []
    lock = threading.Lock()
    real = manifests._read_clips

    def counting(catalog, video_id):
        with lock:
            seen.append(video_id)
        return real(catalog, video_id)

    monkeypatch.setattr(manifests, "_read_clips", counting)
    return seen


def shard_bytes(cat) -> list[bytes]:
    out = Path(cat.artifact("manifests"))
    return [(out / s["path"]).read_bytes() for s in manifest_info(out)["shards"]]


def cache_index(cat) -> list[dict]:
    meta = pq.read_schema(cat.artifact("clips_cache")).metadata
    return json.loads(json.loads(meta[b"emotionclip.clips_cache"])["index"])


def test_adding_a_video_reads_only_that_videos_clips(cat, reads):
    first = build_manifests(cat, VIDEOS)
    assert sorted(reads) == VIDEOS and first["videos_read"] == 4
    assert [v["video_id"] for v in cache_index(cat)] == VIDEOS
    reads.clear()
    add_video(cat, "v5")
    second = build_manifests(cat, VIDEOS + ["v5"])
    assert reads == ["v5"] and second["videos_read"] == 1
    assert second["videos_with_clips"] == 5 and second["clips"] == 15 and second["kept"] == 10
    assert sorted(set(read_manifests(cat.artifact("manifests"))["video_id"])) == VIDEOS + ["v5"]
    # Nothing new: no clips read and the cache is left as it is.
    reads.clear()
    before = Path(cat.artifact("clips_cache")).stat()
    third = build_manifests(cat, VIDEOS + ["v5"])
    assert reads == [] and third["videos_read"] == 0 and third["kept"] == second["kept"]
    after = Path(cat.artifact("clips_cache")).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_rewritten_clips_of_one_video_are_picked_up(cat, reads):
    build_manifests(cat, VIDEOS)
    reads.clear()
    write_clips(cat, "v2", n=3, text="Changed!")  # same rows, other text
    build_manifests(cat, VIDEOS)
    assert reads == ["v2"]
    kept = read_manifests(cat.artifact("manifests"))
    assert set(kept.loc[kept.video_id == "v2", "text"]) == {"Changed!"}
    assert set(kept.loc[kept.video_id != "v2", "text"]) == {"Oh no!"}
    reads.clear()
    write_clips(cat, "v3", n=6)  # more clips
    counts = build_manifests(cat, VIDEOS)
    assert reads == ["v3"] and counts["clips"] == 15


def test_a_changed_frame_store_is_recounted_without_reading_clips(cat, reads):
    build_manifests(cat, VIDEOS)
    reads.clear()
    write_frame_store(cat.artifact("frames", "v1"), 30)  # clip 0 (frames 8..40) now runs past the end
    counts = build_manifests(cat, VIDEOS)
    assert reads == [] and counts["rejected_frames_out_of_range"] == 3  # every v1 clip (before v1:2's neutral)
    rejected = read_parquet(cat.artifact("rejected"))
    assert set(rejected.loc[rejected.video_id == "v1", "reason"]) == {"frames_out_of_range"}


def test_a_removed_video_leaves_the_manifests_and_the_cache(cat, reads):
    build_manifests(cat, VIDEOS)
    reads.clear()
    counts = build_manifests(cat, ["v1", "v2", "v4"])
    assert reads == [] and counts["videos_with_clips"] == 3
    assert "v3" not in set(read_manifests(cat.artifact("manifests"))["video_id"])
    assert [v["video_id"] for v in cache_index(cat)] == ["v1", "v2", "v4"]
    # Coming back, it is read again.
    build_manifests(cat, VIDEOS)
    assert reads == ["v3"]


@pytest.mark.parametrize("n", [5, 900])  # 900: more rows than one Parquet write batch (1024)
def test_incremental_builds_give_the_bytes_of_a_build_from_scratch(cat, reads, n):
    cat = load_catalog(profile="tiny", data_root=cat.data_root,
                       overrides={"stages.manifests.shard_size": 1000 if n > 5 else 4})
    build_manifests(cat, ["v1", "v3"])
    build_manifests(cat, ["v1", "v2", "v3"])
    write_clips(cat, "v3", n=n)
    write_clips(cat, "v4", n=n)
    build_manifests(cat, VIDEOS + ["v1"])  # listed twice: counted once
    incremental = shard_bytes(cat)
    rejected = Path(cat.artifact("rejected")).read_bytes()
    cache = Path(cat.artifact("clips_cache")).read_bytes()
    Path(cat.artifact("clips_cache")).unlink()
    reads.clear()
    scratch = build_manifests(cat, VIDEOS)
    assert sorted(reads) == VIDEOS and scratch["kept"] == 4 + 2 * (n - n // 3)
    assert shard_bytes(cat) == incremental and len(incremental) == (3 if n == 5 else 2)
    assert Path(cat.artifact("rejected")).read_bytes() == rejected
    assert Path(cat.artifact("clips_cache")).read_bytes() == cache


def test_changing_a_filter_parameter_reads_no_clips(cat, reads):
    build_manifests(cat, VIDEOS)
    reads.clear()
    looser = load_catalog(profile="tiny", data_root=cat.data_root,
                          overrides={"stages.manifests.shard_size": 4, "stages.filter.max_neutral": 0.9})
    counts = build_manifests(looser, VIDEOS)
    assert reads == [] and counts["kept"] == 12 and counts["rejected_neutral"] == 0
    from_cache = shard_bytes(looser)
    Path(cat.artifact("clips_cache")).unlink()
    build_manifests(looser, VIDEOS)
    assert shard_bytes(looser) == from_cache


def test_unreadable_videos_stay_failures_and_are_read_once_fixed(cat, reads):
    Path(cat.artifact("clips", "v2")).write_bytes(b"not parquet")
    Path(cat.artifact("frames", "v4")).unlink()
    counts = build_manifests(cat, VIDEOS)
    failures = read_parquet(cat.artifact("failures")).set_index("video_id")["error"].to_dict()
    assert sorted(failures) == ["v2", "v4"] and "frames not found at" in failures["v4"]
    assert counts["videos_with_clips"] == 2 and [v["video_id"] for v in cache_index(cat)] == ["v1", "v3"]
    reads.clear()
    write_clips(cat, "v2")
    write_frame_store(cat.artifact("frames", "v4"), 400)
    counts = build_manifests(cat, VIDEOS)
    assert sorted(reads) == ["v2", "v4"] and counts["failures"] == 0 and counts["videos_with_clips"] == 4


def _garbage(path: Path) -> None:
    path.write_bytes(b"PAR1 this is not a clips cache")


def _truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def _flipped_byte(path: Path) -> None:
    # The last byte of the `neutral` column chunk (inside its last page's data): caught by the page checksum.
    data = bytearray(path.read_bytes())
    col = pq.ParquetFile(path).metadata.row_group(0).column(CLIP.names.index("neutral"))
    start = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
    data[start + col.total_compressed_size - 1] ^= 0xFF
    path.write_bytes(bytes(data))


def _rows_dropped(path: Path) -> None:
    # A well-formed Parquet file whose rows no longer match its index.
    table = pq.read_table(path)
    pq.write_table(table.slice(1), path)


def _index_edited(path: Path) -> None:
    # The recorded frame count changed without the index checksum.
    table = pq.read_table(path)
    meta = json.loads(table.schema.metadata[b"emotionclip.clips_cache"])
    meta["index"] = meta["index"].replace('"n_frames":400', '"n_frames":9', 1)
    pq.write_table(table.replace_schema_metadata({b"emotionclip.clips_cache": json.dumps(meta).encode()}), path)


@pytest.mark.parametrize("corrupt", [_garbage, _truncated, _flipped_byte, _rows_dropped, _index_edited])
def test_a_corrupt_cache_is_ignored_and_rebuilt(cat, reads, corrupt, caplog):
    build_manifests(cat, VIDEOS)
    good = shard_bytes(cat)
    good_cache = Path(cat.artifact("clips_cache")).read_bytes()
    corrupt(Path(cat.artifact("clips_cache")))
    reads.clear()
    with caplog.at_level("WARNING", logger="emotionclip.stages.manifests"):
        counts = build_manifests(cat, VIDEOS)
    assert "ignoring the clips cache" in caplog.text
    assert sorted(reads) == VIDEOS and counts["rejected_frames_out_of_range"] == 0
    assert shard_bytes(cat) == good
    assert Path(cat.artifact("clips_cache")).read_bytes() == good_cache
    reads.clear()
    build_manifests(cat, VIDEOS)
    assert reads == []


def test_a_cache_that_cannot_be_written_does_not_stop_the_build(cat, reads, caplog):
    Path(cat.artifact("clips_cache")).parent.parent.mkdir(parents=True, exist_ok=True)
    Path(cat.artifact("clips_cache")).parent.write_text("a file where the cache's folder should be")
    with caplog.at_level("WARNING", logger="emotionclip.stages.manifests"):
        counts = build_manifests(cat, VIDEOS)
    assert "could not write the clips cache" in caplog.text
    assert counts["kept"] == 8 and len(read_manifests(cat.artifact("manifests"))) == 8
    reads.clear()
    build_manifests(cat, VIDEOS)
    assert sorted(reads) == VIDEOS  # nothing cached: every video read again
