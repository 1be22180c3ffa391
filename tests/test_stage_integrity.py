"""The stage cache never vouches for a corrupt output: markers record each output's
size and integrity checksum, a mismatch re-runs the stage; leftover temporary
files of a killed run are removed when the stage next runs."""

from __future__ import annotations

import json
import logging
import os
import zipfile
from pathlib import Path

import fsspec
import pandas as pd
import pytest

from emotionclip.core import io
from emotionclip.core.catalog import load_catalog
from emotionclip.core.frame_store import FrameStore
from emotionclip.sample import make_sample_corpus
from emotionclip.stages.download import import_local_folder
from emotionclip.stages.registry import is_up_to_date, run_stage

VID = "sample_00"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    make_sample_corpus(folder, n_videos=1, duration_s=6.0)
    return folder


@pytest.fixture
def catalog(tmp_path, corpus):
    cat = load_catalog(profile="tiny", data_root=str(tmp_path / "data"))
    assert import_local_folder(cat, corpus).video_ids == [VID]
    return cat


def _video_dir(catalog) -> Path:
    return Path(catalog.artifact("video_dir", VID))


def _marker(catalog, stage: str) -> dict:
    return json.loads((_video_dir(catalog) / ".stages" / f"{stage}.json").read_text())


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_fingerprints_read_only_the_integrity_region_and_work_on_fsspec(tmp_path):
    z = tmp_path / "a.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("000000.jpg", b"x" * 5000)
        zf.comment = b'{"fps": 8}'
    fp = io.fingerprint_output(z)
    assert fp["size"] == z.stat().st_size and fp["region"] == "zip-central-directory"
    _flip_byte(z, 100)  # inside the member data, outside the central directory: not covered
    assert io.check_output(z, fp) is None
    with zipfile.ZipFile(z) as zf:
        cd_start = zf.start_dir
    _flip_byte(z, cd_start + 20)  # inside the central directory
    assert "checksum" in io.check_output(z, fp)

    p = tmp_path / "a.parquet"
    io.atomic_write_parquet(p, pd.DataFrame({"a": [1, 2, 3]}))
    fp = io.fingerprint_output(p)
    assert fp["region"] == "parquet-footer"
    mem = fsspec.filesystem("memory")
    mem.pipe("/fp/a.parquet", p.read_bytes())
    assert io.fingerprint_output("memory://fp/a.parquet") == fp
    mem.pipe("/fp/a.parquet", p.read_bytes()[:-3])
    assert io.check_output("memory://fp/a.parquet", fp) == f"size {fp['size'] - 3} != {fp['size']}"
    with pytest.raises(ValueError, match="PAR1"):
        io.fingerprint_output("memory://fp/a.parquet")

    small = tmp_path / "x.json"
    small.write_text("{}")
    assert io.fingerprint_output(small)["region"] == "whole-file"


def test_truncated_frames_zip_is_rebuilt_not_trusted(catalog, caplog):
    first = run_stage(catalog, "frames", VID)
    assert first["skipped"] is False
    frames_zip = _video_dir(catalog) / "frames.zip"
    good = frames_zip.read_bytes()

    os.truncate(frames_zip, len(good) - 100)  # a partial copy or a full disk
    assert not is_up_to_date(catalog, "frames", VID)
    with caplog.at_level(logging.WARNING, logger="emotionclip.stages.registry"):
        res = run_stage(catalog, "frames", VID)
    assert res["skipped"] is False
    expected = f"frames.zip of {VID} changed since its marker (size {len(good) - 100} != {len(good)})"
    assert res["rerun_reason"] == expected
    assert f"{expected}: re-running frames" in caplog.text
    assert frames_zip.read_bytes() == good  # rebuilt, a valid store again
    with FrameStore(frames_zip) as store:
        assert len(store) == first["n_frames"] and store[len(store) - 1].size == store.size

    # Same size, a damaged central directory: the checksum catches it.
    with zipfile.ZipFile(frames_zip) as zf:
        cd_start = zf.start_dir
    _flip_byte(frames_zip, cd_start + 20)  # the first entry's recorded size
    res = run_stage(catalog, "frames", VID)
    assert res["skipped"] is False and "checksum" in res["rerun_reason"]
    assert frames_zip.read_bytes() == good
    assert run_stage(catalog, "frames", VID)["skipped"] is True
    assert _marker(catalog, "frames")["outputs"]["frames"] == io.fingerprint_output(frames_zip)


def test_corrupt_parquet_footer_is_rebuilt(catalog):
    assert run_stage(catalog, "words", VID)["skipped"] is False
    words = _video_dir(catalog) / "words.parquet"
    good = pd.read_parquet(words)
    size = words.stat().st_size
    meta_len = int.from_bytes(words.read_bytes()[-8:-4], "little")
    _flip_byte(words, size - 8 - meta_len // 2)  # the middle of the footer metadata
    res = run_stage(catalog, "words", VID)
    assert res["skipped"] is False and res["rerun_reason"].startswith(f"words.parquet of {VID} changed")
    pd.testing.assert_frame_equal(pd.read_parquet(words), good)
    assert run_stage(catalog, "words", VID)["skipped"] is True


def test_markers_without_fingerprints_are_honoured_and_completed(catalog):
    run_stage(catalog, "words", VID)
    run_stage(catalog, "frames", VID)
    for stage in ("words", "frames"):  # as the code before fingerprints wrote them
        path = _video_dir(catalog) / ".stages" / f"{stage}.json"
        old = {k: v for k, v in _marker(catalog, stage).items() if k != "outputs"}
        path.write_text(json.dumps(old))
    assert is_up_to_date(catalog, "words", VID)
    assert run_stage(catalog, "words", VID)["skipped"] is True
    assert _marker(catalog, "words")["outputs"]["words"] == io.fingerprint_output(_video_dir(catalog) / "words.parquet")

    # An old marker cannot vouch for a zip with no readable central directory either.
    frames_zip = _video_dir(catalog) / "frames.zip"
    os.truncate(frames_zip, frames_zip.stat().st_size - 10)
    res = run_stage(catalog, "frames", VID)
    assert res["skipped"] is False and "End Of Central Directory" in res["rerun_reason"]
    assert "outputs" in _marker(catalog, "frames")


def test_inputs_with_a_corrupt_output_are_not_ready(catalog):
    run_stage(catalog, "frames", VID)
    frames_zip = _video_dir(catalog) / "frames.zip"
    os.truncate(frames_zip, frames_zip.stat().st_size - 1)
    from emotionclip.core.errors import StageError

    with pytest.raises(StageError, match=r"inputs not ready: run frames first \(frames: frames.zip of .* changed"):
        run_stage(catalog, "humans", VID)


def test_stale_temp_files_of_the_stage_are_removed_others_kept(catalog):
    vdir = _video_dir(catalog)
    (vdir / ".stages").mkdir(exist_ok=True)
    mine = [vdir / ".frames.zip.tmp-deadbeef", vdir / ".stages" / ".frames.json.tmp-0123abcd"]
    theirs = [vdir / ".words.parquet.tmp-deadbeef", vdir / ".stages" / ".words.json.tmp-0123abcd"]

    def plant() -> None:
        for p in mine + theirs:
            p.write_bytes(b"half written by a killed run")
        (vdir / ".frames.zip.tmp-0badc0de").mkdir(exist_ok=True)  # atomic_path may make folders too
        (vdir / ".frames.zip.tmp-0badc0de" / "part").write_bytes(b"x")

    plant()
    assert run_stage(catalog, "frames", VID)["skipped"] is False  # not up to date yet
    assert not any(p.exists() for p in mine) and not (vdir / ".frames.zip.tmp-0badc0de").exists()
    assert all(p.exists() for p in theirs)

    plant()
    assert run_stage(catalog, "frames", VID, force=True)["skipped"] is False
    assert not any(p.exists() for p in mine) and not (vdir / ".frames.zip.tmp-0badc0de").exists()
    assert all(p.exists() for p in theirs)
    with FrameStore(vdir / "frames.zip") as store:
        assert len(store) > 0


@pytest.mark.slow
def test_prefect_task_of_a_corrupt_output_is_not_cached(catalog):
    from prefect import flow

    from tasks.dataset import TASKS

    @flow(name="integrity-check")
    def frames_state(cat) -> tuple[str, dict]:
        state = TASKS["frames"](cat, [VID], return_state=True)
        [outcome] = state.result()
        return state.name, {**outcome.summary, "outcome": outcome.outcome}

    run_stage(catalog, "frames", VID)
    assert frames_state(catalog)[0] == "Cached"
    frames_zip = _video_dir(catalog) / "frames.zip"
    os.truncate(frames_zip, frames_zip.stat().st_size - 100)
    name, summary = frames_state(catalog)
    assert name == "Completed", name
    assert summary["outcome"] == "ran" and summary["skipped"] is False
    assert "changed since its marker" in summary["rerun_reason"]
    with FrameStore(frames_zip) as store:
        assert len(store) == summary["n_frames"]
