"""EMOTIC (Kosti et al. 2017/2019): images, one sample per annotated person.

Two published layouts are read:

1. The official release::

       <root>/Annotations/Annotations.mat  (or <root>/Annotations.mat): structs
           train / val / test, each entry: filename, folder, image_size
           (n_col, n_row), person[] with body_bbox [x1 y1 x2 y2],
           annotations_categories (train: one annotator; val/test: several),
           combined_categories (val/test), annotations_continuous /
           combined_continuous (valence, arousal, dominance)
       <root>/emotic/<folder>/<filename>   (or <root>/<folder>/<filename>)

   Labels: `combined_categories` where present, else the union of the
   annotators' categories.

2. The widely used preprocessed layout (Tandon's EMOTIC scripts, used by the
   authors as `annotations_pre/`)::

       <root>/annotations_pre/{train,val,test}.csv   (or emotic_pre/, or <root>/)
           columns include Folder, Filename, Image Size "[w, h]", BBox "[x1, y1, x2, y2]"
       <root>/annotations_pre/{split}_cat_arr.npy    [N, 26] multi-hot, alphabetical order
       <root>/annotations_pre/{split}_cont_arr.npy   [N, 3] valence, arousal, dominance
       <root>/emotic/<Folder>/<Filename>

The 26 categories are reported in alphabetical order (EMOTIC_CATEGORIES).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emotionclip.evaluation.datasets.base import (
    EMOTIC_CATEGORIES, DatasetLayoutError, DatasetSpec, Sample, canonical_category, inspect_dataset,
)

NAME = "emotic"
SPLITS = ("train", "val", "test")
PRE_DIRS = ("annotations_pre", "emotic_pre", ".")


def _image_path(root: Path, folder: str, filename: str) -> Path:
    for base in (root / "emotic", root):
        p = base / folder / filename
        if p.exists():
            return p
    return root / "emotic" / folder / filename  # reported missing by inspect


def _as_list(x: Any) -> list:
    if x is None:
        return []
    if isinstance(x, str):
        return [x]
    return list(np.atleast_1d(x))


def _categories(person: Any) -> list[str]:
    combined = getattr(person, "combined_categories", None)
    names: list[str] = []
    if combined is not None and len(_as_list(combined)):
        names = [str(c) for c in _as_list(combined)]
    else:
        for ann in _as_list(getattr(person, "annotations_categories", None)):
            names += [str(c) for c in _as_list(getattr(ann, "categories", None))]
    return names


def _continuous(person: Any) -> np.ndarray:
    src = getattr(person, "combined_continuous", None)
    anns = [src] if src is not None else _as_list(getattr(person, "annotations_continuous", None))
    vals = [[float(getattr(a, k)) for k in ("valence", "arousal", "dominance")] for a in anns if a is not None]
    vals = [v for v in vals if np.all(np.isfinite(v))]
    return np.mean(vals, axis=0).astype(np.float32) if vals else np.full(3, np.nan, np.float32)


def multi_hot(names: list[str], where: str) -> np.ndarray:
    y = np.zeros(len(EMOTIC_CATEGORIES), np.float32)
    for n in names:
        c = canonical_category(n, EMOTIC_CATEGORIES)
        if c is None:
            raise DatasetLayoutError(f"{where}: unknown EMOTIC category {n!r}")
        y[EMOTIC_CATEGORIES.index(c)] = 1.0
    return y


def _load_mat(root: Path, mat_path: Path, split: str) -> list[Sample]:
    import scipy.io

    mat = scipy.io.loadmat(mat_path, squeeze_me=True, struct_as_record=False)
    if split not in mat:
        raise DatasetLayoutError(f"{mat_path}: no {split!r} struct (has {sorted(k for k in mat if not k.startswith('__'))})")
    samples = []
    for entry in _as_list(mat[split]):
        folder, filename = str(entry.folder), str(entry.filename)
        media = str(_image_path(root, folder, filename))
        for k, person in enumerate(_as_list(entry.person)):
            box = tuple(float(v) for v in np.asarray(person.body_bbox).ravel()[:4])
            sid = f"{folder}/{filename}#{k}"
            samples.append(Sample(id=sid, split=split, media=media, kind="image",
                                  target=multi_hot(_categories(person), f"{mat_path} {sid}"),
                                  boxes={0: box}, aux={"vad": _continuous(person)}, group=filename))
    return samples


def _load_preprocessed(root: Path, base: Path, split: str) -> list[Sample]:
    csv = base / f"{split}.csv"
    df = pd.read_csv(csv)
    for col in ("Folder", "Filename", "BBox"):
        if col not in df.columns:
            raise DatasetLayoutError(f"{csv}: missing column {col!r}")
    cat_path, cont_path = base / f"{split}_cat_arr.npy", base / f"{split}_cont_arr.npy"
    if not cat_path.is_file():
        raise DatasetLayoutError(f"missing {cat_path}")
    cat = np.load(cat_path, allow_pickle=False)
    cont = np.load(cont_path, allow_pickle=False) if cont_path.is_file() else np.full((len(df), 3), np.nan)
    if cat.shape != (len(df), len(EMOTIC_CATEGORIES)):
        raise DatasetLayoutError(f"{cat_path}: shape {cat.shape}, expected ({len(df)}, {len(EMOTIC_CATEGORIES)})")
    samples = []
    for i, row in enumerate(df.itertuples(index=False)):
        folder, filename = str(row.Folder), str(row.Filename)
        box = tuple(float(v) for v in ast.literal_eval(str(row.BBox)))[:4]
        samples.append(Sample(id=f"{folder}/{filename}#{i}", split=split,
                              media=str(_image_path(root, folder, filename)), kind="image",
                              target=cat[i].astype(np.float32), boxes={0: box},
                              aux={"vad": np.asarray(cont[i], np.float32)}, group=filename))
    return samples


def load(root: str | Path, split: str) -> list[Sample]:
    root = Path(root)
    if split not in SPLITS:
        raise DatasetLayoutError(f"EMOTIC split {split!r}: expected train, val or test")
    for mat in (root / "Annotations" / "Annotations.mat", root / "Annotations.mat"):
        if mat.is_file():
            return _load_mat(root, mat, split)
    for d in PRE_DIRS:
        if (root / d / f"{split}.csv").is_file():
            return _load_preprocessed(root, root / d, split)
    raise DatasetLayoutError(
        f"{root}: neither Annotations/Annotations.mat nor annotations_pre/{split}.csv (+ {split}_cat_arr.npy)")


SPEC = DatasetSpec(
    name=NAME, task="multilabel", classes=tuple(EMOTIC_CATEGORIES), splits=SPLITS,
    train_split="train", val_split="val", eval_splits=("val", "test"), kind="image",
    preset_c=2.5,  # authors' linear_eval.py
    load=load,
    # authors' src/datasets/emotic.py: images resized to 224 (bicubic) then centre-cropped to
    # 224, keeping more of the scene than the video benchmarks' 256 -> 224
    resize=224,
)


def inspect(root: str | Path) -> dict:
    """Counts and missing/unreadable images of an EMOTIC folder (either layout)."""
    return inspect_dataset(SPEC, root)
