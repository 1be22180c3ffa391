"""MELD (Poria et al. 2019), the `MELD.Raw` release.

Layout read (as published; the tarballs extract to these folder names)::

    <root>/train_sent_emo.csv   columns: Sr No.,Utterance,Speaker,Emotion,Sentiment,
    <root>/dev_sent_emo.csv              Dialogue_ID,Utterance_ID,Season,Episode,
    <root>/test_sent_emo.csv             StartTime,EndTime  (times like "0:10:44,769")
    <root>/train_splits/dia{D}_utt{U}.mp4                (train.tar.gz)
    <root>/dev_splits_complete/dia{D}_utt{U}.mp4         (dev.tar.gz)
    <root>/output_repeated_splits_test/dia{D}_utt{U}.mp4 (test.tar.gz)

`<root>` may also be the folder holding `MELD.Raw/`, the CSVs may sit in
`<split>/`, and the video folders may be nested in `<split>/` or be named
`<split>_splits` / `<split>`. Each utterance video is already cut: the whole
clip is one sample (StartTime/EndTime are episode times, kept in `aux`).
Two clips of the release are missing (train dia125_utt3, dev dia110_utt7):
`inspect` lists them and feature extraction skips them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from emotionclip.evaluation.datasets.base import DatasetLayoutError, DatasetSpec, Sample, inspect_dataset, rel_path

NAME = "meld"
# Class order of the authors' code (src/datasets/meld.py); predictions are indices into it.
EMOTIONS = ["neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"]
COLUMNS = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID",
           "Utterance_ID", "Season", "Episode", "StartTime", "EndTime"]
VIDEO_DIRS = {
    "train": ["train_splits", "train/train_splits", "train"],
    "dev": ["dev_splits_complete", "dev/dev_splits_complete", "dev_splits", "dev"],
    "test": ["output_repeated_splits_test", "test/output_repeated_splits_test", "test_splits", "test"],
}
# Absent from the published archives (authors' code comments; MELD issue tracker).
KNOWN_MISSING = {"train": ["dia125_utt3"], "dev": ["dia110_utt7"], "test": []}
_TIME = re.compile(r"^(\d+):(\d{1,2}):(\d{1,2})[,.](\d{1,3})$")


def parse_time(value: str) -> float:
    """'0:10:44,769' -> 644.769 seconds."""
    m = _TIME.match(str(value).strip())
    if not m:
        raise ValueError(f"bad MELD time {value!r} (expected H:MM:SS,mmm)")
    h, mi, s, ms = m.groups()
    return int(h) * 3600 + int(mi) * 60 + int(s) + int(ms.ljust(3, "0")) / 1000


def _base(root: Path) -> Path:
    return root / "MELD.Raw" if (root / "MELD.Raw").is_dir() else root


def _read_csv(path: Path) -> pd.DataFrame:
    # The release's CSVs are mostly UTF-8 but contain stray cp1252 bytes in utterances.
    try:
        df = pd.read_csv(path, encoding="utf-8")
    except UnicodeDecodeError:
        df = pd.read_csv(path, encoding="cp1252")
    missing = [c for c in ("Emotion", "Dialogue_ID", "Utterance_ID") if c not in df.columns]
    if missing:
        raise DatasetLayoutError(f"{path}: missing columns {missing} (MELD header: {','.join(COLUMNS)})")
    return df


def video_dir(root: str | Path, split: str) -> Path:
    base = _base(Path(root))
    for c in VIDEO_DIRS[split]:
        if (base / c).is_dir():
            return base / c
    return base / VIDEO_DIRS[split][0]  # reported as missing files by inspect


def load(root: str | Path, split: str) -> list[Sample]:
    if split not in VIDEO_DIRS:
        raise DatasetLayoutError(f"MELD split {split!r}: expected train, dev or test")
    base = _base(Path(root))
    csv = next((p for p in (base / f"{split}_sent_emo.csv", base / split / f"{split}_sent_emo.csv") if p.is_file()),
               None)
    if csv is None:
        raise DatasetLayoutError(f"missing {base / f'{split}_sent_emo.csv'} (the MELD.Raw release's {split} "
                                 f"annotations, beside {VIDEO_DIRS[split][0]}/)")
    df = _read_csv(csv)
    vdir = video_dir(root, split)
    samples = []
    for i, row in df.iterrows():
        emo = str(row["Emotion"]).strip().lower()
        if emo not in EMOTIONS:
            raise DatasetLayoutError(f"{csv} row {i}: unknown emotion {row['Emotion']!r}")
        clip = f"dia{int(row['Dialogue_ID'])}_utt{int(row['Utterance_ID'])}"
        aux = {"utterance": str(row.get("Utterance", "")), "sentiment": str(row.get("Sentiment", ""))}
        if "StartTime" in df.columns:
            try:
                aux["episode_time_s"] = (parse_time(row["StartTime"]), parse_time(row["EndTime"]))
            except ValueError:
                pass  # an episode timestamp is informative only; the clip file is the sample
        samples.append(Sample(id=clip, split=split, media=str(vdir / f"{clip}.mp4"), kind="video",
                              target=EMOTIONS.index(emo), aux=aux, group=f"dia{int(row['Dialogue_ID'])}"))
    return samples


SPEC = DatasetSpec(
    name=NAME, task="multiclass", classes=tuple(EMOTIONS), splits=("train", "dev", "test"),
    train_split="train", val_split="dev", eval_splits=("dev", "test"), kind="video",
    preset_c=8.0,  # authors' linear_eval.py
    load=load,
)


def inspect(root: str | Path) -> dict:
    """Counts and missing/unreadable clips of a MELD folder. The clips known to be
    absent from the release (`KNOWN_MISSING`) stay listed under `missing`, are
    repeated under the split's `known_missing` and named in `notes`; they alone do
    not make the report fail (`ok`), as a complete copy of the release lacks them."""
    root = Path(root)
    report = inspect_dataset(SPEC, root)
    report["known_missing_in_release"] = KNOWN_MISSING
    notes, unexpected = [], False
    for split, rep in report["splits"].items():
        known = {rel_path(str(video_dir(root, split) / f"{clip}.mp4"), root) for clip in KNOWN_MISSING[split]}
        rep["known_missing"] = [m for m in rep["missing"] if m in known]
        unexpected |= bool(set(rep["missing"]) - known or rep["unreadable"])
        if rep["known_missing"]:
            notes.append(f"{split}: {', '.join(rep['known_missing'])} missing, as in the published MELD.Raw "
                         "release itself; feature extraction skips it")
    report["notes"] = notes
    report["ok"] = not report["errors"] and not unexpected
    return report
