"""The parallel segment decoder (emotionclip.core.segment_decode) against the
single decode (`iter_frames`): real ffmpeg on H.264 files with a variable frame
rate and B-frames, made here with the bundled ffmpeg; frames byte-identical,
same count, same order, for several worker counts and cuts at frame boundaries."""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from emotionclip.core.ffmpeg import run_ffmpeg
from emotionclip.core.segment_decode import (
    ParallelDecode,
    Segment,
    SegmentMismatch,
    cut_step,
    plan_segments,
    read_keyframes,
    segment_args,
)
from emotionclip.stages.frames import _input_args, frame_filter, iter_frames, iter_frames_parallel

FPS = 8
_OUT = ["-pix_fmt", "rgb24", "-c:v", "ppm", "-f", "image2pipe", "-"]


def _x264(*extra: str) -> list[str]:
    # veryfast (not ultrafast, which turns B-frames off), two B-frames, short GOPs
    return ["-c:v", "libx264", "-preset", "veryfast", "-bf", "2", "-pix_fmt", "yuv420p", *extra]


@pytest.fixture(scope="module")
def vfr_video(tmp_path_factory) -> Path:
    """24, 30, 10 and 60 fps parts joined (every third 24 fps frame and every 10 fps
    frame sits exactly on a k/8 s slot), then every 7th frame (from the 4th) moved 4 ms later."""
    path = tmp_path_factory.mktemp("segdec") / "vfr.mp4"
    parts = [(24, 2), (30, 2), (10, 1.5), (60, 1)]
    graph = ";".join(f"testsrc2=s=160x120:r={r}:d={d}[p{i}]" for i, (r, d) in enumerate(parts))
    graph += ";" + "".join(f"[p{i}]" for i in range(len(parts))) + f"concat=n={len(parts)}:v=1[c]"
    graph += ";[c]setpts='PTS+if(eq(mod(N\\,7)\\,3)\\,0.004/TB\\,0)'[v]"
    run_ffmpeg(["-y", "-filter_complex", graph, "-map", "[v]", *_x264("-g", "15"), "-fps_mode", "vfr",
                "-video_track_timescale", "90000", str(path)])
    return path


@pytest.fixture(scope="module")
def reference(vfr_video) -> list[np.ndarray]:
    return list(iter_frames(vfr_video, fps=FPS))


def _timeline_pts(path: Path) -> tuple[list[Fraction], int, int]:
    """Frame times on ffmpeg's timeline (from the container start), in display order;
    packets whose pts is out of decode order; decoded B-frames."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        start = Fraction(c.start_time or 0, av.time_base)
        pts, reordered, b_frames, last = [], 0, 0, None
        for packet in c.demux(s):
            if packet.pts is not None and packet.size:
                pts.append(packet.pts * s.time_base - start)
                reordered += last is not None and packet.pts < last
                last = packet.pts
            for frame in packet.decode():
                b_frames += frame.pict_type == av.video.frame.PictureType.B
    return sorted(pts), reordered, b_frames


def _decode(video: Path, segments: list[Segment], workers: int) -> list[np.ndarray]:
    return list(ParallelDecode(str(video), segments, workers, lambda seg: segment_args(
        _input_args(str(video)), frame_filter(FPS, None, "{start}"), _OUT, seg, FPS, threads=1)))


def _same(got: list[np.ndarray], ref: list[np.ndarray]) -> None:
    assert len(got) == len(ref)
    for k, (a, b) in enumerate(zip(got, ref)):
        assert a.shape == b.shape and np.array_equal(a, b), f"frame {k} differs"


def test_the_test_video_has_vfr_and_b_frames(vfr_video, reference):
    pts, reordered, b_frames = _timeline_pts(vfr_video)
    gaps = {p - q for p, q in zip(pts[1:], pts)}
    assert len(gaps) >= 6  # several frame rates and the jitter: variable frame rate
    assert reordered > 10 and b_frames > 10  # B-frames: decode order is not display order
    on_slot = [p for p in pts if (p * FPS).denominator == 1]
    assert len(on_slot) >= 10  # frames exactly at k/8 s: the round=up boundary case
    # frames differ from their neighbours, so a cut off by one slot cannot pass unseen
    distinct = sum(not np.array_equal(a, b) for a, b in zip(reference[1:], reference))
    assert distinct >= 0.9 * (len(reference) - 1)
    assert len(reference) == pytest.approx(float(pts[-1]) * FPS, abs=2)


@pytest.mark.parametrize("workers,segment_s", [(2, 1.0), (3, 0.5), (4, 2.0)])
def test_planned_segments_equal_the_single_decode(vfr_video, reference, workers, segment_s):
    segments = plan_segments(read_keyframes(vfr_video), FPS, segment_s=segment_s)
    assert len(segments) >= 3
    _same(_decode(vfr_video, segments, workers), reference)


def test_cuts_at_frame_boundaries_equal_the_single_decode(vfr_video, reference):
    """A cut on every slot: slots where a frame is exactly on the cut, 4 ms after it,
    or far from it, with the seek in the GOP before, at a keyframe or inside a GOP."""
    pts, _, _ = _timeline_pts(vfr_video)
    boundary = [k for k in range(1, len(reference)) if any(abs(p * FPS - k) < Fraction(1, 20) for p in pts)]
    assert len(boundary) >= 15
    index = read_keyframes(vfr_video)
    segments = plan_segments(index, FPS, cuts=list(range(1, len(reference) + 3)))  # also past the end
    _same(_decode(vfr_video, segments, 3), reference)


def test_iter_frames_parallel_equals_iter_frames(vfr_video, reference, caplog):
    with caplog.at_level(logging.INFO, logger="emotionclip.core.segment_decode"):
        got = list(iter_frames_parallel(vfr_video, fps=FPS, workers=3, segment_s=1.0))
    _same(got, reference)
    assert not caplog.records  # the segments were used: no fallback, no mismatch


def test_a_time_base_without_exact_slots_cuts_on_its_step(tmp_path):
    """A 1/30 s time base holds k/8 s only for k a multiple of 4: a cut in between
    would round the filter's start and shift the frames after it, so the plan
    refuses it and the default plan cuts on multiples of 4."""
    video = tmp_path / "tb30.mp4"
    run_ffmpeg(["-y", "-f", "lavfi", "-i", "testsrc2=s=96x64:r=30:d=4", *_x264("-g", "10"),
                "-video_track_timescale", "30", str(video)])
    index = read_keyframes(video)
    assert index.time_base == Fraction(1, 30) and cut_step(FPS, index.time_base) == 4
    with pytest.raises(ValueError, match="multiples of 4"):
        plan_segments(index, FPS, cuts=[4, 6])
    segments = plan_segments(index, FPS, segment_s=0.5)
    assert len(segments) >= 4 and all(s.first % 4 == 0 for s in segments)
    _same(_decode(video, segments, 2), list(iter_frames(video, fps=FPS)))


def test_an_inexact_cut_is_caught_and_the_single_decode_finishes(vfr_video, reference, caplog, monkeypatch):
    index = read_keyframes(vfr_video)
    good = plan_segments(index, FPS, segment_s=1.0)
    # the second segment seeks past its first slot: its check frame is a later frame
    late = good[1].first / FPS + 0.6
    bad = [good[0], Segment(good[1].first, good[1].count, late, good[1].lead), *good[2:]]
    with pytest.raises(SegmentMismatch):
        _decode(vfr_video, bad, 2)

    from emotionclip.core import segment_decode

    monkeypatch.setattr(segment_decode, "plan_segments", lambda *a, **k: bad)  # the plan alone, ffmpeg is real
    with caplog.at_level(logging.WARNING, logger="emotionclip.core.segment_decode"):
        got = list(iter_frames_parallel(vfr_video, fps=FPS, workers=2))
    _same(got, reference)
    assert any("differs" in r.getMessage() for r in caplog.records)


def test_leaving_early_stops_every_process(vfr_video, reference):
    segments = plan_segments(read_keyframes(vfr_video), FPS, segment_s=0.5)
    dec = ParallelDecode(str(vfr_video), segments, 3, lambda seg: segment_args(
        _input_args(str(vfr_video)), frame_filter(FPS, None, "{start}"), _OUT, seg, FPS, threads=1))
    it = iter(dec)
    first = [next(it) for _ in range(5)]
    it.close()
    _same(first, reference[:5])
    assert all(j.proc is None or j.proc.poll() is not None for j in dec.jobs)
    assert not any(t.is_alive() for t in dec._threads)


def test_one_worker_is_the_single_decode(vfr_video, reference):
    it = iter_frames_parallel(vfr_video, fps=FPS, workers=1)
    assert it.__name__ == "iter_frames"  # the generator of today's decode itself
    _same(list(it), reference)


def test_the_catalog_setting():
    from pydantic import ValidationError

    from emotionclip.core.catalog import HumanParams, load_catalog
    from emotionclip.stages.humans import decode_workers

    assert load_catalog().stages.humans.decode_workers == "auto"
    assert decode_workers("auto", "cpu") == 1  # on CPU the detector needs the cores
    assert 1 <= decode_workers("auto", "cuda:0") <= 4
    assert decode_workers(3, "cpu") == 3
    with pytest.raises(ValidationError):
        HumanParams(decode_workers=0)
    # how fast, not what: the stage fingerprint does not change with it
    a, b = load_catalog(), load_catalog()
    b.stages.humans.decode_workers = 4
    assert a.stage_fingerprint("humans") == b.stage_fingerprint("humans")
