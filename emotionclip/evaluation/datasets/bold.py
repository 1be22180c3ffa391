"""BoLD (Body Language Dataset, Luo et al. 2020), the public release `BOLD_public/`.

Layout read (as published)::

    <root>/annotations/train.csv   no header, one row per person instance:
    <root>/annotations/val.csv       video, person id, min frame, max frame,
                                     26 category scores (BOLD_CATEGORIES order),
                                     valence, arousal, dominance,
                                     gender, age, ethnicity, annotation confidence
    <root>/videos/<video>          e.g. videos/003/IzvOYVMltkI.mp4/0114.mp4
    <root>/joints/<video>.npy      OpenPose joints, `<video>` without its .mp4
                                   (joints/003/IzvOYVMltkI.mp4/0114.npy); rows:
                                   frame id, person id, 18 x (x, y, confidence)

The test split has no public labels: the paper reports the validation split.
Categories are binarised at >= 0.5 (authors' code). The person's box in a frame
is the extent of its non-zero joints; joint frame ids are made relative to the
first frame of the joints file (as the authors did), i.e. native frame 0 of
the clip. Frames are sampled uniformly over the whole clip (authors'
`uniform_all`); the instance's min/max frame are kept in `aux`.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd

from emotionclip.evaluation.datasets.base import (
    BOLD_CATEGORIES, Box, DatasetLayoutError, DatasetSpec, Sample, inspect_dataset,
)

NAME = "bold"
VAD = ["valence", "arousal", "dominance"]
COLUMNS = (["video", "person_id", "min_frame", "max_frame"] + BOLD_CATEGORIES + VAD
           + ["gender", "age", "ethnicity", "confidence"])
# Authors' code (src/datasets/bold.py): a category is present when its score >= 0.5.
CATEGORY_THRESHOLD = 0.5


def joints_path(root: Path, video: str) -> Path:
    stem = video[:-4] if video.lower().endswith(".mp4") else video
    return root / "joints" / f"{stem}.npy"


def joints_to_boxes(joints: np.ndarray, person_id: int) -> dict[int, Box]:
    """Boxes (x1, y1, x2, y2) per relative frame for one person from an OpenPose
    joints array (rows: frame, person, 18 x (x, y, conf)). All-zero joints are
    undetected and ignored."""
    joints = np.asarray(joints, dtype=np.float64)
    if joints.ndim != 2 or joints.shape[1] < 2 + 18 * 3 or len(joints) == 0:
        return {}
    first = joints[:, 0].min()
    boxes: dict[int, Box] = {}
    for row in joints[joints[:, 1] == person_id]:
        pts = row[2:2 + 54].reshape(18, 3)
        pts = pts[~np.all(pts == 0, axis=1)]
        if len(pts) == 0:
            continue
        boxes[int(row[0] - first)] = (float(pts[:, 0].min()), float(pts[:, 1].min()),
                                      float(pts[:, 0].max()), float(pts[:, 1].max()))
    return boxes


@functools.lru_cache(maxsize=4096)
def _load_joints(path: str, mtime: float) -> np.ndarray | None:
    try:
        # allow_pickle=False: a numeric array from the dataset, never objects.
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None


def read_annotations(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path, header=None)
    if df.shape[1] != len(COLUMNS):
        raise DatasetLayoutError(
            f"{path}: expected {len(COLUMNS)} columns (video, person id, min/max frame, 26 categories, "
            f"VAD, gender, age, ethnicity, confidence), found {df.shape[1]}")
    df.columns = COLUMNS
    return df


def load(root: str | Path, split: str) -> list[Sample]:
    root = Path(root)
    if split not in ("train", "val"):
        raise DatasetLayoutError(f"BoLD split {split!r}: only train and val have public labels")
    ann = root / "annotations" / f"{split}.csv"
    if not ann.is_file():
        raise DatasetLayoutError(f"missing {ann} (BoLD: annotations/{{train,val}}.csv)")
    df = read_annotations(ann)
    samples = []
    for row in df.itertuples(index=False):
        video = str(row.video)
        person = int(row.person_id)
        jp = joints_path(root, video)
        joints = _load_joints(str(jp), jp.stat().st_mtime) if jp.is_file() else None
        boxes = joints_to_boxes(joints, person) if joints is not None else {}
        scores = np.asarray([getattr(row, _attr(c)) for c in BOLD_CATEGORIES], dtype=np.float64)
        samples.append(Sample(
            id=f"{video}#{person}",
            split=split,
            media=str(root / "videos" / video),
            kind="video",
            target=(scores >= CATEGORY_THRESHOLD).astype(np.float32),
            boxes=boxes,
            aux={"vad": np.asarray([row.valence, row.arousal, row.dominance], dtype=np.float32),
                 "min_frame": int(row.min_frame), "max_frame": int(row.max_frame),
                 "files": [str(jp)]},
            group=video,
        ))
    return samples


def _attr(col: str) -> str:
    # itertuples renames columns that are not identifiers to _<position>.
    i = COLUMNS.index(col)
    return col if col.isidentifier() else f"_{i}"


SPEC = DatasetSpec(
    name=NAME, task="multilabel", classes=tuple(BOLD_CATEGORIES), splits=("train", "val"),
    train_split="train", val_split=None, eval_splits=("val",), kind="video",
    preset_c=3.16,  # authors' linear_eval.py
    load=load,
)


def inspect(root: str | Path) -> dict:
    """Counts and missing/unreadable files of a BoLD folder (see module docstring)."""
    return inspect_dataset(SPEC, root)
