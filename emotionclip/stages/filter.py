"""The clip filter (docs/design.md section 4, "Clips and filter").

Defaults are the authors' training code: 2 s < duration < 10 s, text of at
least 3 characters, at least 8 frames, and the paper's neutral < 0.05 (the
code used <= 0.05); person fraction was not filtered (0). All are catalog
parameters (`stages.filter`).

Each rejected clip gets exactly one reason, the first that applies in
`REASONS` order: data problems first (no text, no frame inside the video),
then the authors' length filters, then the emotion filter, then people.
Conditions are written as "keep if", so a NaN score or time is rejected.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from emotionclip.core.catalog import FilterParams

# Priority order: a clip failing several checks is reported under the first.
REASONS: tuple[str, ...] = (
    "no_text",  # fewer than min_text_chars characters after stripping whitespace
    "no_frames",  # no frame of the video inside the sentence (frame_end < frame_start)
    "too_short",  # duration <= min_duration_s
    "too_long",  # duration >= max_duration_s
    "too_few_frames",  # fewer than min_frames frames
    "neutral",  # neutral >= max_neutral (paper keeps neutral < 0.05)
    "low_person_frac",  # person_frac < min_person_frac
)


def rejection_reasons(clips: pd.DataFrame, params: FilterParams) -> pd.Series:
    """Per clip: the first reason (see REASONS) it is rejected for, or None if kept."""
    text_len = clips["text"].fillna("").astype(str).str.strip().str.len().to_numpy()
    start = clips["start_s"].to_numpy(np.float64)
    end = clips["end_s"].to_numpy(np.float64)
    duration = end - start
    n_frames = clips["frame_end"].to_numpy(np.int64) - clips["frame_start"].to_numpy(np.int64) + 1
    neutral = clips["neutral"].to_numpy(np.float64)
    person = clips["person_frac"].to_numpy(np.float64)
    keep_if = {
        "no_text": text_len >= params.min_text_chars,
        "no_frames": n_frames > 0,
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
    clips: pd.DataFrame | pa.Table, params: FilterParams | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split clips into (kept, rejected); `rejected` has an extra `reason` column.
    Row order is preserved in both."""
    params = params or FilterParams()
    df = clips.to_pandas() if isinstance(clips, pa.Table) else clips
    reason = rejection_reasons(df, params)
    kept_mask = reason.isna().to_numpy()
    kept = df.loc[kept_mask].reset_index(drop=True)
    rejected = df.loc[~kept_mask].copy()
    rejected["reason"] = reason[~kept_mask].astype(object)
    return kept, rejected.reset_index(drop=True)
