"""Clips: frame ranges at boundaries, boxes per clip, person_frac, run_clips I/O."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest

from emotionclip.core.catalog import load_catalog
from emotionclip.stages.clips import clips_table, frame_range, make_clips, run_clips
from emotionclip.core.errors import StageError
from emotionclip.core.io import atomic_write_parquet, parquet_metadata, read_parquet
from emotionclip.core.schemas import CLIP, HUMANS, LOGIT_COLUMNS, PROB_COLUMNS, SENTENCES, SENTIMENT


def sentences(times: list[tuple[float, float]], texts: list[str] | None = None) -> pd.DataFrame:
    texts = texts or [f"sentence number {i}." for i in range(len(times))]
    return pa.Table.from_pydict({
        "sentence_idx": list(range(len(times))), "text": texts,
        "start_s": [t[0] for t in times], "end_s": [t[1] for t in times], "n_words": [3] * len(times),
    }, schema=SENTENCES).to_pandas()


def sentiment(n: int, neutral: float = 0.01) -> pd.DataFrame:
    cols = {"sentence_idx": list(range(n))[::-1]}  # deliberately not in sentence order
    for i, c in enumerate(LOGIT_COLUMNS):
        cols[c] = [float(i + k) for k in range(n)][::-1]
    for c in PROB_COLUMNS:
        cols[c] = [1 / 7] * n
    cols["neutral"] = [neutral + k for k in range(n)][::-1]
    return pa.Table.from_pydict(cols, schema=SENTIMENT).to_pandas()


def detections(rows: list[tuple[int, float]]) -> pd.DataFrame:
    """(frame_idx, conf) rows with a fixed box."""
    return pa.Table.from_pydict({
        "frame_idx": [r[0] for r in rows], "x1": [0.1] * len(rows), "y1": [0.2] * len(rows),
        "x2": [0.5] * len(rows), "y2": [0.9] * len(rows), "conf": [r[1] for r in rows],
    }, schema=HUMANS).to_pandas()


NO_DETECTIONS = HUMANS.empty_table().to_pandas()


@pytest.mark.parametrize("start,end,expected", [
    (0.0, 1.0, (0, 8)),  # both ends on a frame: inclusive
    (0.125, 1.0, (1, 8)),
    (0.1, 0.9, (1, 7)),  # ceil / floor
    (1.3, 2.6, (11, 20)),  # 1.3 * 8 = 10.400000000000002 in binary
    (0.3, 0.7, (3, 5)),
    (2.675, 2.875, (22, 23)),  # 2.875 * 8 = 23 exactly, 2.675 * 8 = 21.4
    (0.126, 0.249, (2, 1)),  # no frame inside: empty range
])
def test_frame_range_ceil_floor(start, end, expected):
    assert frame_range(start, end, 8, n_frames=10_000) == expected


def test_frame_range_float_noise_does_not_move_exact_boundaries():
    # 0.1 + 0.2 = 0.30000000000000004; at 10 fps that is frame 3 exactly, not 4.
    assert frame_range(0.1 + 0.2, 0.7, 10, n_frames=100) == (3, 7)


@pytest.mark.parametrize("start,end,n_frames,expected", [
    (9.0, 11.0, 80, (72, 79)),  # clipped to the last frame of the store
    (10.0, 12.0, 80, (80, 79)),  # starts after the last frame: empty
    (-0.5, 1.0, 80, (0, 8)),  # never before frame 0
    (0.0, 1.0, 0, (0, -1)),  # an empty store
])
def test_frame_range_clipped_to_the_store(start, end, n_frames, expected):
    assert frame_range(start, end, 8, n_frames) == expected


def test_make_clips_rows_scores_and_boxes():
    sents = sentences([(0.0, 1.0), (1.3, 2.6), (20.0, 22.0)], ["Hi there.", "What?", "Too late."])
    det = detections([(0, 0.3), (0, 0.9), (3, 0.5), (8, 0.4), (9, 0.7), (40, 0.8)])
    clips = make_clips("vid_1", sents, sentiment(3), det, n_frames=100)
    assert clips_table(clips).schema.equals(CLIP)
    assert clips["clip_id"].tolist() == ["vid_1:0", "vid_1:1", "vid_1:2"]
    assert clips["text"].tolist() == ["Hi there.", "What?", "Too late."]
    assert clips[["frame_start", "frame_end"]].values.tolist() == [[0, 8], [11, 20], [99 + 61, 99]]
    # Scores are joined by sentence_idx, not by row position.
    assert clips["logit_anger"].tolist() == [0.0, 1.0, 2.0]
    assert clips["neutral"].tolist() == pytest.approx([0.01, 1.01, 2.01])
    # Clip 0 spans frames 0..8: boxes on frames 0 (two), 3, 8; frame 9 is outside.
    b0 = clips.loc[0, "boxes"]
    assert [b["frame_idx"] for b in b0] == [0, 0, 3, 8]
    assert [round(b["conf"], 3) for b in b0[:2]] == [0.9, 0.3]  # per frame, most confident first
    assert set(b0[0]) == {"frame_idx", "x1", "y1", "x2", "y2", "conf"}
    assert b0[0]["y2"] == pytest.approx(0.9)
    assert clips.loc[0, "person_frac"] == pytest.approx(3 / 9)
    assert len(clips.loc[1, "boxes"]) == 0 and clips.loc[1, "person_frac"] == 0
    assert len(clips.loc[2, "boxes"]) == 0 and clips.loc[2, "person_frac"] == 0


def test_person_frac_counts_frames_not_boxes():
    sents = sentences([(0.0, 0.375)])  # frames 0..3
    det = detections([(1, 0.5), (1, 0.6), (1, 0.7), (2, 0.5)])
    clips = make_clips("v", sents, sentiment(1), det, n_frames=10)
    assert clips.loc[0, "person_frac"] == pytest.approx(0.5)
    assert len(clips.loc[0, "boxes"]) == 4


def test_detector_that_finds_nobody_and_video_without_sentences():
    clips = make_clips("v", sentences([(0.0, 3.0)]), sentiment(1), NO_DETECTIONS, n_frames=50)
    assert clips.loc[0, "person_frac"] == 0 and len(clips.loc[0, "boxes"]) == 0
    empty = make_clips("v", sentences([]), sentiment(0), NO_DETECTIONS, n_frames=50)
    assert len(empty) == 0 and clips_table(empty).schema.equals(CLIP)


def test_missing_sentiment_is_an_error():
    with pytest.raises(ValueError, match=r"sentence\(s\) \[1\]"):
        make_clips("v", sentences([(0, 3), (3, 6)]), sentiment(1), NO_DETECTIONS, n_frames=50)


def test_fps_is_a_parameter():
    clips = make_clips("v", sentences([(0.5, 1.0)]), sentiment(1), NO_DETECTIONS, n_frames=100, fps=4)
    assert clips[["frame_start", "frame_end"]].values.tolist() == [[2, 4]]


# -- run_clips: reads the per-video Parquets, writes the clips Parquet ------------

@pytest.fixture()
def catalog(tmp_path):
    return load_catalog(profile="tiny", data_root=str(tmp_path / "data"))


def _write_inputs(cat, vid, n_frames=40, det_fps="8"):
    sents = sentences([(0.0, 3.0), (4.0, 7.0)])
    atomic_write_parquet(cat.artifact("sentences", vid), sents, schema=SENTENCES)
    atomic_write_parquet(cat.artifact("sentiment", vid), sentiment(2), schema=SENTIMENT)
    atomic_write_parquet(cat.artifact("humans", vid), detections([(2, 0.5), (35, 0.9)]), schema=HUMANS,
                         metadata={"n_frames": str(n_frames), "fps": det_fps})


def test_run_clips_uses_n_frames_from_detections(catalog):
    _write_inputs(catalog, "abc", n_frames=40)  # 5 s of frames; sentence 1 runs to 7 s
    summary = run_clips(catalog, "abc")
    assert summary == {"video_id": "abc", "clips": 2, "clips_with_frames": 2, "n_frames": 40}
    path = catalog.artifact("clips", "abc")
    clips = read_parquet(path)
    assert clips[["frame_start", "frame_end"]].values.tolist() == [[0, 24], [32, 39]]
    assert clips["person_frac"].tolist() == pytest.approx([1 / 25, 1 / 8])
    meta = parquet_metadata(path)
    assert meta["fingerprint"] == catalog.stage_fingerprint("clips") and meta["n_frames"] == "40"


def test_run_clips_names_the_video_and_missing_input(catalog):
    with pytest.raises(StageError, match=r"\[clips\] video nope: sentences not found"):
        run_clips(catalog, "nope")


def test_run_clips_refuses_detections_at_another_fps(catalog):
    _write_inputs(catalog, "abc", det_fps="25")
    with pytest.raises(StageError, match="25"):
        run_clips(catalog, "abc")
