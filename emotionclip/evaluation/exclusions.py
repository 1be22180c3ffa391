"""The YouTube ids and titles a downstream benchmark's own files contain, for the
TV dataset's exclusion list (paper appendix A.1: "We then manually removed
videos appearing in downstream datasets based on YouTube id and movie title").

What each dataset's files say:

- BoLD: every clip is `videos/<group>/<youtube id>.mp4/<clip>.mp4` (e.g.
  `003/IzvOYVMltkI.mp4/0114.mp4`): the 11-character stem of the middle path
  component is the source YouTube video. Read from the annotation CSVs' video
  column and from the `videos/` folders.
- MELD: utterances of the Friends TV show (paper section 4.1): the title "Friends"
  (the catalog's default title pattern `\\bfriends\\b` already covers it).
- LIRIS-ACCEDE: its movies' titles where a description file names them (an XML
  `<movie>` or `<title>` element, as in `ACCEDEdescription.xml`, or a CSV/TSV column
  named movie or title); the MediaEval annotation files name movies by number only.
- MovieGraphs: its files name movies by IMDb id only (`tt...`); nothing, with a note.
- Emotic: images (MSCOCO, ADE20K, web images), no videos; nothing, with a note.
"""

from __future__ import annotations

import csv
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from emotionclip.evaluation.datasets import DatasetLayoutError, get_module

# A YouTube video id: 11 characters of [A-Za-z0-9_-].
YOUTUBE_ID = re.compile(r"^[A-Za-z0-9_-]{11}$")
MELD_TITLES = ("Friends",)
_TITLE_FIELDS = ("movie", "title", "movie_title", "film")
_MAX_METADATA_BYTES = 64 * 1024 * 1024  # description files are small; skip anything this big


@dataclass
class DatasetExclusions:
    dataset: str
    ids: list[str] = field(default_factory=list)
    titles: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _unique(items) -> list[str]:
    seen: set[str] = set()
    out = []
    for item in items:
        if item and item not in seen:
            seen.add(item)
            out.append(item)
    return out


def bold_youtube_id(video: str) -> str | None:
    """`003/IzvOYVMltkI.mp4/0114.mp4` -> `IzvOYVMltkI`; None when the path does not carry one."""
    parts = [p for p in re.split(r"[/\\]", str(video).strip()) if p]
    if len(parts) < 2:
        return None
    stem = parts[-2]
    stem = stem[:-4] if stem.lower().endswith(".mp4") else stem
    return stem if YOUTUBE_ID.match(stem) else None


def _bold(root: Path) -> DatasetExclusions:
    from emotionclip.evaluation.datasets.bold import read_annotations

    found = DatasetExclusions("bold")
    paths: list[str] = []
    ann_dir = root / "annotations"
    csvs = sorted(ann_dir.glob("*.csv")) if ann_dir.is_dir() else []
    for ann in csvs:
        try:
            paths += [str(v) for v in read_annotations(ann)["video"]]
        except DatasetLayoutError:
            # test_meta.csv and the like: other columns, the video path still comes first.
            import pandas as pd

            paths += [str(v) for v in pd.read_csv(ann, header=None, usecols=[0])[0]]
    videos = root / "videos"
    if videos.is_dir():
        # <group>/<youtube id>.mp4/ folders: also the clips of splits without annotations.
        paths += [f"{d.parent.name}/{d.name}/x.mp4" for d in sorted(videos.glob("*/*")) if d.is_dir()]
    if not csvs and not videos.is_dir():
        raise DatasetLayoutError(f"{root}: no annotations/*.csv or videos/ (BoLD: BOLD_public layout)")
    found.ids = _unique(bold_youtube_id(p) for p in paths)
    without = len({p.rsplit("/", 1)[0] for p in paths if bold_youtube_id(p) is None})
    if without:
        found.notes.append(f"{without} BoLD video folder(s) carry no 11-character YouTube id and were left out")
    return found


def _meld(root: Path) -> DatasetExclusions:
    base = root / "MELD.Raw" if (root / "MELD.Raw").is_dir() else root
    if not any(base.glob("*_sent_emo.csv")) and not any(base.glob("*/*_sent_emo.csv")):
        raise DatasetLayoutError(f"{root}: no *_sent_emo.csv (MELD.Raw layout)")
    return DatasetExclusions("meld", titles=list(MELD_TITLES),
                             notes=["MELD is cut from the Friends TV show: its title is excluded; "
                                    "its files carry no YouTube ids"])


def _clean_title(text: str | None) -> str:
    # LIRIS-ACCEDE writes titles with underscores ("After_The_Rain").
    return " ".join(str(text or "").replace("_", " ").split())


def _titles_in_xml(path: Path) -> list[str]:
    try:
        tree = ET.parse(path)
    except (ET.ParseError, OSError):
        return []
    return [_clean_title(el.text) for el in tree.iter() if el.tag.lower() in _TITLE_FIELDS and el.text]


def _titles_in_table(path: Path) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            sample = f.read(4096)
            f.seek(0)
            delimiter = "\t" if sample.count("\t") > sample.count(",") else ","
            reader = csv.DictReader(f, delimiter=delimiter)
            cols = [c for c in reader.fieldnames or [] if c and c.strip().lower() in _TITLE_FIELDS]
            if not cols:
                return []
            return [_clean_title(row.get(cols[0])) for row in reader]
    except (OSError, csv.Error):
        return []


def _liris(root: Path) -> DatasetExclusions:
    found = DatasetExclusions("liris")
    titles: list[str] = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.stat().st_size > _MAX_METADATA_BYTES:
            continue
        suffix = path.suffix.lower()
        if suffix == ".xml":
            titles += _titles_in_xml(path)
        elif suffix in (".csv", ".tsv") or (suffix == ".txt" and "valence" not in path.name.lower()):
            titles += _titles_in_table(path)
    found.titles = _unique(titles)
    if not found.titles:
        found.notes.append("LIRIS-ACCEDE: no file here names its movies (the MediaEval annotations number "
                           "them: MEDIAEVAL18_00, ...); add titles by hand to the exclusion file")
    return found


def _moviegraphs(root: Path) -> DatasetExclusions:
    return DatasetExclusions("moviegraphs", notes=[
        "MovieGraphs names its movies by IMDb id only (tt...): no titles or YouTube ids in its files; "
        "add the movie titles by hand to the exclusion file"])


def _emotic(root: Path) -> DatasetExclusions:
    return DatasetExclusions("emotic", notes=[
        "EMOTIC is images (MSCOCO, ADE20K, web images): no YouTube ids or titles to exclude"])


_READERS = {"bold": _bold, "meld": _meld, "liris": _liris, "moviegraphs": _moviegraphs, "emotic": _emotic}


def dataset_exclusions(name: str, root: str | Path) -> DatasetExclusions:
    """The ids, titles and notes of dataset `name` in folder `root`. Raises KeyError
    for an unknown dataset and DatasetLayoutError for a folder without its files."""
    key = get_module(name).NAME
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"{root}: no such folder")
    return _READERS[key](root)


def exclusions_from_dataset(name: str, root: str | Path) -> tuple[list[str], list[str]]:
    """(YouTube ids, titles) that dataset `name`'s files in `root` contain."""
    found = dataset_exclusions(name, root)
    return found.ids, found.titles
