"""Captions -> words, on hand-written fixtures of every format."""

from __future__ import annotations

import json
from pathlib import Path

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest

from emotionclip.stages.words import CaptionError, clean_line, read_caption_words, run_words
from emotionclip.core.catalog import load_catalog
from emotionclip.core.errors import StageError
from emotionclip.core.schemas import WORDS

FIX = Path(__file__).parent / "fixtures" / "captions"


def _check_invariants(df):
    assert list(df.columns) == ["word", "start_s", "end_s", "precision"]
    assert (np.diff(df["start_s"]) >= 0).all()  # non-decreasing
    assert (df["end_s"] >= df["start_s"]).all()
    assert set(df["precision"]) <= {"word", "segment"}
    assert all(w and " " not in w for w in df["word"])


def test_rolling_automatic_vtt_gives_each_word_once_with_its_tag_time():
    df = read_caption_words(FIX / "auto_rolling.en.vtt")
    _check_invariants(df)
    assert " ".join(df["word"]) == ("so today we're going to talk about something really important "
                                    "i can't believe it wow")
    assert df["start_s"].tolist() == [0.16, 0.48, 0.799, 1.04, 1.28, 1.439, 2.32, 2.639, 3.12, 3.6,
                                      7.04, 7.52, 7.919, 8.4, 9.36]
    # A word ends where the next begins, or at the end of its cue.
    assert df["end_s"].tolist()[:6] == [0.48, 0.799, 1.04, 1.28, 1.439, 2.31]
    assert df.loc[9, "end_s"] == 4.789 and df.loc[13, "end_s"] == 9.35
    assert df["precision"].tolist() == ["word"] * 14 + ["segment"]  # "wow" came without word tags
    assert df.loc[14, "end_s"] == 11.0


def test_json3_automatic_uses_word_offsets():
    df = read_caption_words(FIX / "auto.en.json3")
    _check_invariants(df)
    assert df["word"].tolist() == ["so", "today", "we're", "going", "to", "talk", "wow"]
    assert df["start_s"].tolist() == [0.16, 0.48, 0.799, 1.04, 2.32, 2.639, 7.04]
    assert df["end_s"].tolist() == [0.48, 0.799, 1.04, 2.32, 2.639, 7.03, 10.04]
    assert df["precision"].tolist() == ["word"] * 6 + ["segment"]


def test_json3_manual_splits_each_event_evenly():
    df = read_caption_words(FIX / "manual.en.json3")
    _check_invariants(df)
    assert " ".join(df["word"]) == "Where were you last night? I was at home."
    assert df["start_s"].tolist() == [1.0, 1.4, 1.8, 2.2, 2.6, 3.5, 4.0, 4.5, 5.0]
    assert df["end_s"].tolist()[-1] == 5.5
    assert set(df["precision"]) == {"segment"}


def test_manual_vtt_strips_markup_and_splits_cues():
    df = read_caption_words(FIX / "manual.en.vtt")
    _check_invariants(df)
    assert " ".join(df["word"]) == ("Where were you last night? I was at home, Tom & I swear. "
                                    "Don't lie to me! Fine. La la la You're funny.")
    assert set(df["precision"]) == {"segment"}
    first = df.iloc[:5]
    assert first["start_s"].tolist() == [1.0, 1.4, 1.8, 2.2, 2.6]
    assert first["end_s"].tolist() == [1.4, 1.8, 2.2, 2.6, 3.0]
    dont = df[df["word"] == "Don't"].iloc[0]
    assert (dont["start_s"], dont["end_s"]) == (7.5, 7.9)  # cue with an identifier and a speaker label
    assert df["end_s"].iloc[-1] == 62.0  # mm:ss.ttt timestamps


def test_srt_and_its_variants():
    df = read_caption_words(FIX / "manual.en.srt")
    _check_invariants(df)
    assert " ".join(df["word"]) == ("Hello, everybody. Welcome back to the show. Thank you! "
                                    "It's great to be here really.")
    assert df["start_s"].iloc[0] == 1.0 and df["end_s"].iloc[6] == 4.0
    assert df.loc[df["word"] == "Thank", ["start_s", "end_s"]].values.tolist() == [[4.5, 5.25]]


def test_crlf_and_bom_do_not_change_the_words(tmp_path):
    for name in ("manual.en.srt", "manual.en.vtt", "auto_rolling.en.vtt"):
        text = (FIX / name).read_text(encoding="utf-8")
        variant = tmp_path / name
        variant.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode("utf-8"))
        assert read_caption_words(variant).equals(read_caption_words(FIX / name))


def test_rolling_captions_converted_to_srt_are_deduplicated():
    df = read_caption_words(FIX / "auto_converted.en.srt")
    _check_invariants(df)
    assert " ".join(df["word"]) == ("so today we're going to talk about something really important "
                                    "i can't believe it")
    assert df.loc[df["word"] == "about", "start_s"].item() == 2.31


def test_format_is_sniffed_when_the_extension_is_unknown(tmp_path):
    for name in ("auto.en.json3", "manual.en.vtt", "manual.en.srt"):
        odd = tmp_path / (name + ".txt")
        odd.write_bytes((FIX / name).read_bytes())
        assert read_caption_words(odd).equals(read_caption_words(FIX / name))


def test_fsspec_url():
    fsspec.filesystem("memory").pipe("/captions-test/a.en.vtt", (FIX / "auto_rolling.en.vtt").read_bytes())
    assert len(read_caption_words("memory://captions-test/a.en.vtt")) == 15


@pytest.mark.parametrize("name,line,fragment", [
    ("bad_timing.vtt", 6, "malformed cue timing"),
    ("bad_block.srt", 5, "expected a cue number or timing"),
    ("truncated.json3", 2, "invalid JSON"),
    ("no_header.vtt", 1, "missing WEBVTT header"),
    ("empty.srt", None, "empty"),
    ("only_sounds.vtt", None, "no words"),
    ("missing.vtt", None, "not found"),
])
def test_bad_captions_name_file_and_line(name, line, fragment):
    with pytest.raises(CaptionError) as err:
        read_caption_words(FIX / name)
    assert isinstance(err.value, ValueError)
    assert err.value.line == line
    assert name in str(err.value) and fragment in str(err.value)
    if line is not None:
        assert f"{name}:{line}:" in str(err.value)


def test_malformed_json3_structure(tmp_path):
    bad = tmp_path / "x.json3"
    bad.write_text(json.dumps({"events": [{"segs": [{"utf8": "no start time"}]}]}))
    with pytest.raises(CaptionError, match="event 0"):
        read_caption_words(bad)
    bad.write_text(json.dumps({"wireMagic": "pb3"}))
    with pytest.raises(CaptionError, match="events"):
        read_caption_words(bad)


def test_reversed_cue_is_malformed(tmp_path):
    bad = tmp_path / "x.srt"
    bad.write_text("1\n00:00:05,000 --> 00:00:04,000\nbackwards\n")
    with pytest.raises(CaptionError, match=r"x.srt:2: cue ends before it starts"):
        read_caption_words(bad)


@pytest.mark.parametrize("raw,clean", [
    ("<i>Hello</i> <b>there</b>", "Hello there"),
    ("&gt;&gt; JOHN: I&#39;m here &amp; ready", "I'm here & ready"),
    ("- What? [laughs] (SIGHS) ♪ la ♪", "What? la"),
    ("<c.colorE5E5E5>so</c><00:00:01.000><c> what</c>", "so what"),
    ("Note: this stays", "Note: this stays"),
])
def test_clean_line(raw, clean):
    assert clean_line(raw) == clean


def _words_catalog(tmp_path: Path, caption_file: str | None, content: bytes | None):
    cat = load_catalog(data_root=str(tmp_path / "data"))
    raw = Path(cat.artifact("raw_dir", "vid_w"))
    raw.mkdir(parents=True)
    if caption_file and content is not None:
        (raw / caption_file).write_bytes(content)
    info = {"id": "vid_w", "title": "t", "channel": None, "duration": 11, "url": None, "source": "local",
            "caption_kind": "automatic", "caption_lang": "en", "caption_file": caption_file,
            "video_file": "vid_w.mp4", "width": 320, "height": 240}
    Path(cat.artifact("info", "vid_w")).write_text(json.dumps(info))
    return cat


def test_run_words_writes_the_words_table(tmp_path):
    cat = _words_catalog(tmp_path, "vid_w.en.vtt", (FIX / "auto_rolling.en.vtt").read_bytes())
    summary = run_words(cat, "vid_w")
    assert summary["n_words"] == 15 and summary["precision"] == "word"
    table = pq.read_table(cat.artifact("words", "vid_w"))
    assert table.schema.remove_metadata().equals(WORDS)
    assert table.schema.metadata[b"fingerprint"].decode() == cat.stage_fingerprint("words")
    assert table.column("word").to_pylist()[:3] == ["so", "today", "we're"]


@pytest.mark.parametrize("caption_file,content,fragment", [
    (None, None, "no caption file"),
    ("vid_w.en.vtt", None, "not found"),
    ("vid_w.en.vtt", b"", "empty"),
    ("vid_w.en.vtt", (FIX / "bad_timing.vtt").read_bytes(), "vid_w.en.vtt:6"),
    ("../info.json", None, "file name"),
])
def test_run_words_bad_caption_is_a_stage_error(tmp_path, caption_file, content, fragment):
    cat = _words_catalog(tmp_path, caption_file, content)
    with pytest.raises(StageError, match=fragment) as err:
        run_words(cat, "vid_w")
    assert err.value.stage == "words" and err.value.video_id == "vid_w"
    assert not Path(cat.artifact("words", "vid_w")).exists()
