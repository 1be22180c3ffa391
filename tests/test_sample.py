"""The bundled sample corpus: videos with people in frame plus English captions,
in the local-folder layout, deterministic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from emotionclip.stages.words import clean_line, read_caption_words
from emotionclip.core.ffmpeg import probe_video
from emotionclip.stages.frames import iter_frames
from emotionclip.core.ids import sanitize_video_id
from emotionclip.sample import _asset, make_sample_corpus, make_test_video, sample_script


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Path]:
    return make_sample_corpus(tmp_path_factory.mktemp("corpus"))


def test_layout_and_videos(corpus):
    folder = corpus[0].parent
    assert [p.name for p in corpus] == ["sample_00.mp4", "sample_01.mp4", "sample_02.mp4"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [p.name for p in corpus] + [p.stem + ".en.vtt" for p in corpus])
    for video in corpus:
        assert sanitize_video_id(video.stem) == video.stem
        info = probe_video(video)
        assert (info.width, info.height) == (320, 240)
        assert info.duration_s == pytest.approx(24.0, abs=0.1)
    assert len({p.read_bytes() for p in corpus}) == 3  # three different shots


def test_captions_match_the_script(corpus):
    kinds = []
    for i, video in enumerate(corpus):
        kind, cues = sample_script(i)
        words = read_caption_words(video.with_name(video.stem + ".en.vtt"))
        assert set(words["precision"]) == ({"word"} if kind == "auto_vtt" else {"segment"})
        for start, end, line in cues:
            inside = words[(words["start_s"] >= start - 1e-6) & (words["start_s"] < end)]
            assert " ".join(inside["word"]) == " ".join(clean_line(line.text).split()), line
            kinds.append((line.kind, end - start))
        assert words["end_s"].max() <= 24.0
    durations = [d for k, d in kinds if k not in ("sound", "too_short", "too_long")]
    # Enough clips for the filter to keep, and some for each length rule to reject.
    assert len(durations) >= 8 and all(2 < d < 10 for d in durations)
    assert any(k == "too_short" and d < 2 for k, d in kinds)
    assert any(k == "too_long" and d > 10 for k, d in kinds)
    assert {k for k, _ in kinds} >= {"anger", "joy", "sadness", "fear", "surprise", "disgust", "neutral"}


def test_frames_show_the_photo_and_move(corpus):
    frames = list(iter_frames(corpus[1]))  # the bus photo, people standing in front of it
    assert len(frames) == 24 * 8
    # Frame 0 is the window at the start of the pan: x = (368-320)*0.5, y = (490-240)*0.45.
    photo = Image.open(_asset("bus.jpg")).convert("RGB").resize((368, 490), Image.BILINEAR)
    expected = np.asarray(photo.crop((24, 112, 344, 352)), dtype=np.float32)
    assert np.abs(frames[0].astype(np.float32) - expected).mean() < 12
    assert np.abs(frames[0].astype(np.float32) - frames[len(frames) // 2]).mean() > 20  # the camera moves


def test_deterministic(tmp_path):
    a = make_sample_corpus(tmp_path / "a", n_videos=2, duration_s=6)
    b = make_sample_corpus(tmp_path / "b", n_videos=2, duration_s=6)
    for pa, pb in zip(a, b):
        assert pa.read_bytes() == pb.read_bytes()
        cap = pa.stem + ".en.vtt"
        assert (pa.parent / cap).read_text() == (pb.parent / cap).read_text()


def test_make_test_video_with_filter(tmp_path):
    video = make_test_video(tmp_path / "v.mp4", duration_s=1, width=64, height=48, source="color",
                            vf="format=yuv420p,geq=lum=200:cb=128:cr=128")
    frame = next(iter_frames(video))
    assert frame.shape == (48, 64, 3) and frame.mean() > 200


def test_ensure_sample_corpus_concurrently_generates_once(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from emotionclip.sample import ensure_sample_corpus

    folder = tmp_path / "corpus"
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda _: ensure_sample_corpus(folder, n_videos=1, duration_s=4.0), range(3)))
    assert (folder / ".complete").exists()
    assert sorted(p.name for p in folder.glob("*.mp4")) == ["sample_00.mp4"]
    assert not list(folder.glob(".*tmp*"))
