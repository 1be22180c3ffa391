"""The stage registry: up-to-date checks, re-runs on parameter changes, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from emotionclip.core.catalog import REPO_ROOT, load_catalog
from emotionclip.stages.download import import_local_folder
from emotionclip.core.errors import StageError
from emotionclip.stages.registry import is_up_to_date, list_video_ids, run_stage
from emotionclip.sample import make_sample_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    make_sample_corpus(folder, n_videos=2, duration_s=12.0)
    return folder


@pytest.fixture
def catalog(tmp_path, corpus):
    cat = load_catalog(profile="tiny", data_root=str(tmp_path / "data"))
    ids = import_local_folder(cat, corpus).video_ids
    assert ids == list_video_ids(cat) == ["sample_00", "sample_01"]
    return cat


def test_second_run_skips_and_param_change_reruns_only_downstream(catalog, tmp_path):
    vid = "sample_00"
    first = run_stage(catalog, "words", vid)
    assert first["skipped"] is False and first["n_words"] > 0
    run_stage(catalog, "frames", vid)
    assert run_stage(catalog, "words", vid)["skipped"] is True
    assert run_stage(catalog, "frames", vid)["skipped"] is True

    changed = load_catalog(profile="tiny", data_root=catalog.data_root,
                           overrides={"stages.frames.jpeg_quality": 5})
    assert is_up_to_date(changed, "words", vid)
    assert not is_up_to_date(changed, "frames", vid)
    assert run_stage(changed, "frames", vid)["skipped"] is False

    # A deleted output makes the stage run again even though its marker is there.
    (tmp_path / "data" / "videos" / vid / "words.parquet").unlink()
    assert run_stage(catalog, "words", vid)["skipped"] is False


def test_missing_inputs_and_bad_ids_are_clear_errors(catalog):
    with pytest.raises(StageError, match=r"\[sentences\] video sample_01: inputs not ready: run words first"):
        run_stage(catalog, "sentences", "sample_01")
    with pytest.raises(ValueError, match="invalid video id"):
        run_stage(catalog, "words", "../etc")
    with pytest.raises(StageError, match="not downloaded"):
        run_stage(catalog, "words", "nope")


def test_stage_cli_runs_one_video_without_a_server(catalog):
    cmd = [sys.executable, "-m", "emotionclip.cli", "stage", "words", "--video-id", "sample_01",
           "--profile", "tiny", "--data-root", catalog.data_root]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["n_words"] > 0
    bad = subprocess.run(cmd[:6] + ["x/../y"] + cmd[7:], capture_output=True, text=True, cwd=REPO_ROOT)
    assert bad.returncode == 1 and "invalid video id" in bad.stderr
    badkey = subprocess.run(cmd + ["--set", "stages.words.nope=1"], capture_output=True, text=True, cwd=REPO_ROOT)
    assert badkey.returncode == 2 and "stages.words: unknown key" in badkey.stderr


def test_run_slot_is_held_only_while_a_stage_really_runs(catalog):
    """The flow's GPU slot (`run_slot`) wraps a stage's run, never its up-to-date check."""
    import contextlib

    held = []

    @contextlib.contextmanager
    def slot():
        held.append("enter")
        yield
        held.append("exit")

    assert run_stage(catalog, "words", "sample_00", run_slot=slot)["skipped"] is False
    assert held == ["enter", "exit"]
    assert run_stage(catalog, "words", "sample_00", run_slot=slot)["skipped"] is True
    assert held == ["enter", "exit"]  # up to date: no slot taken


def test_replica_of_a_processed_video_is_up_to_date_under_its_own_id(catalog, tmp_path):
    """`replicate_video` (the scale test's and benchmark's stand-in for thousands of
    videos): the replica's markers are its own, so each stage is up to date for it,
    and a change to its copied output is still caught."""
    from emotionclip.core import io
    from emotionclip.stages.growth import replicate_video
    from emotionclip.stages.registry import VIDEO_STAGES
    from emotionclip.stages.chain import run_video

    run_video(catalog, "sample_01")
    extra = tmp_path / "more-corpus"
    replicate_video(catalog, "sample_01", "copy-01", corpus=str(extra))
    assert all(is_up_to_date(catalog, s, "copy-01") for s in VIDEO_STAGES)
    assert all(r["skipped"] for r in run_video(catalog, "copy-01").values())
    clips = io.read_parquet(catalog.artifact("clips", "copy-01"))
    assert set(clips["video_id"]) == {"copy-01"} and all(c.startswith("copy-01:") for c in clips["clip_id"])
    assert sorted(p.name for p in extra.iterdir()) == ["copy-01.en.vtt", "copy-01.mp4"]
    # a folder import of the corpus finds the replica already imported
    assert import_local_folder(catalog, extra).video_ids == ["copy-01"]
    (tmp_path / "data" / "videos" / "copy-01" / "words.parquet").unlink()
    assert not is_up_to_date(catalog, "words", "copy-01") and is_up_to_date(catalog, "words", "sample_01")
