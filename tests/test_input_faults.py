"""Input handling on awkward but valid inputs: caption cues listed out of time
order, tiny and rotated videos, file names that are not Latin (and names that
collide on one video id). Real ffmpeg videos, real caption text, no mocks."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from emotionclip.core.catalog import load_catalog
from emotionclip.core.ffmpeg import probe_video, run_ffmpeg
from emotionclip.core.ids import sanitize_video_id, validate_video_id
from emotionclip.sample import make_test_video
from emotionclip.stages.download import import_local_folder, import_local_video, run_download
from emotionclip.stages.frames import run_frames
from emotionclip.stages.words import parse_caption_text, read_caption_words, run_words
from loopback import LoopbackServer, Route

FIX = Path(__file__).parent / "fixtures" / "captions"
VTT = b"WEBVTT\n\n00:00:00.000 --> 00:00:00.800\nhello there\n"

# Three cues in the file order 6.0-9.5, 0.5-4.0, 3.0-7.0 (the last two overlap).
CUES = [
    (6.0, 9.5, "one two three four five six seven eight nine ten eleven twelve thirteen"),
    (0.5, 4.0, "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima"),
    (3.0, 7.0, "uno dos tres cuatro cinco seis siete ocho nueve diez once doce"),
]
IN_TIME_ORDER = [CUES[1], CUES[2], CUES[0]]


def _ts(t: float, sep: str) -> str:
    ms = round(t * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}{sep}{ms % 1000:03d}"


def _vtt(cues) -> str:
    return "WEBVTT\n\n" + "".join(f"{_ts(a, '.')} --> {_ts(b, '.')}\n{text}\n\n" for a, b, text in cues)


def _srt(cues) -> str:
    return "".join(f"{i}\n{_ts(a, ',')} --> {_ts(b, ',')}\n{text}\n\n" for i, (a, b, text) in enumerate(cues, 1))


def _check_against_cues(df, cues) -> None:
    """Every word once, cue after cue in time order, monotone, inside its own cue."""
    expected = [(w, a, b) for a, b, text in cues for w in text.split()]
    assert df["word"].tolist() == [w for w, _, _ in expected]
    assert (np.diff(df["start_s"]) >= 0).all()
    for (_, a, b), start, end in zip(expected, df["start_s"], df["end_s"]):
        assert a <= start < end <= b  # inside the cue, and no word squeezed to zero length


# -- caption cues out of time order ------------------------------------------------------
@pytest.mark.parametrize("fmt,make", [("vtt", _vtt), ("srt", _srt)])
def test_out_of_order_cues_are_read_in_time_order(fmt, make):
    df = parse_caption_text(make(CUES), fmt, f"shuffled.{fmt}")
    _check_against_cues(df, IN_TIME_ORDER)
    assert df.attrs["cues_reordered"] == 2  # 0.5-4.0 and 3.0-7.0 came after 6.0-9.5
    in_order = parse_caption_text(make(IN_TIME_ORDER), fmt, f"ordered.{fmt}")
    assert in_order.attrs["cues_reordered"] == 0
    assert in_order[["word", "start_s", "end_s"]].equals(df[["word", "start_s", "end_s"]])


def test_shuffled_rolling_automatic_vtt_still_gives_every_word_once():
    text = (FIX / "auto_rolling.en.vtt").read_text()
    header, *blocks = text.strip("\n").split("\n\n")
    shuffled = blocks[:]
    random.Random(3).shuffle(shuffled)
    assert shuffled != blocks
    reference = read_caption_words(FIX / "auto_rolling.en.vtt")
    assert reference.attrs["cues_reordered"] == 0
    df = parse_caption_text("\n\n".join([header, *shuffled]) + "\n", "vtt", "shuffled.en.vtt")
    assert df["word"].tolist() == reference["word"].tolist()  # each word exactly once
    assert df.equals(reference)  # same times and precision as the file in order
    assert df.attrs["cues_reordered"] > 0


def test_out_of_order_json3_events_are_read_in_time_order():
    events = [{"tStartMs": int(a * 1000), "dDurationMs": int((b - a) * 1000), "segs": [{"utf8": text}]}
              for a, b, text in CUES]
    df = parse_caption_text(json.dumps({"events": events}), "json3", "shuffled.json3")
    _check_against_cues(df, IN_TIME_ORDER)
    assert df.attrs["cues_reordered"] == 2


@pytest.fixture
def catalog(tmp_path):
    # No sleeps between yt-dlp requests: the loopback server never throttles.
    return load_catalog(data_root=str(tmp_path / "data"), overrides={"stages.download": {
        "retries": 1, "sleep_requests_s": 0, "sleep_interval_s": 0.001, "max_sleep_interval_s": 0.01}})


def test_words_stage_records_the_reordered_cues(catalog, tmp_path):
    src = make_test_video(tmp_path / "src" / "ep.mp4", duration_s=1.0, width=32, height=16, fps=8)
    (tmp_path / "src" / "ep.en.srt").write_text(_srt(CUES))
    vid = import_local_video(catalog, src, tmp_path / "src" / "ep.en.srt")
    summary = run_words(catalog, vid)
    assert summary["cues_reordered"] == 2 and summary["n_words"] == 37
    table = pq.read_table(catalog.artifact("words", vid))
    assert table.schema.metadata[b"cues_reordered"] == b"2"
    _check_against_cues(table.to_pandas(), IN_TIME_ORDER)


# -- probing: tiny and rotated videos ------------------------------------------------------
def test_tiny_16x8_video_probes_imports_and_gives_frames(catalog, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    run_ffmpeg(["-y", "-f", "lavfi", "-i", "testsrc=size=16x8:rate=8:duration=1", "-pix_fmt", "yuv420p",
                str(src / "tiny.mp4")])
    (src / "tiny.en.vtt").write_bytes(VTT)
    info = probe_video(src / "tiny.mp4")
    assert (info.width, info.height, info.fps) == (16, 8, 8)
    result = import_local_folder(catalog, src)
    assert (result.video_ids, result.failures) == (["tiny"], [])
    meta = json.loads(Path(catalog.artifact("info", "tiny")).read_text())
    assert (meta["width"], meta["height"]) == (16, 8)
    frames = run_frames(catalog, "tiny")
    assert (frames["width"], frames["height"], frames["n_frames"]) == (512, 256, 8)


@pytest.fixture(scope="module")
def phone_mp4(tmp_path_factory) -> Path:
    """Stored 32x16, displayed 16x32: a display matrix of 90 degrees, as phones write it."""
    folder = tmp_path_factory.mktemp("phone")
    land = make_test_video(folder / "land.mp4", duration_s=1.0, width=32, height=16, fps=8)
    phone = folder / "phone.mp4"
    run_ffmpeg(["-y", "-display_rotation", "90", "-i", str(land), "-c", "copy", str(phone)])
    return phone


def test_rotated_local_video_has_its_displayed_size_in_info_json(catalog, tmp_path, phone_mp4):
    src = tmp_path / "src"
    src.mkdir()
    (src / "phone.mp4").write_bytes(phone_mp4.read_bytes())
    (src / "phone.en.vtt").write_bytes(VTT)
    assert import_local_folder(catalog, src).video_ids == ["phone"]
    meta = json.loads(Path(catalog.artifact("info", "phone")).read_text())
    assert (meta["width"], meta["height"]) == (16, 32)


def test_rotated_downloaded_video_has_its_displayed_size_in_info_json(catalog, phone_mp4):
    page = (b'<!doctype html><html><head><title>Phone</title></head><body><video controls>'
            b'<source src="/media/phone.mp4" type="video/mp4">'
            b'<track kind="captions" srclang="en" label="English" src="/media/phone.en.vtt"></video></body></html>')
    routes = {"/phone.html": Route(page, "text/html"), "/media/phone.mp4": Route(phone_mp4.read_bytes(), "video/mp4"),
              "/media/phone.en.vtt": Route(VTT, "text/vtt")}
    with LoopbackServer(routes) as srv:
        summary = run_download(catalog, url=srv.url("/phone.html"))
    meta = json.loads(Path(catalog.artifact("info", summary["video_id"])).read_text())
    assert (meta["width"], meta["height"]) == (16, 32)


# -- ids from file names ----------------------------------------------------------------------
def test_sanitized_ids_keep_a_hash_of_what_was_dropped():
    assert sanitize_video_id("Friends_s01-e02") == "Friends_s01-e02"  # already valid: unchanged
    assert sanitize_video_id("My Show: ep 1/2") == "My_Show_ep_1_2"  # ASCII punctuation only: readable
    family_ja, family_ru = sanitize_video_id("家族"), sanitize_video_id("Семья")
    assert family_ja != family_ru
    assert family_ja.startswith("video-") and len(family_ja) == len("video-") + 8
    partial = sanitize_video_id("Friends_s01_家族")
    assert partial.startswith("Friends_s01-") and partial != sanitize_video_id("Friends_s01_Семья")
    assert sanitize_video_id("Amélie") != sanitize_video_id("Amelie")
    assert sanitize_video_id("Am\u0065\u0301lie") == sanitize_video_id("Am\u00e9lie")  # NFD and NFC file names
    long = sanitize_video_id("é" + "x" * 300)
    assert len(long) == 128 and long != sanitize_video_id("é" + "x" * 301)
    for name in ("家族", "Семья", "Friends_s01_家族", "!!!", "", "é" * 200):
        assert validate_video_id(sanitize_video_id(name)) == sanitize_video_id(name)  # stable and valid


def _folder(root: Path, names: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for stem in names:
        make_test_video(root / f"{stem}.mp4", duration_s=0.5, width=32, height=16, fps=8)
        (root / f"{stem}.en.vtt").write_bytes(VTT)
    return root


def test_non_latin_file_names_import_as_distinct_videos(catalog, tmp_path):
    result = import_local_folder(catalog, _folder(tmp_path / "src", ["家族", "Семья"]))
    assert result.failures == [] and len(set(result.video_ids)) == 2
    titles = {json.loads(Path(catalog.artifact("info", v)).read_text())["title"] for v in result.video_ids}
    assert titles == {"家族", "Семья"}


def test_two_files_on_one_id_is_a_failure_naming_both(catalog, tmp_path):
    result = import_local_folder(catalog, _folder(tmp_path / "src", ["a b", "a_b"]))
    assert result.video_ids == ["a_b"]  # the first file still imports
    assert json.loads(Path(catalog.artifact("info", "a_b")).read_text())["title"] == "a b"
    [failure] = result.failures
    assert failure["video_id"] == "a_b" and failure["stage"] == "download"
    assert "a b.mp4" in failure["error"] and "a_b.mp4" in failure["error"]


def test_id_taken_by_an_earlier_import_of_another_file_is_a_failure(catalog, tmp_path):
    first = _folder(tmp_path / "one", ["a b"])
    assert import_local_folder(catalog, first).video_ids == ["a_b"]
    result = import_local_folder(catalog, _folder(tmp_path / "two", ["a_b"]))
    assert result.video_ids == []
    [failure] = result.failures
    assert "a_b.mp4" in failure["error"] and "'a b'" in failure["error"]
    assert json.loads(Path(catalog.artifact("info", "a_b")).read_text())["title"] == "a b"  # left alone
    again = import_local_folder(catalog, first)  # re-importing the same file is no clash
    assert (again.video_ids, again.failures) == (["a_b"], [])
