"""LIRIS-ACCEDE, MediaEval 2018 "Emotional Impact of Movies" (continuous
valence/arousal every second of full movies), dev and test movies.

Supported layout (the MediaEval 2018 archive names, as the authors used them)::

    <root>/annotations/MEDIAEVAL18-DevSet-Valence_Arousal-annotations/annotations/
        MEDIAEVAL18_00_Valence-Arousal.txt     tab-separated, header: Time Valence Arousal
        ...                                    (one row per second, Time in seconds)
    <root>/annotations/MEDIAEVAL18-TestSet-Valence_Arousal-annotations/annotations/
        MEDIAEVAL18_54_Valence-Arousal.txt ...
    <root>/**/MEDIAEVAL18_00.mp4 ...            the movies, anywhere under <root>
                                                (e.g. MEDIAEVAL18-DevSet-Data/data/movies/)

An annotation file is a *test* file when a folder between `annotations/` (or
`<root>` when there is no `annotations/`) and the file has "test" in its name;
every other `*valence*arousal*.txt` file is *dev*. The movie id is the first two
`_`-separated parts of the file name (`MEDIAEVAL18_00`). Each annotated second
`t` is one sample whose 8 frames are spaced uniformly over [t - 0.5, t + 0.5)
(the authors encoded the single frame at `t` repeated 8 times). Samples are
ordered by movie, then time: the Savitzky-Golay smoothing runs along this order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from emotionclip.evaluation.datasets.base import DatasetLayoutError, DatasetSpec, Sample, inspect_dataset

NAME = "liris"
SPLITS = ("dev", "test")
VIDEO_EXTS = (".mp4", ".mkv", ".avi", ".mov", ".webm")
WINDOW_S = 1.0  # one annotation per second: each sample sees that second


def movie_id(annotation_file: Path) -> str:
    return "_".join(annotation_file.stem.split("_")[:2])


def annotation_files(root: str | Path) -> dict[str, list[Path]]:
    root = Path(root)
    base = root / "annotations" if (root / "annotations").is_dir() else root
    out: dict[str, list[Path]] = {"dev": [], "test": []}
    for f in sorted(base.rglob("*.txt")):
        name = f.name.lower()
        if "valence" not in name or "arousal" not in name or f.name.startswith("._"):
            continue
        parts = [p.lower() for p in f.relative_to(base).parts[:-1]]
        out["test" if any("test" in p for p in parts) else "dev"].append(f)
    return out


def read_annotation(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path, sep=None, engine="python")
    df.columns = [str(c).strip().lower() for c in df.columns]
    for col in ("time", "valence", "arousal"):
        if col not in df.columns:
            raise DatasetLayoutError(f"{path}: missing column {col!r} (expected Time, Valence, Arousal)")
    df = df[["time", "valence", "arousal"]].astype(float)
    if df.isna().any().any():
        raise DatasetLayoutError(f"{path}: empty values")
    return df.sort_values("time")


def _videos(root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for ext in VIDEO_EXTS:
        for p in root.rglob(f"*{ext}"):
            if not p.name.startswith("._"):
                found.setdefault(p.stem, p)
    return found


def load(root: str | Path, split: str) -> list[Sample]:
    root = Path(root)
    if split not in SPLITS:
        raise DatasetLayoutError(f"LIRIS-ACCEDE split {split!r}: expected dev or test")
    files = annotation_files(root)[split]
    if not files:
        where = "TestSet" if split == "test" else "DevSet"
        raise DatasetLayoutError(
            f"{root}: no {split} *_Valence-Arousal.txt annotation files (expected e.g. annotations/"
            f"MEDIAEVAL18-{where}-Valence_Arousal-annotations/annotations/MEDIAEVAL18_00_Valence-Arousal.txt)")
    videos = _videos(root)
    samples = []
    for f in sorted(files, key=movie_id):
        movie = movie_id(f)
        media = str(videos.get(movie, root / "movies" / f"{movie}.mp4"))
        for t, v, a in read_annotation(f).itertuples(index=False):
            samples.append(Sample(
                id=f"{movie}@{int(round(t))}", split=split, media=media, kind="video",
                target=np.asarray([v, a], np.float32),
                time_s=(max(0.0, t - WINDOW_S / 2), t + WINDOW_S / 2), group=movie))
    return samples


SPEC = DatasetSpec(
    name=NAME, task="regression", classes=("valence", "arousal"), splits=SPLITS,
    train_split="dev", val_split=None, eval_splits=("test",), kind="video",
    preset_c=None, load=load,
)


def inspect(root: str | Path) -> dict:
    """Per-split seconds and movies, target statistics, missing movie files."""
    report = inspect_dataset(SPEC, root)
    for split, files in annotation_files(root).items():
        if split in report["splits"]:
            report["splits"][split]["movies"] = len({movie_id(f) for f in files})
    return report
