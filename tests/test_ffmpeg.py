"""The one `probe_video` (emotionclip.core.ffmpeg), on files made by the real
bundled ffmpeg: displayed size of rotated (phone) videos, which must match what
ffmpeg decodes, odd sizes and rates, no container duration, and files that are
not videos."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from PIL import Image

from emotionclip.core.ffmpeg import FFmpegError, VideoProbeError, probe_video, run_ffmpeg
from emotionclip.sample import make_test_video


@pytest.fixture(scope="module")
def landscape(tmp_path_factory) -> Path:
    return make_test_video(tmp_path_factory.mktemp("src") / "land.mp4", duration_s=1.0, width=320, height=240,
                           fps=10)


def _decoded_size(video: Path, tmp: Path) -> tuple[int, int]:
    """(width, height) of the first frame ffmpeg decodes (autorotate on, its default)."""
    png = tmp / f"{video.stem}-first.png"
    run_ffmpeg(["-y", "-v", "error", "-i", str(video), "-frames:v", "1", str(png)])
    with Image.open(png) as im:
        return im.size


@pytest.mark.parametrize("degrees,displayed", [(0, (320, 240)), (90, (240, 320)), (180, (320, 240)),
                                               (270, (240, 320)), (-90, (240, 320))])
def test_rotated_video_reports_its_displayed_size(tmp_path, landscape, degrees, displayed):
    rotated = tmp_path / "phone.mp4"
    # A phone video: the stored frames stay landscape, a display matrix says how to show them.
    run_ffmpeg(["-y", "-display_rotation", str(degrees), "-i", str(landscape), "-c", "copy", str(rotated)])
    info = probe_video(rotated)
    assert (info.width, info.height) == displayed
    assert (info.width, info.height) == _decoded_size(rotated, tmp_path)  # what the stages will decode
    assert info.rotation in (0, 90, 180, 270) and (info.rotation % 180 == 90) == (displayed == (240, 320))
    assert info.duration_s == pytest.approx(1.0, abs=0.05) and info.fps == 10


def test_rotate_tag_without_a_display_matrix_is_not_applied(tmp_path, landscape):
    """Matroska keeps `-metadata:s:v rotate=90` as a plain tag (the bundled ffmpeg
    no longer turns it into a display matrix, and drops it from MP4): autorotate
    ignores it, so the probe must not swap the size either."""
    tagged = tmp_path / "tagged.mkv"
    run_ffmpeg(["-y", "-i", str(landscape), "-c", "copy", "-metadata:s:v", "rotate=90", str(tagged)])
    info = probe_video(tagged)
    assert (info.width, info.height, info.rotation) == (320, 240, 0)
    assert _decoded_size(tagged, tmp_path) == (320, 240)


def test_odd_size_and_rate(tmp_path):
    video = make_test_video(tmp_path / "v.mkv", duration_s=1.5, width=333, height=199, fps=12, source="testsrc",
                            codec="ffv1", vf="format=yuv444p")
    info = probe_video(video)
    assert (info.width, info.height, info.fps, info.rotation) == (333, 199, 12, 0)
    assert info.duration_s == pytest.approx(1.5, abs=0.05)


def test_raw_stream_without_container_duration(tmp_path, landscape):
    raw = tmp_path / "raw.h264"
    run_ffmpeg(["-y", "-i", str(landscape), "-c", "copy", "-f", "h264", str(raw)])
    info = probe_video(raw)  # no stored duration: the packets are demuxed to the end
    assert (info.width, info.height) == (320, 240)
    assert not math.isnan(info.duration_s) and info.duration_s > 0


def test_files_that_are_not_videos(tmp_path):
    with pytest.raises(VideoProbeError, match="file not found"):
        probe_video(tmp_path / "missing.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(VideoProbeError, match="not a readable media file"):
        probe_video(junk)
    audio = tmp_path / "audio.m4a"
    run_ffmpeg(["-y", "-f", "lavfi", "-i", "sine=duration=0.5", str(audio)])
    with pytest.raises(VideoProbeError, match="no video stream"):
        probe_video(audio)
    assert issubclass(VideoProbeError, FFmpegError)


def test_run_ffmpeg_failure_carries_the_log_tail(tmp_path):
    with pytest.raises(FFmpegError, match="ffmpeg failed: .*missing.mp4"):
        run_ffmpeg(["-i", str(tmp_path / "missing.mp4"), "-f", "null", "-"])
