"""Manifests: shards, deterministic order, atomic switch, schema validation, build_manifests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from emotionclip.core.catalog import load_catalog
from emotionclip.core.io import atomic_write_parquet, read_parquet
from emotionclip.core.manifest_store import (
    MANIFEST_FILE, catalog_fingerprint, manifest_info, read_manifests, write_failures, write_manifests, write_rejected,
)
from emotionclip.stages.manifests import build_manifests
from emotionclip.core.schemas import CLIP, EMOTIONS, FAILURES, MANIFEST, REJECTED, SchemaError
from training_data import write_frame_store


def clip(video_id: str, i: int, *, neutral: float = 0.01, start: float = 1.0, end: float = 5.0, text: str = "Oh no!") -> dict:
    row = {"clip_id": f"{video_id}:{i}", "video_id": video_id, "sentence_idx": i, "text": text,
           "start_s": start, "end_s": end, "frame_start": int(np.ceil(start * 8)), "frame_end": int(np.floor(end * 8)),
           "neutral": neutral, "person_frac": 0.5,
           "boxes": [{"frame_idx": 9, "x1": 0.1, "y1": 0.2, "x2": 0.3, "y2": 0.4, "conf": 0.9}]}
    for k, e in enumerate(EMOTIONS):
        row[f"logit_{e}"] = float(k)
        row[f"prob_{e}"] = neutral if e == "neutral" else (1 - neutral) / 6
    return row


def clips_df(rows: list[dict]) -> pd.DataFrame:
    return pa.Table.from_pylist(rows, schema=CLIP).to_pandas()


def shuffled_clips() -> pd.DataFrame:
    rows = [clip(v, i) for v in ("b", "a", "c") for i in (3, 0, 2, 1)]
    return clips_df(rows)


def test_shards_sorted_and_complete(tmp_path):
    out = tmp_path / "manifests"
    paths = write_manifests(shuffled_clips(), out, shard_size=5, fingerprint="fp1")
    assert [Path(p).name for p in paths] == ["clips-00000.parquet", "clips-00001.parquet", "clips-00002.parquet"]
    assert [pq.read_metadata(p).num_rows for p in paths] == [5, 5, 2]
    df = read_manifests(out)
    assert list(zip(df["video_id"], df["sentence_idx"])) == [(v, i) for v in "abc" for i in range(4)]
    assert list(df.columns) == MANIFEST.names
    assert df.loc[0, "boxes"][0]["conf"] == pytest.approx(0.9)
    info = manifest_info(out)
    assert info["n_clips"] == 12 and info["n_videos"] == 3 and info["fingerprint"] == "fp1"
    assert [s["rows"] for s in info["shards"]] == [5, 5, 2]
    assert info["columns"] == MANIFEST.names


def test_same_clips_give_the_same_bytes(tmp_path):
    a = write_manifests(shuffled_clips(), tmp_path / "a", shard_size=5)
    b = write_manifests(shuffled_clips().sample(frac=1, random_state=1), tmp_path / "b", shard_size=5)
    assert [Path(p).read_bytes() for p in a] == [Path(p).read_bytes() for p in b]


def test_rewrite_switches_atomically_and_cleans_up(tmp_path):
    out = tmp_path / "m"
    first = write_manifests(clips_df([clip("a", i) for i in range(6)]), out, shard_size=2)
    second = write_manifests(clips_df([clip("z", i) for i in range(3)]), out, shard_size=2)
    # The reader sees exactly the new set: no shard of the old set is listed.
    df = read_manifests(out)
    assert df["video_id"].tolist() == ["z"] * 3
    assert all(Path(p).exists() for p in first)  # previous generation kept for readers in flight
    third = write_manifests(clips_df([clip("y", 0)]), out, shard_size=2)
    assert not any(Path(p).exists() for p in first)  # older ones removed
    assert all(Path(p).exists() for p in second + third)
    gens = sorted(p.name for p in out.iterdir() if p.name.startswith("v-"))
    assert len(gens) == 2


def test_a_failed_write_leaves_the_previous_set(tmp_path, monkeypatch):
    out = tmp_path / "m"
    write_manifests(clips_df([clip("a", i) for i in range(4)]), out, shard_size=2)
    import emotionclip.core.manifest_store as m

    calls = {"n": 0}
    real = m.atomic_write_parquet

    def dying(path, table, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return real(path, table, **kw)

    monkeypatch.setattr(m, "atomic_write_parquet", dying)
    with pytest.raises(OSError, match="disk full"):
        write_manifests(clips_df([clip("z", i) for i in range(4)]), out, shard_size=2)
    assert read_manifests(out)["video_id"].tolist() == ["a"] * 4
    assert len([p for p in out.iterdir() if p.name.startswith("v-")]) == 1  # the half-written set is gone


def test_empty_kept_set_writes_one_empty_shard(tmp_path):
    paths = write_manifests(CLIP.empty_table(), tmp_path / "m", shard_size=10)
    assert len(paths) == 1
    df = read_manifests(tmp_path / "m")
    assert len(df) == 0 and list(df.columns) == MANIFEST.names


def test_reader_names_the_missing_or_mistyped_column(tmp_path):
    table = pa.Table.from_pylist([clip("a", 0)], schema=CLIP)
    pq.write_table(table.drop(["person_frac"]), tmp_path / "clips-00000.parquet")
    with pytest.raises(SchemaError, match="clips-00000.parquet: missing column 'person_frac'"):
        read_manifests(tmp_path)
    bad = table.set_column(table.schema.get_field_index("neutral"), "neutral", pa.array(["0.1"]))
    pq.write_table(bad, tmp_path / "one.parquet")
    with pytest.raises(SchemaError, match="'neutral' has type string"):
        read_manifests(tmp_path / "one.parquet")
    with pytest.raises(SchemaError, match="missing column 'boxes'"):
        write_manifests(clips_df([clip("a", 0)]).drop(columns=["boxes"]), tmp_path / "w", shard_size=1)


def test_reader_without_anything_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no manifest shards"):
        read_manifests(tmp_path)


def test_rejected_and_failures(tmp_path):
    rej = clips_df([clip("b", 1), clip("a", 2)]).assign(reason=["neutral", "too_short"])
    write_rejected(rej, tmp_path / "rejected.parquet")
    t = pq.read_table(tmp_path / "rejected.parquet")
    assert t.schema.equals(REJECTED)
    assert t.column("video_id").to_pylist() == ["a", "b"]
    write_failures([{"video_id": "x", "stage": "frames", "error": ValueError("bad")},
                    {"video_id": "y", "stage": "download", "error": "404", "time": "2024-01-01T00:00:00+00:00"}],
                   tmp_path / "failures.parquet")
    f = pq.read_table(tmp_path / "failures.parquet")
    assert f.schema.equals(FAILURES)
    rows = f.to_pylist()
    assert rows[0]["error"] == "bad" and rows[0]["time"].endswith("+00:00")
    assert rows[1]["time"] == "2024-01-01T00:00:00+00:00"
    write_failures([], tmp_path / "none.parquet")
    assert pq.read_table(tmp_path / "none.parquet").num_rows == 0


def test_build_manifests_end_to_end(tmp_path):
    cat = load_catalog(profile="tiny", data_root=str(tmp_path / "data"), overrides={"stages.manifests.shard_size": 2})
    for vid in ("v1", "v2", "v3"):
        write_frame_store(cat.artifact("frames", vid), 100)
    atomic_write_parquet(cat.artifact("clips", "v1"), pa.Table.from_pylist(
        [clip("v1", 0), clip("v1", 1, neutral=0.5), clip("v1", 2, end=2.5), clip("v1", 3, text="x")], schema=CLIP))
    atomic_write_parquet(cat.artifact("clips", "v2"), pa.Table.from_pylist(
        [clip("v2", 0), clip("v2", 1), clip("v2", 2, start=0.0, end=10.0)], schema=CLIP))
    atomic_write_parquet(cat.artifact("clips", "v3"), pa.Table.from_pylist([clip("v3", 0)], schema=CLIP).drop(["text"]))
    earlier = [{"video_id": "v9", "stage": "download", "error": "HTTP 404"}]
    counts = build_manifests(cat, ["v2", "v1", "v3", "v4"], earlier)
    assert counts["videos"] == 4 and counts["videos_with_clips"] == 2 and counts["videos_kept"] == 2
    assert counts["clips"] == 7 and counts["kept"] == 3 and counts["rejected"] == 4
    assert {k: v for k, v in counts.items() if k.startswith("rejected_") and v} == {
        "rejected_neutral": 1, "rejected_too_short": 1, "rejected_no_text": 1, "rejected_too_long": 1}
    assert counts["failures"] == 3 and counts["shards"] == 2
    assert counts["fingerprint"] == catalog_fingerprint(cat)
    kept = read_manifests(cat.artifact("manifests"))
    assert kept["clip_id"].tolist() == ["v1:0", "v2:0", "v2:1"]
    rejected = read_parquet(cat.artifact("rejected"))
    assert sorted(rejected["reason"]) == ["neutral", "no_text", "too_long", "too_short"]
    failures = read_parquet(cat.artifact("failures"))
    assert failures["video_id"].tolist() == ["v9", "v3", "v4"]
    assert "text" in failures.loc[1, "error"] and "not found" in failures.loc[2, "error"]
    assert set(failures["stage"]) == {"download", "manifests"}
    info = json.loads(Path(cat.artifact("manifests"), MANIFEST_FILE).read_text())
    assert info["counts"]["kept"] == 3


def test_fingerprint_follows_the_catalog(tmp_path):
    a = load_catalog(profile="tiny", data_root=str(tmp_path))
    b = load_catalog(profile="tiny", data_root=str(tmp_path), overrides={"stages.filter.max_neutral": 0.2})
    assert catalog_fingerprint(a) != catalog_fingerprint(b)
    assert catalog_fingerprint(a) == catalog_fingerprint(load_catalog(profile="tiny", data_root=str(tmp_path / "x")))


def test_manifests_on_an_fsspec_url():
    import uuid

    import fsspec

    out = f"memory://manifests-{uuid.uuid4().hex[:8]}/m"
    write_manifests(shuffled_clips(), out, shard_size=5)
    write_manifests(shuffled_clips().iloc[:3], out, shard_size=5)
    df = read_manifests(out)
    assert df["clip_id"].tolist() == ["b:0", "b:2", "b:3"]
    fs = fsspec.filesystem("memory")
    assert len([p for p in fs.ls(out.split("://")[1], detail=False) if p.rsplit("/", 1)[-1].startswith("v-")]) == 2
