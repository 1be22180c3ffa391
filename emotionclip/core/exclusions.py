"""Videos the TV dataset must not contain: those of the downstream benchmarks.

Paper appendix A.1: "We then manually removed videos appearing in downstream
datasets based on YouTube id and movie title." Section 4.1: MELD is cut from
the Friends TV show. Three kinds of rule, from two places:

- the catalog, `stages.search`: `exclude_ids` (default: the 11 BoLD ids the
  authors' index script excluded), `exclude_titles` (exact titles, compared
  case-insensitively with whitespace normalised) and `exclude_title_patterns`
  (regular expressions, case-insensitive; default: the word "Friends");
- the data root's `dataset/exclusions.yaml` (artifact `exclusions`), written by
  `emotionclip eval exclusions <dataset>` (`add_exclusions`) and editable by hand::

      ids: [...]            # added by hand
      titles: [...]         # added by hand
      sources:              # one entry per downstream dataset folder read
        - {dataset: bold, root: /data/BOLD_public, added: <ISO time>, ids: [...], titles: [...]}

`load_exclusions` merges both; `Exclusions.reason` says why a video is excluded.
"""

from __future__ import annotations

import datetime as _dt
import re
import unicodedata
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

import yaml

from emotionclip.core.ids import InvalidVideoId, validate_video_id
from emotionclip.core.io import atomic_write_text, exists, open_file

if TYPE_CHECKING:
    from emotionclip.core.catalog import Catalog, SearchParams

ARTIFACT = "exclusions"
FILE_KEYS = ("ids", "titles", "sources")
SOURCE_KEYS = ("dataset", "root", "added", "ids", "titles")


class ExclusionsError(ValueError):
    """An exclusion list that cannot be used; the message names the file and the entry."""


def normalize_title(title: str | None) -> str:
    """Case-folded, NFKC-normalised, runs of whitespace made one space: how exact
    titles are compared (a listed "The  Office" excludes "the office")."""
    return " ".join(unicodedata.normalize("NFKC", title or "").casefold().split())


def compile_title_pattern(pattern: str) -> re.Pattern[str]:
    """A title pattern as matched: case-insensitive, anywhere in the title."""
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error as e:
        raise ExclusionsError(f"title pattern {pattern!r} is not a valid regular expression: {e}") from None


@dataclass
class Exclusions:
    """Excluded YouTube ids, exact titles and title patterns. `id_sources` /
    `title_sources` say where an id or (normalised) title was listed, for `reason`."""

    ids: set[str] = field(default_factory=set)
    titles: list[str] = field(default_factory=list)
    title_patterns: list[str] = field(default_factory=list)
    id_sources: dict[str, str] = field(default_factory=dict)
    title_sources: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ids = set(self.ids)
        self._titles = {normalize_title(t) for t in self.titles if normalize_title(t)}
        self._patterns = [(p, compile_title_pattern(p)) for p in self.title_patterns]

    def id_reason(self, video_id: str) -> str | None:
        if video_id in self.ids:
            return f"excluded id ({self.id_sources.get(video_id, 'exclusion list')})"
        return None

    def title_reason(self, title: str | None) -> str | None:
        if not title:
            return None
        norm = normalize_title(title)
        if norm in self._titles:
            return f"excluded title {title!r} ({self.title_sources.get(norm, 'exclusion list')})"
        for pattern, rx in self._patterns:
            if rx.search(title) or rx.search(norm):
                return f"title matches '{pattern}'"
        return None

    def reason(self, video_id: str, title: str | None) -> str | None:
        """Why this video is excluded (the first rule that applies), or None."""
        return self.id_reason(video_id) or self.title_reason(title)

    def __contains__(self, video_id: object) -> bool:
        return video_id in self.ids

    def merged(self, other: "Exclusions") -> "Exclusions":
        """Both lists; where both name an id or title, this one's source is kept."""
        return Exclusions(
            ids=self.ids | other.ids,
            titles=_unique([*self.titles, *other.titles], key=normalize_title),
            title_patterns=_unique([*self.title_patterns, *other.title_patterns]),
            id_sources={**other.id_sources, **self.id_sources},
            title_sources={**other.title_sources, **self.title_sources},
        )

    @classmethod
    def from_params(cls, params: "SearchParams") -> "Exclusions":
        """The catalog's rules alone (`stages.search`)."""
        from emotionclip.core.catalog import BOLD_OVERLAP_IDS

        bold = set(BOLD_OVERLAP_IDS)
        return cls(
            ids=set(params.exclude_ids),
            titles=list(params.exclude_titles),
            title_patterns=list(params.exclude_title_patterns),
            id_sources={i: "BoLD overlap" if i in bold else "catalog" for i in params.exclude_ids},
            title_sources={normalize_title(t): "catalog" for t in params.exclude_titles},
        )


def _unique(items: Iterable[str], key=lambda s: s) -> list[str]:
    seen: set[str] = set()
    out = []
    for item in items:
        k = key(item)
        if k and k not in seen:
            seen.add(k)
            out.append(item)
    return out


# -- the data root's file -------------------------------------------------------------
def exclusions_path(catalog: "Catalog") -> str:
    return catalog.artifact(ARTIFACT)


def _str_list(value: Any, where: str, *, ids: bool) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ExclusionsError(f"{where}: expected a list, got {type(value).__name__}")
    out = []
    for item in value:
        if ids:
            # YAML reads an unquoted all-digit or `0x..` id as a number: never a valid id here.
            if not isinstance(item, str):
                raise ExclusionsError(f"{where}: {item!r} is not a video id (quote it)")
            try:
                validate_video_id(item)
            except InvalidVideoId as e:
                raise ExclusionsError(f"{where}: {e}") from None
        elif not isinstance(item, str):
            item = str(item)
        out.append(item)
    return out


def read_exclusions_file(path: str) -> dict[str, Any]:
    """The file as {"ids", "titles", "sources"} (empty lists when the file is absent).
    Raises ExclusionsError naming the file and the bad entry."""
    empty: dict[str, Any] = {"ids": [], "titles": [], "sources": []}
    if not exists(path):
        return empty
    try:
        with open_file(path, "rb") as f:
            raw = yaml.safe_load(f.read().decode("utf-8"))
    except yaml.YAMLError as e:
        raise ExclusionsError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    except UnicodeDecodeError:
        raise ExclusionsError(f"{path}: not UTF-8 text") from None
    if raw is None:
        return empty
    if not isinstance(raw, dict):
        raise ExclusionsError(f"{path}: top level must be a mapping with ids, titles, sources")
    unknown = sorted(set(raw) - set(FILE_KEYS))
    if unknown:
        raise ExclusionsError(f"{path}: unknown key {unknown[0]!r} (expected {', '.join(FILE_KEYS)})")
    out = {"ids": _str_list(raw.get("ids"), f"{path}: ids", ids=True),
           "titles": _str_list(raw.get("titles"), f"{path}: titles", ids=False),
           "sources": []}
    sources = raw.get("sources") or []
    if not isinstance(sources, list):
        raise ExclusionsError(f"{path}: sources: expected a list")
    for i, src in enumerate(sources):
        where = f"{path}: sources[{i}]"
        if not isinstance(src, dict) or not src.get("dataset"):
            raise ExclusionsError(f"{where}: expected a mapping with a dataset name")
        unknown = sorted(set(src) - set(SOURCE_KEYS))
        if unknown:
            raise ExclusionsError(f"{where}: unknown key {unknown[0]!r} (expected {', '.join(SOURCE_KEYS)})")
        out["sources"].append({
            "dataset": str(src["dataset"]),
            "root": None if src.get("root") is None else str(src["root"]),
            "added": None if src.get("added") is None else str(src["added"]),
            "ids": _str_list(src.get("ids"), f"{where}.ids", ids=True),
            "titles": _str_list(src.get("titles"), f"{where}.titles", ids=False),
        })
    return out


def _from_file(data: dict[str, Any], name: str) -> Exclusions:
    ids: set[str] = set(data["ids"])
    titles: list[str] = list(data["titles"])
    id_sources = {i: name for i in data["ids"]}
    title_sources = {normalize_title(t): name for t in data["titles"]}
    for src in data["sources"]:
        label = src["dataset"]
        for i in src["ids"]:
            ids.add(i)
            id_sources.setdefault(i, label)
        for t in src["titles"]:
            titles.append(t)
            title_sources.setdefault(normalize_title(t), label)
    return Exclusions(ids=ids, titles=_unique(titles, key=normalize_title), id_sources=id_sources,
                      title_sources=title_sources)


def load_exclusions(catalog: "Catalog") -> Exclusions:
    """The catalog's rules (`stages.search.exclude_*`) plus the data root's exclusion file."""
    path = exclusions_path(catalog)
    data = read_exclusions_file(path)
    return Exclusions.from_params(catalog.stages.search).merged(_from_file(data, path.rsplit("/", 1)[-1]))


def add_exclusions(
    catalog: "Catalog",
    ids: Iterable[str],
    titles: Iterable[str],
    source: str,
    *,
    root: str | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Merge `ids` and `titles` found in a downstream dataset (`source`, read from
    `root`) into the data root's exclusion file, atomically. A second run for the
    same dataset and root updates its entry. Returns counts: `ids_added` /
    `titles_added` (new to the file), `ids_known` / `titles_known` (already excluded
    by the file or the catalog), the totals and the path. `dry_run`: count, write nothing."""
    ids = _unique(_str_list(list(ids), f"{source} ids", ids=True))
    titles = _unique([" ".join(t.split()) for t in titles], key=normalize_title)
    path = exclusions_path(catalog)
    name = path.rsplit("/", 1)[-1]
    data = read_exclusions_file(path)
    in_file = _from_file(data, name)
    before = Exclusions.from_params(catalog.stages.search).merged(in_file)
    new_ids = [i for i in ids if i not in in_file.ids]
    new_titles = [t for t in titles if normalize_title(t) not in in_file._titles]

    entry = next((s for s in data["sources"] if s["dataset"] == source and s["root"] == root), None)
    if entry is None:
        entry = {"dataset": source, "root": root, "added": None, "ids": [], "titles": []}
        data["sources"].append(entry)
    entry["ids"] = _unique([*entry["ids"], *ids])
    entry["titles"] = _unique([*entry["titles"], *titles], key=normalize_title)
    entry["added"] = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    after = _from_file(data, name)
    if not dry_run:
        header = ("# Videos the TV dataset must not contain (paper appendix A.1: videos of the downstream\n"
                  "# datasets removed by YouTube id and title). ids/titles: added by hand; sources: written\n"
                  "# by `emotionclip eval exclusions`. Titles match exactly, ignoring case and spacing.\n")
        body = yaml.safe_dump({"ids": data["ids"], "titles": data["titles"], "sources": data["sources"]},
                              sort_keys=False, allow_unicode=True, width=100)
        atomic_write_text(path, header + body)
    return {
        "path": path,
        "dataset": source,
        "dry_run": dry_run,
        "ids_found": len(ids),
        "titles_found": len(titles),
        "ids_added": len(new_ids),
        "titles_added": len(new_titles),
        "ids_known": sum(1 for i in ids if i in before.ids),
        "titles_known": sum(1 for t in titles if before.title_reason(t) is not None),
        "ids_total": len(after.ids),
        "titles_total": len(after.titles),
    }
