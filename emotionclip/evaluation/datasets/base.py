"""The common sample list every benchmark loader produces, and the shared
`inspect` report (counts, missing and unreadable files).

A loader turns a dataset's published folder layout into `Sample`s; it never
decodes media. Media are checked by `inspect` (cheap: existence, size and the
container's magic bytes) and decoded later by `emotionclip.evaluation.features`.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Sequence

import numpy as np

Task = Literal["multilabel", "multiclass", "regression"]
Kind = Literal["video", "image"]

# Emotic / BoLD 26 categories (Kosti et al. 2017), in BoLD's annotation column order.
BOLD_CATEGORIES = [
    "Peace", "Affection", "Esteem", "Anticipation", "Engagement", "Confidence", "Happiness",
    "Pleasure", "Excitement", "Surprise", "Sympathy", "Doubt/Confusion", "Disconnection",
    "Fatigue", "Embarrassment", "Yearning", "Disapproval", "Aversion", "Annoyance", "Anger",
    "Sensitivity", "Sadness", "Disquietment", "Fear", "Pain", "Suffering",
]
# The same 26 in alphabetical order: the order of Emotic's preprocessed *_cat_arr.npy
# and of the MovieGraphs mapping used by the authors.
EMOTIC_CATEGORIES = sorted(BOLD_CATEGORIES)
# Spellings seen in the wild for the one category with a slash in its name.
CATEGORY_ALIASES = {"doubt/conf": "Doubt/Confusion", "doubt confusion": "Doubt/Confusion",
                    "doubt_confusion": "Doubt/Confusion", "doubtconfusion": "Doubt/Confusion"}

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels of the source media


class DatasetLayoutError(ValueError):
    """The folder does not have the layout the loader expects; the message says what is missing."""


@dataclass
class Sample:
    """One evaluation sample.

    `target`: an int class index (multiclass), a multi-hot float vector
    (multilabel) or a float vector (regression). `aux` holds extra targets (BoLD
    VAD). Time range: `time_s` in seconds, or `frames` as native frame numbers
    (inclusive) resolved with the video's frame rate; None for both = the whole
    video. `boxes`: the annotated person's box per native frame (video) or
    under key 0 (image); None means detect humans.
    """

    id: str
    split: str
    media: str
    kind: Kind
    target: Any
    time_s: tuple[float, float] | None = None
    frames: tuple[int, int] | None = None
    boxes: dict[int, Box] | None = None
    aux: dict[str, Any] = field(default_factory=dict)
    group: str | None = None  # movie / source video (LIRIS smoothing per movie, MovieGraphs)

    def key(self) -> tuple:
        """What identifies the sample's input (for the feature cache)."""
        boxes = None if self.boxes is None else tuple(sorted((k, tuple(round(x, 2) for x in v))
                                                              for k, v in self.boxes.items()))
        return (self.id, self.media, self.kind, self.time_s, self.frames, boxes)


@dataclass(frozen=True)
class DatasetSpec:
    """What the probe and the results table need to know about a benchmark."""

    name: str
    task: Task
    classes: tuple[str, ...]
    splits: tuple[str, ...]
    train_split: str
    val_split: str | None  # used for the C search; None = a split of train
    eval_splits: tuple[str, ...]  # reported
    kind: Kind
    preset_c: float | None  # authors' fixed C (linear_eval.py); None for regression
    load: Callable[[str | Path, str], list[Sample]]
    # short edge before the centre crop when the authors' loader differs from the model's (256)
    resize: int | None = None


_MAGIC = [
    (4, b"ftyp"),            # mp4 / mov / m4v
    (0, b"\x1a\x45\xdf\xa3"),  # mkv / webm (EBML)
    (0, b"RIFF"),            # avi
    (0, b"\x00\x00\x01\xba"),  # mpeg-ps
    (0, b"\x47"),            # mpeg-ts (sync byte)
    (0, b"FLV"),
    (0, b"\xff\xd8\xff"),    # jpeg
    (0, b"\x89PNG"),
    (0, b"GIF8"),
    (0, b"BM"),
]


def media_problem(path: str | Path) -> str | None:
    """None if the file looks like a readable media file, else 'missing', 'empty' or
    'unreadable' (not a known container). Reads 16 bytes: cheap enough for 13k clips."""
    p = Path(path)
    if not p.is_file():
        return "missing"
    try:
        if p.stat().st_size == 0:
            return "empty"
        with open(p, "rb") as f:
            head = f.read(16)
    except OSError:
        return "unreadable"
    if any(head[off:off + len(m)] == m for off, m in _MAGIC):
        return None
    return "unreadable"


def find_first(root: Path, candidates: Iterable[str]) -> Path | None:
    """The first existing path among `candidates` (relative to root)."""
    for c in candidates:
        p = root / c
        if p.exists():
            return p
    return None


def class_counts(spec: DatasetSpec, samples: Sequence[Sample]) -> dict[str, float]:
    """Per-class positives (classification) or target statistics (regression)."""
    if not samples:
        return {}
    if spec.task == "multiclass":
        c = collections.Counter(int(s.target) for s in samples)
        return {name: int(c.get(i, 0)) for i, name in enumerate(spec.classes)}
    y = np.asarray([s.target for s in samples], dtype=np.float64)
    if spec.task == "multilabel":
        return {name: int(v) for name, v in zip(spec.classes, y.sum(axis=0))}
    return {f"{name}_mean": float(m) for name, m in zip(spec.classes, y.mean(axis=0))} | {
        f"{name}_std": float(s) for name, s in zip(spec.classes, y.std(axis=0))}


def inspect_dataset(spec: DatasetSpec, root: str | Path, splits: Sequence[str] | None = None) -> dict[str, Any]:
    """Check a dataset folder before a long run: per-split sample counts, per-class
    counts, missing / unreadable media. Annotation files that cannot be parsed are
    reported under `errors` instead of raising, so one report shows everything."""
    root = Path(root)
    report: dict[str, Any] = {"dataset": spec.name, "root": str(root), "task": spec.task,
                              "classes": list(spec.classes), "splits": {}, "errors": []}
    for split in splits or spec.splits:
        try:
            samples = spec.load(root, split)
        except (DatasetLayoutError, OSError, ValueError) as e:
            report["errors"].append(f"{split}: {e}")
            continue
        media: dict[str, str | None] = {}
        for s in samples:
            if s.media not in media:
                media[s.media] = media_problem(s.media)
        for s in samples:  # side files the loader needs (BoLD joints): existence only
            for extra in s.aux.get("files", ()):
                if extra not in media:
                    media[extra] = None if Path(extra).is_file() else "missing"
        bad = {m: why for m, why in media.items() if why}
        bad_samples = [s.id for s in samples
                       if media[s.media] or any(media[x] for x in s.aux.get("files", ()))]
        report["splits"][split] = {
            "samples": len(samples),
            "files_checked": len(media),
            "usable_samples": len(samples) - len(bad_samples),
            "class_counts": class_counts(spec, samples),
            "missing": sorted(rel_path(m, root) for m, why in bad.items() if why == "missing"),
            "unreadable": sorted(rel_path(m, root) for m, why in bad.items() if why != "missing"),
            "samples_affected": sorted(bad_samples),
        }
    report["ok"] = not report["errors"] and all(
        not v["missing"] and not v["unreadable"] for v in report["splits"].values())
    return report


def rel_path(path: str, root: Path) -> str:
    """`path` relative to `root` when it lies under it (how reports name files), else as given."""
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def canonical_category(name: str, classes: Sequence[str]) -> str | None:
    """Map a category spelling ('doubt confusion', 'Doubt/Conf', 'peace') to its
    canonical name in `classes`, or None if unknown."""
    n = name.strip()
    lower = {c.lower(): c for c in classes}
    if n.lower() in lower:
        return lower[n.lower()]
    alias = CATEGORY_ALIASES.get(n.lower())
    return alias if alias in classes else None
