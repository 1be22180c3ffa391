"""The clip filter: every boundary of every rule, reason priority, NaN handling."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from emotionclip.core.catalog import FilterParams
from emotionclip.stages.filter import REASONS, filter_clips, rejection_reasons
from emotionclip.core.schemas import CLIP, EMOTIONS


def clip(i: int = 0, *, text: str = "I can't believe it!", start: float = 1.0, end: float = 5.0,
         frame_start: int | None = None, frame_end: int | None = None, neutral: float = 0.01,
         person_frac: float = 1.0, logit: float = 0.0) -> dict:
    """A clip row that passes the default filter unless told otherwise."""
    fs = int(np.ceil(start * 8)) if frame_start is None else frame_start
    fe = int(np.floor(end * 8)) if frame_end is None else frame_end
    row = {"clip_id": f"v:{i}", "video_id": "v", "sentence_idx": i, "text": text, "start_s": start, "end_s": end,
           "frame_start": fs, "frame_end": fe, "neutral": neutral, "person_frac": person_frac, "boxes": []}
    for e in EMOTIONS:
        row[f"logit_{e}"] = logit
        row[f"prob_{e}"] = neutral if e == "neutral" else (1 - neutral) / 6
    return row


def frame(rows: list[dict]) -> pd.DataFrame:
    return pa.Table.from_pylist(rows, schema=CLIP).to_pandas()


def reasons(rows: list[dict], frame_counts: dict[str, int] | None = None, **params) -> list:
    return rejection_reasons(frame(rows), FilterParams(**params), frame_counts).tolist()


F32_005 = float(np.float32(0.05))  # how 0.05 comes back from the float32 column


def test_default_params_are_the_authors():
    p = FilterParams()
    assert (p.min_duration_s, p.max_duration_s, p.min_text_chars, p.min_frames, p.max_neutral, p.min_person_frac) == (
        2.0, 10.0, 3, 8, 0.05, 0.0)


def test_a_good_clip_is_kept():
    kept, rejected = filter_clips(frame([clip()]))
    assert len(kept) == 1 and len(rejected) == 0
    assert list(kept.columns) == [f.name for f in CLIP]


@pytest.mark.parametrize("text,reason", [
    ("abc", None), ("  abc  ", None), ("ab", "no_text"), ("  ab \n", "no_text"), ("", "no_text"), ("   ", "no_text"),
    ("😀😀😀", None),  # three characters, not bytes
])
def test_text_length_counts_characters_after_strip(text, reason):
    assert reasons([clip(text=text)]) == [reason]


def test_missing_text_is_no_text():
    df = frame([clip()])
    df.loc[0, "text"] = None
    assert rejection_reasons(df, FilterParams()).tolist() == ["no_text"]


@pytest.mark.parametrize("start,end,reason", [
    (1.0, 3.0, "too_short"),  # exactly 2 s: the authors keep only > 2 s
    (1.0, 3.125, None),  # 2.125 s, 17 frames
    (0.0, 9.875, None),  # just under 10 s
    (0.0, 10.0, "too_long"),  # exactly 10 s is rejected (< 10 s keeps)
    (0.0, 12.5, "too_long"),
    (5.0, 5.5, "too_short"),
])
def test_duration_boundaries(start, end, reason):
    assert reasons([clip(start=start, end=end)]) == [reason]


@pytest.mark.parametrize("n_frames,reason", [(7, "too_few_frames"), (8, None), (9, None)])
def test_min_frames_boundary(n_frames, reason):
    # 3 s clip whose frames were cut short by the end of the frame store.
    assert reasons([clip(start=1.0, end=4.0, frame_start=8, frame_end=8 + n_frames - 1)]) == [reason]


def test_no_frame_inside_the_video_is_no_frames():
    # A sentence after the end of the frame store: frame_end < frame_start.
    assert reasons([clip(start=100.0, end=104.0, frame_start=800, frame_end=399)]) == ["no_frames"]


@pytest.mark.parametrize("neutral,reason", [
    (0.0, None),
    (float(np.nextafter(np.float32(0.05), np.float32(0))), None),  # the largest float32 below 0.05 is kept
    (F32_005, "neutral"),  # the paper keeps neutral < 0.05 strictly
    (0.06, "neutral"),
    (1.0, "neutral"),
    (float("nan"), "invalid_scores"),  # an unscored clip is never kept (prob_neutral is NaN too)
])
def test_neutral_boundary(neutral, reason):
    assert reasons([clip(neutral=neutral)]) == [reason]


def test_neutral_threshold_is_a_parameter():
    assert reasons([clip(neutral=0.3)], max_neutral=0.5) == [None]
    assert reasons([clip(neutral=0.5)], max_neutral=0.5) == ["neutral"]


@pytest.mark.parametrize("frac,reason", [(0.0, "low_person_frac"), (0.49, "low_person_frac"), (0.5, None), (1.0, None)])
def test_person_frac_boundary(frac, reason):
    assert reasons([clip(person_frac=frac)], min_person_frac=0.5) == [reason]


def test_person_frac_not_filtered_by_default():
    assert reasons([clip(person_frac=0.0)]) == [None]


def test_one_reason_per_clip_in_priority_order():
    # Fails every rule at once, then one rule fewer at a time: the reported
    # reason walks down REASONS.
    params = dict(min_person_frac=0.5, frame_counts={"v": 1000})
    worst = dict(text="", start=100.0, end=100.5, frame_start=1200, frame_end=1199, neutral=0.9, person_frac=0.0,
                 logit=float("nan"))
    fixes = [
        dict(text="hello there"),
        dict(frame_start=1200, frame_end=1201),  # past the end of the 1000-frame store
        dict(frame_start=800, frame_end=801),
        dict(logit=0.0),
        dict(start=100.0, end=112.0),  # now too long
        dict(start=100.0, end=104.0),  # duration fine, still 2 frames
        dict(frame_start=800, frame_end=832),
        dict(neutral=0.01),
        dict(person_frac=1.0),
    ]
    row = dict(worst)
    got = []
    for fix in fixes:
        got.append(reasons([clip(**row)], **params)[0])
        row.update(fix)
    got.append(reasons([clip(**row)], **params)[0])
    assert got == list(REASONS) + [None]


def test_filter_splits_rows_and_keeps_order():
    rows = [clip(0), clip(1, neutral=0.5), clip(2, text="a"), clip(3), clip(4, start=0, end=11)]
    kept, rejected = filter_clips(frame(rows))
    assert kept["sentence_idx"].tolist() == [0, 3]
    assert rejected["sentence_idx"].tolist() == [1, 2, 4]
    assert rejected["reason"].tolist() == ["neutral", "no_text", "too_long"]
    assert list(rejected.columns) == [f.name for f in CLIP] + ["reason"]


def test_filter_accepts_arrow_tables_and_empty_input():
    kept, rejected = filter_clips(pa.Table.from_pylist([clip()], schema=CLIP))
    assert len(kept) == 1
    kept, rejected = filter_clips(CLIP.empty_table().to_pandas())
    assert len(kept) == 0 and len(rejected) == 0 and "reason" in rejected.columns
