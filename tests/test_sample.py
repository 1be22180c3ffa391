"""The bundled sample corpus: videos with people in frame plus English captions,
in the local-folder layout, deterministic, and large enough for the tiny models to
keep a training set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from emotionclip.stages.words import clean_line, read_caption_words
from emotionclip.core.ffmpeg import probe_video
from emotionclip.stages.frames import iter_frames
from emotionclip.core.ids import sanitize_video_id
from emotionclip.sample import (
    SAMPLE_DURATION_S,
    SAMPLE_VIDEOS,
    _asset,
    make_sample_corpus,
    make_test_video,
    sample_script,
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Path]:
    return make_sample_corpus(tmp_path_factory.mktemp("corpus"))


def test_layout_and_videos(corpus):
    folder = corpus[0].parent
    assert (SAMPLE_VIDEOS, SAMPLE_DURATION_S) == (8, 80.0)
    assert [p.name for p in corpus] == [f"sample_{i:02d}.mp4" for i in range(8)]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [p.name for p in corpus] + [p.stem + ".en.vtt" for p in corpus])
    for video in corpus:
        assert sanitize_video_id(video.stem) == video.stem
        info = probe_video(video)
        assert (info.width, info.height) == (320, 240)
        assert info.duration_s == pytest.approx(80.0, abs=0.1)
    assert len({p.read_bytes() for p in corpus}) == 8  # a shot of its own per video


def test_captions_match_the_script(corpus):
    kinds = []
    for i, video in enumerate(corpus):
        kind, cues = sample_script(i)
        words = read_caption_words(video.with_name(video.stem + ".en.vtt"))
        if kind == "auto_vtt":
            # a last caption line of one word carries no time tag: the reader spreads it over its cue
            assert set(words["precision"].iloc[:-1]) == {"word"}
        else:
            assert set(words["precision"]) == {"segment"}
        for start, end, line in cues:
            inside = words[(words["start_s"] >= start - 1e-6) & (words["start_s"] < end)]
            assert " ".join(inside["word"]) == " ".join(clean_line(line.text).split()), line
            kinds.append((line.kind, end - start))
        assert words["end_s"].max() <= 80.0
        spoken = [e - s for s, e, line in cues if line.kind not in ("sound", "too_short", "too_long")]
        assert all(2 < d < 10 for d in spoken) and sum(2.5 <= d <= 6.0 for d in spoken) >= 15  # many per video
    assert {sample_script(i)[0] for i in range(8)} == {"vtt", "auto_vtt"}
    durations = [d for k, d in kinds if k not in ("sound", "too_short", "too_long")]
    # Enough clips for the filter to keep, and some for each length rule to reject.
    assert len(durations) >= 8 and all(2 < d < 10 for d in durations)
    assert any(k == "too_short" and d < 2 for k, d in kinds)
    assert any(k == "too_long" and d > 10 for k, d in kinds)
    assert {k for k, _ in kinds} >= {"anger", "joy", "sadness", "fear", "surprise", "disgust", "neutral"}


def test_frames_show_the_photo_and_move(corpus):
    frames = list(iter_frames(corpus[1]))  # the bus photo, people standing in front of it
    assert len(frames) == 80 * 8
    # Frame 0 is the window at the start of the pan: x = (368-320)*0.5, y = (490-240)*0.45.
    photo = Image.open(_asset("bus.jpg")).convert("RGB").resize((368, 490), Image.BILINEAR)
    expected = np.asarray(photo.crop((24, 112, 344, 352)), dtype=np.float32)
    assert np.abs(frames[0].astype(np.float32) - expected).mean() < 12
    assert np.abs(frames[0].astype(np.float32) - frames[len(frames) // 2]).mean() > 20  # the camera moves


def test_shots_differ_in_photo_crop_and_pan(corpus):
    """Each video pans its own window: the first frames of the eight videos all differ,
    and both photos are used."""
    firsts = [next(iter_frames(v)).astype(np.float32) for v in corpus]
    for i in range(len(firsts)):
        for j in range(i + 1, len(firsts)):
            assert np.abs(firsts[i] - firsts[j]).mean() > 5, (i, j)
    from emotionclip.sample import _SHOTS

    assert {shot[0] for shot in _SHOTS} == {"zidane.jpg", "bus.jpg"}


def test_the_tiny_models_keep_enough_clips_for_a_training_run(corpus, tmp_path):
    """With the sample deployment's thresholds, the tiny profile's punctuation and emotion
    models keep at least 64 clips from at least 6 videos (4 batches of the tiny training
    profile's 16). Person boxes take no part here: min_person_frac is 0 in that deployment,
    so detection (the slow stage) is left out and the clips get no boxes."""
    import pandas as pd

    from deployments.definitions import SAMPLE_OVERRIDES
    from emotionclip.core.catalog import load_catalog
    from emotionclip.core.io import read_parquet
    from emotionclip.stages.clips import make_clips
    from emotionclip.stages.download import import_local_folder
    from emotionclip.stages.filter import filter_clips
    from emotionclip.stages.registry import run_stage

    cat = load_catalog(profile="tiny", data_root=str(tmp_path / "data"), overrides=SAMPLE_OVERRIDES)
    ids = import_local_folder(cat, corpus[0].parent).video_ids
    assert len(ids) == 8
    no_boxes = pd.DataFrame({"frame_idx": pd.Series(dtype="int64"),
                             **{c: pd.Series(dtype="float32") for c in ("x1", "y1", "x2", "y2", "conf")}})
    clips, frame_counts = [], {}
    for vid in ids:
        for stage in ("words", "sentences", "sentiment"):
            run_stage(cat, stage, vid)
        frame_counts[vid] = int(probe_video(corpus[ids.index(vid)]).duration_s * cat.stages.frames.fps)
        clips.append(make_clips(vid, read_parquet(cat.artifact("sentences", vid)),
                                read_parquet(cat.artifact("sentiment", vid)), no_boxes, frame_counts[vid]))
    kept, rejected = filter_clips(pd.concat(clips, ignore_index=True), cat.stages.filter, frame_counts)
    assert len(kept) >= 64 and kept["video_id"].nunique() >= 6, rejected["reason"].value_counts().to_dict()
    assert set(rejected["reason"]) >= {"too_short", "neutral"}  # the filter still has work to do


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


def test_ensure_sample_corpus_replaces_a_corpus_made_otherwise(tmp_path):
    """A data root from an older version (other videos, other scripts) gets the current corpus."""
    from emotionclip.sample import ensure_sample_corpus

    folder = tmp_path / "corpus"
    ensure_sample_corpus(folder, n_videos=2, duration_s=4.0)
    ensure_sample_corpus(folder, n_videos=1, duration_s=5.0)
    assert sorted(p.name for p in folder.glob("sample_*")) == ["sample_00.en.vtt", "sample_00.mp4"]
    assert probe_video(folder / "sample_00.mp4").duration_s == pytest.approx(5.0, abs=0.1)
    (folder / ".complete").write_text("made by an older version")
    before = (folder / "sample_00.mp4").stat().st_mtime_ns
    ensure_sample_corpus(folder, n_videos=1, duration_s=5.0)
    assert (folder / "sample_00.mp4").stat().st_mtime_ns != before
