"""Arrow schemas of every table the pipeline writes (docs/design.md section 3).

One place: writers cast to these, readers validate against them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

# Label order of j-hartmann/emotion-english-distilroberta-base; neutral is index 4.
EMOTIONS: tuple[str, ...] = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")
NEUTRAL_INDEX = 4
LOGIT_COLUMNS = [f"logit_{e}" for e in EMOTIONS]
PROB_COLUMNS = [f"prob_{e}" for e in EMOTIONS]

# FullStop labels (oliverguhr/fullstop-punctuation-multilang-large).
PUNCTUATION_LABELS: tuple[str, ...] = ("0", ".", ",", "?", "-", ":")

WORDS = pa.schema([
    ("word", pa.string()),
    ("start_s", pa.float64()),
    ("end_s", pa.float64()),
    ("precision", pa.string()),  # "word" (caption gave word timing) or "segment" (interpolated in a cue)
])

# One row per person box; frames with nobody have no row. The file's metadata
# holds "n_frames" so "no row" is distinguishable from "frame not processed".
HUMANS = pa.schema([
    ("frame_idx", pa.int32()),
    ("x1", pa.float32()),
    ("y1", pa.float32()),
    ("x2", pa.float32()),
    ("y2", pa.float32()),
    ("conf", pa.float32()),
])

SENTENCES = pa.schema([
    ("sentence_idx", pa.int32()),
    ("text", pa.string()),
    ("start_s", pa.float64()),
    ("end_s", pa.float64()),
    ("n_words", pa.int32()),
])

SENTIMENT = pa.schema(
    [("sentence_idx", pa.int32())]
    + [(c, pa.float32()) for c in LOGIT_COLUMNS]
    + [(c, pa.float32()) for c in PROB_COLUMNS]
    + [("neutral", pa.float32())]
)

BOX = pa.struct([
    ("frame_idx", pa.int32()),
    ("x1", pa.float32()),
    ("y1", pa.float32()),
    ("x2", pa.float32()),
    ("y2", pa.float32()),
    ("conf", pa.float32()),
])

# A clip is one sentence (per-video clips table and, after filtering, the manifest rows).
CLIP = pa.schema(
    [
        ("clip_id", pa.string()),  # "{video_id}:{sentence_idx}"
        ("video_id", pa.string()),
        ("sentence_idx", pa.int32()),
        ("text", pa.string()),
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("frame_start", pa.int32()),  # ceil(start_s * fps)
        ("frame_end", pa.int32()),  # floor(end_s * fps), inclusive
    ]
    + [(c, pa.float32()) for c in LOGIT_COLUMNS]
    + [(c, pa.float32()) for c in PROB_COLUMNS]
    + [
        ("neutral", pa.float32()),
        ("person_frac", pa.float32()),
        ("boxes", pa.list_(BOX)),  # every person box of the clip's frames
    ]
)
MANIFEST = CLIP

REJECTED = pa.schema(list(CLIP) + [pa.field("reason", pa.string())])

FAILURES = pa.schema([
    ("video_id", pa.string()),
    ("stage", pa.string()),
    ("error", pa.string()),
    ("time", pa.string()),  # ISO 8601 UTC
])

# The dataset across runs (emotionclip.core.video_registry): one row per video ever seen.
VIDEO_STATUSES: tuple[str, ...] = ("pending", "done", "failed", "excluded")
VIDEOS = pa.schema([
    ("video_id", pa.string()),
    ("title", pa.string()),
    ("channel", pa.string()),
    ("source", pa.string()),  # "youtube" | "url" | "local"
    ("query", pa.string()),  # the search query that found it; "" if none
    ("url", pa.string()),
    ("first_seen", pa.string()),  # ISO 8601 UTC
    ("added_by_run", pa.string()),  # flow run id, or "cli" / "adopted"
    ("status", pa.string()),  # one of VIDEO_STATUSES
    ("failed_stage", pa.string()),
    ("error", pa.string()),
    ("attempts", pa.int32()),  # failed attempts so far
    ("transient", pa.bool_()),  # the last failure may heal (throttling, network, 5xx)
    ("excluded_reason", pa.string()),
    ("updated", pa.string()),  # ISO 8601 UTC
    ("stages", pa.string()),  # JSON object: stage -> "done" | "failed"
    ("n_clips", pa.int32()),  # kept clips in the current manifests; 0: unknown
])

# One row per build-tv-dataset run; the totals are the registry's after the run.
RUNS = pa.schema([
    ("run_id", pa.string()),
    ("started", pa.string()),  # ISO 8601 UTC
    ("finished", pa.string()),
    ("source", pa.string()),
    ("videos_added", pa.int32()),
    ("videos_done", pa.int32()),
    ("videos_failed", pa.int32()),
    ("videos_excluded", pa.int32()),
    ("clips_added", pa.int32()),
    ("clips_total", pa.int32()),
])


class SchemaError(ValueError):
    pass


def validate_table(table: pa.Table, schema: pa.Schema, name: str) -> None:
    """Raise SchemaError naming the first missing or mistyped column."""
    for field in schema:
        if field.name not in table.schema.names:
            raise SchemaError(f"{name}: missing column {field.name!r}")
        got = table.schema.field(field.name).type
        if not got.equals(field.type):
            raise SchemaError(f"{name}: column {field.name!r} has type {got}, expected {field.type}")


# Softmax outputs stored as float32 sum to 1 within ~1e-6; 1e-3 leaves room for
# rounding yet catches rows that are not probabilities at all.
PROB_SUM_TOLERANCE = 1e-3


def _float_column(data: pa.Table | pd.DataFrame, column: str) -> np.ndarray:
    """A float column as float64 numpy, nulls as NaN."""
    if isinstance(data, pa.Table):
        return data.column(column).to_numpy().astype(np.float64)
    return pd.to_numeric(data[column], errors="coerce").to_numpy(np.float64)


def score_problems(data: pa.Table | pd.DataFrame) -> np.ndarray:
    """Per row, what is wrong with its sentiment scores, or None when they are valid:
    every logit and probability finite, probabilities in [0, 1] and summing to 1
    (within PROB_SUM_TOLERANCE). A NaN logit makes the training loss learn nothing
    without failing, so such rows must never reach a manifest."""
    n = data.num_rows if isinstance(data, pa.Table) else len(data)
    problems = np.full(n, None, dtype=object)
    total = np.zeros(n, dtype=np.float64)
    for column in LOGIT_COLUMNS + PROB_COLUMNS:
        values = _float_column(data, column)
        bad = ~np.isfinite(values)
        if column in PROB_COLUMNS:
            total += values
            bad |= ~((values >= -PROB_SUM_TOLERANCE) & (values <= 1 + PROB_SUM_TOLERANCE))
        for i in np.flatnonzero(bad & (problems == None)):  # noqa: E711 (elementwise)
            problems[i] = f"column {column!r} is {float(values[i])!r}"
    off = np.isfinite(total) & (np.abs(total - 1.0) > PROB_SUM_TOLERANCE)
    for i in np.flatnonzero(off & (problems == None)):  # noqa: E711
        problems[i] = f"columns prob_* sum to {total[i]:.6g}, not 1"
    return problems


def validate_scores(data: pa.Table | pd.DataFrame, name: str) -> None:
    """Raise SchemaError naming `name`, the column and the first clip whose scores
    are invalid (see `score_problems`)."""
    problems = score_problems(data)
    bad = np.flatnonzero(problems != None)  # noqa: E711
    if not len(bad):
        return
    i = int(bad[0])
    if isinstance(data, pa.Table):
        vid, idx = data.column("video_id")[i].as_py(), data.column("sentence_idx")[i].as_py()
    else:
        vid, idx = data["video_id"].iloc[i], data["sentence_idx"].iloc[i]
    raise SchemaError(f"{name}: {problems[i]} for clip video_id={vid!r} sentence_idx={idx} "
                      f"({len(bad)} invalid row(s))")


def to_table(df: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    """DataFrame -> Table with exactly `schema`'s columns, in its order and types."""
    missing = [f.name for f in schema if f.name not in df.columns]
    if missing:
        raise SchemaError(f"missing columns {missing}")
    return pa.Table.from_pandas(df[[f.name for f in schema]], schema=schema, preserve_index=False)
