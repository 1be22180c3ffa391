"""Clips (docs/design.md section 4, "Clips and filter"): one clip per sentence.

A clip spans frames `ceil(start_s * fps)` .. `floor(end_s * fps)` inclusive,
clipped to the frames that exist. It carries the sentence's text and emotion
scores, every person box of its frames and `person_frac` (the fraction of
its frames with at least one box). A sentence with no frames inside the
video keeps `frame_end < frame_start`; the filter rejects it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from emotionclip.core.errors import StageError
from emotionclip.core.schemas import BOX, CLIP, LOGIT_COLUMNS, PROB_COLUMNS

STAGE = "clips"
PAPER_FPS = 8  # paper: frames at 8 FPS
# Caption times are decimals (1.3 s) that are not exact in binary: 1.3 * 8 is
# 10.400000000000002. A tolerance far below one frame keeps exact frame
# boundaries (start 0.125 s -> frame 1) from moving by one.
_EPS = 1e-6
_BOX_FIELDS = [f.name for f in BOX]
_SCORE_COLUMNS = LOGIT_COLUMNS + PROB_COLUMNS + ["neutral"]


def frame_range(start_s: float, end_s: float, fps: float, n_frames: int) -> tuple[int, int]:
    """Inclusive frame range of [start_s, end_s] at `fps`, clipped to [0, n_frames - 1].
    Empty (end < start) when no frame falls inside."""
    first = max(math.ceil(start_s * fps - _EPS), 0)
    last = min(math.floor(end_s * fps + _EPS), n_frames - 1)
    return first, last


def make_clips(
    video_id: str,
    sentences: pd.DataFrame,
    sentiment: pd.DataFrame,
    detections: pd.DataFrame,
    n_frames: int,
    fps: float = PAPER_FPS,
) -> pd.DataFrame:
    """One row per sentence, per `schemas.CLIP` (ordered by sentence_idx).

    `sentences`, `sentiment`, `detections` follow schemas SENTENCES, SENTIMENT
    and HUMANS; `n_frames` is the number of frames that exist (the frame
    store's length). Every sentence needs its scores (ValueError otherwise).
    """
    scores = sentiment.set_index("sentence_idx")
    missing = sorted(set(sentences["sentence_idx"]) - set(scores.index))
    if missing:
        raise ValueError(f"no sentiment scores for sentence(s) {missing[:10]}")
    sents = sentences.sort_values("sentence_idx", kind="stable").reset_index(drop=True)
    scores = scores.loc[sents["sentence_idx"]]

    det = detections.sort_values(["frame_idx", "conf"], ascending=[True, False], kind="stable")
    det_frames = det["frame_idx"].to_numpy(dtype=np.int64)
    det_cols = {c: det[c].to_numpy() for c in _BOX_FIELDS}

    starts, ends, boxes, fracs = [], [], [], []
    for start_s, end_s in zip(sents["start_s"].to_numpy(float), sents["end_s"].to_numpy(float)):
        first, last = frame_range(start_s, end_s, fps, n_frames)
        starts.append(first)
        ends.append(last)
        if last < first:
            boxes.append([])
            fracs.append(0.0)
            continue
        lo, hi = np.searchsorted(det_frames, [first, last + 1])
        boxes.append([
            {c: (int(det_cols[c][i]) if c == "frame_idx" else float(det_cols[c][i])) for c in _BOX_FIELDS}
            for i in range(lo, hi)
        ])
        with_person = len(np.unique(det_frames[lo:hi]))
        fracs.append(with_person / (last - first + 1))

    idx = sents["sentence_idx"].to_numpy(np.int64)
    columns: dict[str, Any] = {
        "clip_id": [f"{video_id}:{i}" for i in idx],
        "video_id": [video_id] * len(sents),
        "sentence_idx": idx,
        "text": sents["text"].astype(object).tolist(),
        "start_s": sents["start_s"].to_numpy(float),
        "end_s": sents["end_s"].to_numpy(float),
        "frame_start": np.asarray(starts, dtype=np.int64),
        "frame_end": np.asarray(ends, dtype=np.int64),
        **{c: scores[c].to_numpy(np.float32) for c in _SCORE_COLUMNS},
        "person_frac": np.asarray(fracs, dtype=np.float32),
        "boxes": boxes,
    }
    return pa.Table.from_pydict(columns, schema=CLIP).to_pandas()


def clips_table(clips: pd.DataFrame) -> pa.Table:
    """A clips DataFrame (as `make_clips` returns) -> Arrow table with exactly `schemas.CLIP`."""
    return pa.Table.from_pandas(clips[[f.name for f in CLIP]], schema=CLIP, preserve_index=False)


def _n_frames(catalog: Any, video_id: str, det_meta: dict[str, str]) -> int:
    """Frames that exist for this video: the frame store's length when it is
    there (training reads frames from it), capped by the frames detection saw."""
    from emotionclip.core.io import exists

    known = []
    if "n_frames" in det_meta:
        known.append(int(det_meta["n_frames"]))
    frames_path = catalog.artifact("frames", video_id)
    if exists(frames_path):
        from emotionclip.core.frame_store import FrameStore

        known.append(len(FrameStore(frames_path)))
    if not known:
        raise StageError(STAGE, video_id, "number of frames unknown: no frame store and no n_frames in detections")
    return min(known)


def run_clips(catalog: Any, video_id: str) -> dict:
    """Sentences + sentiment + detections of one video -> its clips Parquet."""
    from emotionclip.core.io import atomic_write_parquet, exists, parquet_metadata, read_parquet

    inputs = {}
    for name in ("sentences", "sentiment", "humans"):
        path = catalog.artifact(name, video_id)
        if not exists(path):
            raise StageError(STAGE, video_id, f"{name} not found at {path} (run that stage first)")
        inputs[name] = read_parquet(path)
    det_meta = parquet_metadata(catalog.artifact("humans", video_id))
    fps = catalog.stages.frames.fps
    if "fps" in det_meta and float(det_meta["fps"]) != float(fps):
        raise StageError(STAGE, video_id, f"detections were made at {det_meta['fps']} fps, the catalog says {fps}")
    n_frames = _n_frames(catalog, video_id, det_meta)
    try:
        clips = make_clips(video_id, inputs["sentences"], inputs["sentiment"], inputs["humans"], n_frames, fps)
    except (KeyError, ValueError) as e:
        raise StageError(STAGE, video_id, f"cannot build clips: {e}") from e
    atomic_write_parquet(
        catalog.artifact("clips", video_id), clips_table(clips), schema=CLIP,
        metadata={"fingerprint": catalog.stage_fingerprint(STAGE), "n_frames": str(n_frames), "fps": str(fps)},
    )
    n_frames_in = int((clips["frame_end"] >= clips["frame_start"]).sum()) if len(clips) else 0
    return {"video_id": video_id, "clips": int(len(clips)), "clips_with_frames": n_frames_in, "n_frames": n_frames}
