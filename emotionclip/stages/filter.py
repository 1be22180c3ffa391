"""The clip filter (docs/design.md section 4, "Clips and filter").

Defaults are the authors' training code: 2 s < duration < 10 s, text of at
least 3 characters, at least 8 frames, and the paper's neutral < 0.05 (the
code used <= 0.05); person fraction was not filtered (0). All are catalog
parameters (`stages.filter`).

Each rejected clip gets exactly one reason, the first that applies in
`REASONS` order: data problems first (no text, no frame inside the video, a
frame range past the end of the frame store, invalid sentiment scores), then the
authors' length filters, then the emotion filter, then people.
Conditions are written as "keep if", so a NaN score or time is rejected.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd
import pyarrow as pa

from emotionclip.core.catalog import FilterParams
from emotionclip.core.schemas import score_problems

# Priority order: a clip failing several checks is reported under the first.
REASONS: tuple[str, ...] = (
    "no_text",  # fewer than min_text_chars characters after stripping whitespace
    "no_frames",  # no frame of the video inside the sentence (frame_end < frame_start)
    "frames_out_of_range",  # frame range outside the video's frame store (checked when frame counts are given)
    "invalid_scores",  # a logit or probability not finite, or probabilities not summing to 1
    "too_short",  # duration <= min_duration_s
    "too_long",  # duration >= max_duration_s
    "too_few_frames",  # fewer than min_frames frames
    "neutral",  # neutral >= max_neutral (paper keeps neutral < 0.05)
    "low_person_frac",  # person_frac < min_person_frac
)


def rejection_reasons(
    clips: pd.DataFrame, params: FilterParams, frame_counts: Mapping[str, int] | None = None
) -> pd.Series:
    """Per clip: the first reason (see REASONS) it is rejected for, or None if kept.
    `frame_counts` (video id -> frames in its store) enables `frames_out_of_range`;
    a video missing from it counts as having no frames."""
    text_len = clips["text"].fillna("").astype(str).str.strip().str.len().to_numpy()
    start = clips["start_s"].to_numpy(np.float64)
    end = clips["end_s"].to_numpy(np.float64)
    duration = end - start
    n_frames = clips["frame_end"].to_numpy(np.int64) - clips["frame_start"].to_numpy(np.int64) + 1
    neutral = clips["neutral"].to_numpy(np.float64)
    person = clips["person_frac"].to_numpy(np.float64)
    if frame_counts is None:
        in_store = np.ones(len(clips), dtype=bool)
    else:
        available = clips["video_id"].map(lambda v: frame_counts.get(v, 0)).to_numpy(np.int64)
        in_store = (clips["frame_start"].to_numpy(np.int64) >= 0) & (clips["frame_end"].to_numpy(np.int64) < available)
    keep_if = {
        "no_text": text_len >= params.min_text_chars,
        "no_frames": n_frames > 0,
        "frames_out_of_range": in_store,
        "invalid_scores": score_problems(clips) == None,  # noqa: E711 (elementwise)
        "too_short": duration > params.min_duration_s,
        "too_long": duration < params.max_duration_s,
        "too_few_frames": n_frames >= params.min_frames,
        "neutral": neutral < params.max_neutral,
        "low_person_frac": person >= params.min_person_frac,
    }
    reason = np.full(len(clips), None, dtype=object)
    for name in reversed(REASONS):  # earlier reasons overwrite later ones
        reason[~keep_if[name]] = name
    return pd.Series(reason, index=clips.index, name="reason", dtype=object)


def filter_clips(
    clips: pd.DataFrame | pa.Table, params: FilterParams | None = None,
    frame_counts: Mapping[str, int] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split clips into (kept, rejected); `rejected` has an extra `reason` column.
    Row order is preserved in both. `frame_counts`: see `rejection_reasons`."""
    params = params or FilterParams()
    df = clips.to_pandas() if isinstance(clips, pa.Table) else clips
    reason = rejection_reasons(df, params, frame_counts)
    kept_mask = reason.isna().to_numpy()
    kept = df.loc[kept_mask].reset_index(drop=True)
    rejected = df.loc[~kept_mask].copy()
    rejected["reason"] = reason[~kept_mask].astype(object)
    return kept, rejected.reset_index(drop=True)
