"""The per-video chain (`emotionclip.stages.chain`): stage-major over a set of videos,
a failed video dropping out of every later stage while the others go on, typed
outcomes, one slot per real run of a stage over many videos."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from emotionclip.core.catalog import load_catalog
from emotionclip.sample import make_sample_corpus
from emotionclip.stages.chain import (
    StageOutcome, gates, passed, run_stage_over, run_videos, video_results,
)
from emotionclip.stages.download import import_local_folder
from emotionclip.stages.registry import VIDEO_STAGES


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    make_sample_corpus(folder, n_videos=2, duration_s=12.0)
    return folder


@pytest.fixture
def catalog(tmp_path, corpus):
    cat = load_catalog(profile="tiny", data_root=str(tmp_path / "data"),
                       overrides={"stages.filter.max_neutral": 0.5, "stages.humans.imgsz": 320})
    assert import_local_folder(cat, corpus).video_ids == ["sample_00", "sample_01"]
    return cat


def test_gates_follow_the_chain():
    assert {s: gates(s) for s in VIDEO_STAGES} == {
        "words": (), "frames": (), "sentences": ("words", "frames"), "sentiment": ("sentences",),
        "humans": ("sentiment",), "clips": ("humans",)}


def test_a_failed_video_drops_out_of_every_later_stage(catalog):
    # sample_01's captions are gone: its words stage fails (its frames, a root, still run)
    for vtt in Path(catalog.artifact("video_dir", "sample_01")).rglob("*.vtt"):
        vtt.unlink()
    good, bad = run_videos(catalog, ["sample_00", "sample_01"])
    assert good.ok and [o.outcome for o in good.outcomes.values()] == ["ran"] * len(VIDEO_STAGES)
    assert not bad.ok and bad.stage == "words" and not bad.transient and "sample_01" in bad.error
    assert list(bad.outcomes) == ["words", "frames"] and bad.outcomes["frames"].outcome == "ran"
    assert bad.done_stages() == ["frames"]  # no detection for a video whose captions are unusable

    again = {r.video_id: r for r in run_videos(catalog, ["sample_00", "sample_01"])}
    assert [o.outcome for o in again["sample_00"].outcomes.values()] == ["cached"] * len(VIDEO_STAGES)
    assert again["sample_01"].stage == "words" and again["sample_01"].outcomes["frames"].outcome == "cached"
    row = again["sample_00"].table_row()
    assert row["humans"] == "cached" and row["error"] == ""
    assert type(again["sample_01"]).from_dict(again["sample_01"].to_dict()).to_dict() == again["sample_01"].to_dict()


def test_a_stage_over_many_videos_takes_one_slot_for_its_real_run(catalog):
    held = []

    @contextlib.contextmanager
    def slot():
        held.append("enter")
        yield

    ids = ["sample_00", "sample_01"]
    run_stage_over(catalog, "words", ids)
    assert VIDEO_STAGES["sentences"].run_many is not None  # filled across videos
    first = run_stage_over(catalog, "sentences", ids, run_slot=slot)
    assert [o.outcome for o in first] == ["ran", "ran"] and held == ["enter"]
    second = run_stage_over(catalog, "sentences", ids, run_slot=slot)
    assert [o.outcome for o in second] == ["cached", "cached"] and held == ["enter"]  # cached: no slot
    # inputs not ready (no sentences for sentiment of an unknown id; bad ids) fail per video
    out = run_stage_over(catalog, "sentiment", ["sample_00", "../x"])
    assert [o.outcome for o in out] == ["ran", "failed"] and "invalid video id" in out[1].reason


def test_a_stage_task_that_failed_as_a_whole_fails_the_videos_it_would_have_run():
    ok = [StageOutcome(v, s, "ran") for v in ("a", "b") for s in ("words", "frames")]
    words = [o for o in ok if o.stage == "words"]
    frames = [o for o in ok if o.stage == "frames"][:1]  # b failed its frames
    frames.append(StageOutcome("b", "frames", "failed", reason="corrupt video"))
    assert passed(["a", "b"], [words, frames]) == ["a"]
    results = video_results(["a", "b"], {"words": words, "frames": frames,
                                         "sentences": MemoryError("the worker ran out of memory")})
    a, b = results
    assert a.stage == "sentences" and a.transient and "MemoryError" in a.error
    assert b.stage == "frames" and not b.transient and "sentences" not in b.outcomes
