"""MovieGraphs (Vicol et al. 2018): clip-level emotion labels mapped to the 26
EMOTIC/BoLD categories, train/val/test split by movie.

The official release ships graphs as pickles of its own classes (never
unpickled here), the movie split and the shot/scene boundaries; the movies
themselves are the user's own copies. Supported layout (the official file
names, plus the per-clip label file the authors derived from the graphs)::

    <root>/mg/split.json              {"train": [imdb ids], "val": [...], "test": [...]}
    <root>/mg/py3loader/emotion_labels.json
                                      {imdb id: {clip index: [labels]}}; a label is one
                                      of the 26 categories ("Doubt/Conf" accepted) or a
                                      MovieGraphs emotion word listed in label_map.json
    <root>/label_map.json             optional {emotion word: category}
    <root>/mg_videoinfo/scene_boundaries/<imdb>.scenes.gt
                                      one line per clip: start_shot end_shot is_useful (1-based)
    <root>/mg_videoinfo/video_boundaries/<imdb>.videvents
                                      a header line, then: frame timestamp CUT (one per shot cut)
    <root>/videos/<imdb>.mp4          (or .mkv / .avi / .m4v)

`split.json`, `emotion_labels.json` and the two boundary folders may also sit
directly under `<root>`. Clip k spans the frames from the start of its start
shot to the end of its end shot (native frame numbers, converted to time with
the movie's frame rate); an open-ended last shot gets 8 x 24 frames (authors).
Labels that map to no category are counted in `inspect` (`unmapped_labels`);
a clip left with no category is dropped.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np

from emotionclip.evaluation.datasets.base import (
    EMOTIC_CATEGORIES, DatasetLayoutError, DatasetSpec, Sample, canonical_category, find_first, inspect_dataset,
)

NAME = "moviegraphs"
SPLITS = ("train", "val", "test")
VIDEO_EXTS = (".mp4", ".mkv", ".avi", ".m4v", ".webm")
# Authors' code: a last scene with no end cut gets 8 s at 24 fps.
OPEN_END_FRAMES = 8 * 24


# Where each part may sit, relative to <root> (the first is the release's own place).
CANDIDATES = {
    "split": ["mg/split.json", "split.json"],
    "labels": ["mg/py3loader/emotion_labels.json", "emotion_labels.json"],
    "scenes": ["mg_videoinfo/scene_boundaries/", "scene_boundaries/"],
    "shots": ["mg_videoinfo/video_boundaries/", "video_boundaries/"],
    "label_map": ["label_map.json"],
}


def _paths(root: Path) -> dict[str, Path | None]:
    return {k: find_first(root, [c.rstrip("/") for c in v]) for k, v in CANDIDATES.items()}


def read_scenes(path: Path) -> list[tuple[int, int]]:
    rows = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2:
            rows.append((int(parts[0]), int(parts[1])))
    return rows


def read_shots(path: Path) -> list[tuple[int, int]]:
    """(start_frame, end_frame) per shot; end -1 = until the end of the movie."""
    cuts = []
    for line in path.read_text().splitlines()[1:]:  # first line is a header
        parts = line.split()
        if parts:
            cuts.append(int(float(parts[0])))
    starts = [0] + cuts
    ends = [c - 1 for c in cuts] + [-1]
    return list(zip(starts, ends))


def _video(root: Path, movie: str) -> Path:
    for ext in VIDEO_EXTS:
        p = root / "videos" / f"{movie}{ext}"
        if p.exists():
            return p
    return root / "videos" / f"{movie}.mp4"


def map_labels(labels: list[str], label_map: dict[str, str]) -> tuple[np.ndarray, list[str]]:
    y = np.zeros(len(EMOTIC_CATEGORIES), np.float32)
    unmapped = []
    lower_map = {k.lower(): v for k, v in label_map.items()}
    for lab in labels:
        c = canonical_category(lab, EMOTIC_CATEGORIES)
        if c is None and lab.lower() in lower_map:
            c = canonical_category(lower_map[lab.lower()], EMOTIC_CATEGORIES)
        if c is None:
            unmapped.append(lab)
        else:
            y[EMOTIC_CATEGORIES.index(c)] = 1.0
    return y, unmapped


def load_with_unmapped(root: str | Path, split: str) -> tuple[list[Sample], collections.Counter]:
    root = Path(root)
    if split not in SPLITS:
        raise DatasetLayoutError(f"MovieGraphs split {split!r}: expected train, val or test")
    p = _paths(root)
    for k in ("split", "labels", "scenes", "shots"):
        if p[k] is None:
            raise DatasetLayoutError(f"{root}: missing the MovieGraphs {k} "
                                     f"{'folder' if CANDIDATES[k][0].endswith('/') else 'file'} "
                                     f"(expected {' or '.join(CANDIDATES[k])})")
    movies = json.loads(p["split"].read_text())[split]
    labels = json.loads(p["labels"].read_text())
    label_map = json.loads(p["label_map"].read_text()) if p["label_map"] else {}
    samples, unmapped = [], collections.Counter()
    for movie in movies:
        if movie not in labels:
            continue
        scene_file, shot_file = p["scenes"] / f"{movie}.scenes.gt", p["shots"] / f"{movie}.videvents"
        if not scene_file.is_file() or not shot_file.is_file():
            raise DatasetLayoutError(f"{movie}: missing {scene_file.name} or {shot_file.name}")
        scenes, shots = read_scenes(scene_file), read_shots(shot_file)
        media = str(_video(root, movie))
        for clip, names in sorted(labels[movie].items(), key=lambda kv: int(kv[0])):
            k = int(clip)
            if k >= len(scenes):
                raise DatasetLayoutError(f"{movie} clip {k}: only {len(scenes)} scenes in {scene_file.name}")
            s_shot, e_shot = scenes[k]
            start, end = shots[s_shot - 1][0], shots[e_shot - 1][1]
            if end < 0:
                end = start + OPEN_END_FRAMES
            y, bad = map_labels([str(n) for n in names], label_map)
            unmapped.update(bad)
            if not y.any():
                continue
            samples.append(Sample(id=f"{movie}#{k}", split=split, media=media, kind="video", target=y,
                                  frames=(int(start), int(end)), group=movie))
    return samples, unmapped


def load(root: str | Path, split: str) -> list[Sample]:
    return load_with_unmapped(root, split)[0]


SPEC = DatasetSpec(
    name=NAME, task="multilabel", classes=tuple(EMOTIC_CATEGORIES), splits=SPLITS,
    train_split="train", val_split="val", eval_splits=("val", "test"), kind="video",
    preset_c=10.0,  # authors' linear_eval.py
    load=load,
)


def inspect(root: str | Path) -> dict:
    """Counts, missing movies and labels that map to no category."""
    report = inspect_dataset(SPEC, root)
    for split in report["splits"]:
        try:
            report["splits"][split]["unmapped_labels"] = dict(load_with_unmapped(root, split)[1])
        except DatasetLayoutError:
            pass
    return report
