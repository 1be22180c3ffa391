"""Words stage: a caption file -> one row per word with start/end times.

Formats:
- YouTube `.json3`: events with `segs`; automatic captions give each word an
  offset (`tOffsetMs`) -> precision "word".
- YouTube's automatic WebVTT is *rolling*: every cue repeats the line before
  it and the new line carries `<00:00:01.920><c> word</c>` tags. Each word is
  emitted once, from the cue where it first appears -> precision "word".
- Plain WebVTT and SRT cues: the cue is split evenly over its words ->
  precision "segment".

Cues (and json3 events) are read in time order: a file that lists them out of
order is stably sorted by start first, and the number of cues that had to move
back is reported as `cues_reordered` (the DataFrame's `attrs`, the stage summary
and the words.parquet metadata).

Text is cleaned of markup (<i>, <c.colorE5E5E5>, <v Name>), HTML entities,
speaker labels (">>", "JOHN:"), dialogue dashes and sound tags ([Music], (LAUGHS), ♪).
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

import pandas as pd

from emotionclip.core.schemas import WORDS

log = logging.getLogger(__name__)
_T = TypeVar("_T")


class CaptionError(ValueError):
    """A caption file that cannot be turned into words; names the file and line."""

    def __init__(self, path: str, message: str, line: int | None = None):
        self.path = str(path)
        self.line = line
        self.message = message
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


# -- text cleaning --------------------------------------------------------------

_TS = r"(?:(\d+):)?(\d{1,2}):(\d{1,2})[.,](\d{1,3})"
_TIMING = re.compile(rf"^\s*{_TS}\s*-->\s*{_TS}(?:\s.*)?$")
_TS_TAG = re.compile(r"<((?:\d+:)?\d{1,2}:\d{1,2}[.,]\d{1,3})>")
_TAG = re.compile(r"</?[A-Za-z][^<>]*>|<(?:\d+:)?\d{1,2}:\d{1,2}[.,]\d{1,3}>")
_SOUND = re.compile(r"\[[^\[\]]*\]|\([A-Z][A-Z0-9 .,'!?&-]*\)|♪+|♫+")
_SPEAKER_CHEVRON = re.compile(r">>+")
_SPEAKER_LABEL = re.compile(r"^\s*[A-Z][A-Z0-9 .'&-]{0,30}:\s+")
_DIALOGUE_DASH = re.compile(r"^\s*[-\u2010-\u2015]+\s+")
_HAS_WORD_CHAR = re.compile(r"[\w&]")


def clean_line(line: str) -> str:
    """One caption line without markup, entities, speaker labels or sound tags."""
    s = _TAG.sub("", line)
    s = html.unescape(s).replace("\u00a0", " ")
    s = _SOUND.sub(" ", s)
    s = _SPEAKER_CHEVRON.sub(" ", s)
    s = _SPEAKER_LABEL.sub("", s)
    s = _DIALOGUE_DASH.sub("", s)
    return " ".join(s.split())


def _words_of(text: str) -> list[str]:
    # Tokens of pure punctuation ("-", "...") carry no word; punctuation is restored later anyway.
    return [w for w in text.split() if _HAS_WORD_CHAR.search(w)]


def _ts_seconds(h: str | None, m: str, s: str, frac: str) -> float:
    return int(h or 0) * 3600 + int(m) * 60 + int(s) + int(frac.ljust(3, "0")) / 1000


def _parse_ts(text: str) -> float:
    m = re.fullmatch(_TS, text.strip())
    if not m:
        raise ValueError(text)
    return _ts_seconds(*m.groups())


# -- word accumulation ----------------------------------------------------------------

@dataclass
class _Word:
    text: str
    start: float
    end: float  # for "word" precision: the latest possible end (cue end)
    precision: str


@dataclass
class _Cue:
    start: float
    end: float
    line: int  # 1-based line of the timing line
    lines: list[str] = field(default_factory=list)


def _spread(words: list[str], start: float, end: float, precision: str, out: list[_Word]) -> None:
    """Split [start, end] evenly over `words`."""
    if not words:
        return
    step = max(end - start, 0.0) / len(words)
    for i, w in enumerate(words):
        out.append(_Word(w, start + i * step, start + (i + 1) * step, precision))


def _after_previous(out: list[_Word], start: float, end: float) -> float:
    """Where to start spreading a cue [start, end] over its words: a cue that
    overlaps the previous one starts at that one's last word start (kept within
    its own span), so `_finish` need not squeeze its first words to zero length."""
    return min(max(start, out[-1].start), end) if out else start


def _timed_pieces(pieces: list[tuple[float, str]], cue_end: float, out: list[_Word]) -> None:
    """Pieces (start, text) with their own start times: one word -> precision "word"
    (its end is fixed later: the next word's start or the cue end); several words
    in one piece are spread up to the next piece."""
    for i, (t, text) in enumerate(pieces):
        words = _words_of(clean_line(text))
        if len(words) == 1:
            out.append(_Word(words[0], t, cue_end, "word"))
        elif words:
            nxt = pieces[i + 1][0] if i + 1 < len(pieces) else cue_end
            _spread(words, t, max(nxt, t), "segment", out)


def _in_time_order(items: list[_T], start_of: Callable[[_T], float]) -> tuple[list[_T], int]:
    """`items` stably sorted by start, and how many of them started before an
    earlier item in the file (the ones the sort moved back). Without the sort an
    out-of-order cue would be clamped onto the previous word's time in `_finish`
    and its words would collapse to zero length."""
    reordered = 0
    latest = float("-inf")
    for it in items:
        t = start_of(it)
        if t < latest:
            reordered += 1
        latest = max(latest, t)
    if not reordered:
        return items, 0
    return sorted(items, key=start_of), reordered  # sorted() is stable: equal starts keep file order


def _finish(words: list[_Word], path: str, cues_reordered: int = 0) -> pd.DataFrame:
    """Non-decreasing starts, word ends at the next word's start (capped by the cue end).
    `cues_reordered` is recorded in the result's `attrs`."""
    if not words:
        raise CaptionError(path, "caption has no words")
    prev = 0.0
    for w in words:
        # Cues are already in start order; only overlapping cues can go back in
        # time here: keep each cue's words together and never go back.
        if w.start < prev:
            w.start = prev
        prev = w.start
    for i, w in enumerate(words):
        if w.precision == "word" and i + 1 < len(words):
            w.end = min(w.end, words[i + 1].start)
        w.end = max(w.end, w.start)
    df = pd.DataFrame({
        "word": [w.text for w in words],
        "start_s": [round(w.start, 3) for w in words],
        "end_s": [round(w.end, 3) for w in words],
        "precision": [w.precision for w in words],
    })[[f.name for f in WORDS]]
    df.attrs["cues_reordered"] = int(cues_reordered)
    return df


# -- json3 --------------------------------------------------------------------------

def _parse_json3(text: str, path: str) -> pd.DataFrame:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise CaptionError(path, f"invalid JSON: {e.msg}", e.lineno) from None
    events = data.get("events") if isinstance(data, dict) else None
    if not isinstance(events, list):
        raise CaptionError(path, "json3 without an 'events' list")
    timed: list[tuple[int, dict, float]] = []
    for n, ev in enumerate(events):
        if not isinstance(ev, dict):
            raise CaptionError(path, f"event {n} is not an object")
        if ev.get("aAppend") or not ev.get("segs"):  # aAppend events only add a line break
            continue
        try:
            timed.append((n, ev, float(ev["tStartMs"]) / 1000))
        except (KeyError, TypeError, ValueError):
            raise CaptionError(path, f"event {n}: missing or bad tStartMs/dDurationMs/segs") from None
    timed, reordered = _in_time_order(timed, lambda item: item[2])
    out: list[_Word] = []
    for n, ev, t0 in timed:
        segs = ev["segs"]
        try:
            texts = [str(s.get("utf8", "")) for s in segs]
            offsets = [float(s.get("tOffsetMs", 0)) / 1000 for s in segs]
            # Without a duration the event lasts at least until its last word starts.
            end = t0 + max(float(ev.get("dDurationMs", 0)) / 1000, max(offsets))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise CaptionError(path, f"event {n}: missing or bad tStartMs/dDurationMs/segs") from None
        if not any(t.strip() for t in texts):  # "\n"-only segments
            continue
        word_timed = len(segs) > 1 or any(("tOffsetMs" in s or "acAsrConf" in s) for s in segs)
        if word_timed:
            _timed_pieces([(t0 + o, t) for o, t in zip(offsets, texts)], end, out)
        else:
            words = _words_of(" ".join(clean_line(t) for t in texts[0].splitlines()))
            _spread(words, _after_previous(out, t0, end), end, "segment", out)
    return _finish(out, path, reordered)


# -- WebVTT / SRT -----------------------------------------------------------------------

def _timing(line: str, path: str, ln: int) -> tuple[float, float]:
    m = _TIMING.match(line)
    if not m:
        raise CaptionError(path, f"malformed cue timing {line.strip()!r}", ln)
    g = m.groups()
    start, end = _ts_seconds(*g[:4]), _ts_seconds(*g[4:8])
    if end < start:
        raise CaptionError(path, f"cue ends before it starts ({line.strip()!r})", ln)
    return start, end


def _vtt_cues(lines: list[str], path: str) -> list[_Cue]:
    if not lines or not lines[0].lstrip("\ufeff").startswith("WEBVTT"):
        raise CaptionError(path, "missing WEBVTT header", 1)
    i = 1
    while i < len(lines) and lines[i].strip():  # header block (Kind:, Language:)
        if "-->" in lines[i]:
            break
        i += 1
    cues: list[_Cue] = []
    skipping = False  # inside a NOTE / STYLE / REGION block
    blank_before = True
    for j in range(i, len(lines)):
        line, ln = lines[j], j + 1
        if not line.strip():
            # Cue text ends at an empty line; YouTube's rolling cues contain " " lines,
            # so only a truly empty line ends a NOTE block, and cue boundaries are
            # found from the timing lines themselves.
            if line == "":
                skipping = False
            blank_before = True
            if cues and not skipping:
                cues[-1].lines.append("")
            continue
        after_empty = j == i or lines[j - 1] == ""
        if after_empty and line.split(" ", 1)[0] in ("NOTE", "STYLE", "REGION") and "-->" not in line:
            skipping = True
        if skipping:
            blank_before = False
            continue
        if "-->" in line:
            start, end = _timing(line, path, ln)
            if cues and blank_before is False and cues[-1].lines and j >= 2 and not lines[j - 2].strip():
                cues[-1].lines.pop()  # the line above was this cue's identifier
            cues.append(_Cue(start, end, ln))
        elif not cues:
            nxt = lines[j + 1] if j + 1 < len(lines) else ""
            if "-->" not in nxt:  # not an identifier of the first cue
                raise CaptionError(path, f"text outside a cue: {line.strip()!r}", ln)
        else:
            cues[-1].lines.append(line)
        blank_before = False
    return cues


def _srt_cues(lines: list[str], path: str) -> list[_Cue]:
    cues: list[_Cue] = []
    j = 0
    n = len(lines)
    while j < n:
        if not lines[j].strip():
            j += 1
            continue
        block_start = j
        if "-->" not in lines[j]:
            if lines[j].strip().lstrip("\ufeff").isdigit() and j + 1 < n and "-->" in lines[j + 1]:
                j += 1  # cue number
            else:
                raise CaptionError(path, f"expected a cue number or timing, got {lines[j].strip()!r}", block_start + 1)
        start, end = _timing(lines[j], path, j + 1)
        cue = _Cue(start, end, j + 1)
        j += 1
        while j < n and lines[j].strip():
            if _TIMING.match(lines[j]):
                break  # a missing blank line between cues
            cue.lines.append(lines[j])
            j += 1
        cues.append(cue)
    return cues


def _nonempty(cue: _Cue) -> list[str]:
    return [ln for ln in cue.lines if ln.strip()]


def _is_rolling(cues: list[_Cue]) -> bool:
    """YouTube automatic captions: word timestamp tags, or (converted to plain text)
    most cues starting with the previous cue's last line."""
    if any(_TS_TAG.search(ln) for c in cues for ln in c.lines):
        return True
    repeats = pairs = 0
    for a, b in zip(cues, cues[1:]):
        la, lb = _nonempty(a), _nonempty(b)
        if la and lb:
            pairs += 1
            repeats += clean_line(lb[0]) == clean_line(la[-1])
    return pairs >= 2 and repeats * 2 >= pairs


def _rolling_words(cues: list[_Cue], path: str, reordered: int) -> pd.DataFrame:
    out: list[_Word] = []
    prev_lines: set[str] = set()
    for cue in cues:
        shown: set[str] = set()
        for line in cue.lines:
            plain = clean_line(line)
            if not plain:
                continue
            shown.add(plain)
            parts = _TS_TAG.split(line)
            if len(parts) > 1:
                # parts = [text, ts, text, ts, text ...]; the first text starts with the cue.
                pieces = [(cue.start, parts[0])]
                for k in range(1, len(parts), 2):
                    pieces.append((_parse_ts(parts[k]), parts[k + 1]))
                _timed_pieces(pieces, cue.end, out)
            elif plain not in prev_lines:  # a new line without word tags (e.g. one word)
                _spread(_words_of(plain), cue.start, cue.end, "segment", out)
        prev_lines = shown
    return _finish(out, path, reordered)


def _plain_words(cues: list[_Cue], path: str, reordered: int) -> pd.DataFrame:
    out: list[_Word] = []
    for cue in cues:
        text = " ".join(clean_line(ln) for ln in cue.lines)
        _spread(_words_of(text), _after_previous(out, cue.start, cue.end), cue.end, "segment", out)
    return _finish(out, path, reordered)


def _cue_words(cues: list[_Cue], path: str) -> pd.DataFrame:
    if not cues:
        raise CaptionError(path, "caption has no cues")
    # Time order first: the rolling dedup compares each cue with the one shown before it.
    cues, reordered = _in_time_order(cues, lambda c: c.start)
    if _is_rolling(cues):
        return _rolling_words(cues, path, reordered)
    return _plain_words(cues, path, reordered)


# -- entry points ---------------------------------------------------------------------

def caption_format(path: str, text: str) -> str:
    """'json3', 'vtt' or 'srt', from the extension, else from the content."""
    ext = os.path.splitext(str(path))[1].lower().lstrip(".")
    if ext in ("json3", "vtt", "srt"):
        return ext
    head = text.lstrip("\ufeff \t\r\n")[:10]
    if head.startswith("{"):
        return "json3"
    if head.startswith("WEBVTT"):
        return "vtt"
    return "srt"


def parse_caption_text(text: str, fmt: str, path: str = "<caption>") -> pd.DataFrame:
    """Words table (docs/design.md section 3) from caption text in format `fmt`."""
    text = text.lstrip("\ufeff")
    if not text.strip():
        raise CaptionError(path, "caption file is empty")
    if fmt == "json3":
        return _parse_json3(text, path)
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if fmt == "vtt":
        return _cue_words(_vtt_cues(lines, path), path)
    if fmt == "srt":
        return _cue_words(_srt_cues(lines, path), path)
    raise CaptionError(path, f"unknown caption format {fmt!r}")


def read_caption_words(path: str | os.PathLike) -> pd.DataFrame:
    """Read a caption file (.json3, .vtt, .srt; local path or fsspec URL) into a
    DataFrame with columns word, start_s, end_s, precision: every word once, in
    time order (cues sorted by start), with non-decreasing start times;
    `df.attrs["cues_reordered"]` counts the cues the sort moved back. Raises
    CaptionError (a ValueError) naming the file (and line) when it is missing,
    empty or malformed."""
    from emotionclip.core.io import exists, open_file

    path = os.fspath(path)
    if not exists(path):
        raise CaptionError(path, "caption file not found")
    with open_file(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise CaptionError(path, "not UTF-8 text", line) from None
    return parse_caption_text(text, caption_format(path, text), path)


def run_words(catalog, video_id: str) -> dict[str, Any]:
    """Words stage for one video: info.json's caption_file (in raw_dir) ->
    catalog.artifact("words", video_id). Returns {"n_words", "precision",
    "duration_s", "cues_reordered"}; a missing, empty or malformed caption -> StageError."""
    from emotionclip.core.errors import StageError
    from emotionclip.core.ids import validate_video_id
    from emotionclip.core.io import atomic_write_parquet, exists, read_json

    validate_video_id(video_id)
    info_path = catalog.artifact("info", video_id)
    if not exists(info_path):
        raise StageError("words", video_id, f"no info.json at {info_path} (run download first)")
    info = read_json(info_path)
    name = info.get("caption_file")
    if not name:
        raise StageError("words", video_id, "video has no caption file (info.json caption_file is null)")
    if name != os.path.basename(name) or name in (".", ".."):
        raise StageError("words", video_id, f"caption_file must be a file name in raw_dir, got {name!r}")
    src = f"{catalog.artifact('raw_dir', video_id).rstrip('/')}/{name}"
    try:
        df = read_caption_words(src)
    except CaptionError as e:
        raise StageError("words", video_id, str(e)) from e
    reordered = int(df.attrs.get("cues_reordered", 0))
    if reordered:
        log.warning("words %s: %d caption cue(s) out of time order in %s; sorted by start", video_id, reordered, name)
    atomic_write_parquet(catalog.artifact("words", video_id), df, schema=WORDS,
                         metadata={"fingerprint": catalog.stage_fingerprint("words"),
                                   "caption_file": name, "caption_kind": str(info.get("caption_kind")),
                                   "cues_reordered": str(reordered)})
    counts = df["precision"].value_counts()
    return {"n_words": int(len(df)), "precision": str(counts.idxmax()),
            "duration_s": float(df["end_s"].max() - df["start_s"].min()), "cues_reordered": reordered}
