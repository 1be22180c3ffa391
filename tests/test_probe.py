"""`probe_video` reads stream metadata (PyAV), not ffmpeg's log: checked on real
files made by the bundled ffmpeg binary from lavfi sources, against what that
binary decodes."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest
from PIL import Image

from emotionclip.core.ffmpeg import VideoProbeError, probe_video, run_ffmpeg


def _make(out: Path, source: str, *codec: str) -> Path:
    run_ffmpeg(["-y", "-v", "error", "-f", "lavfi", "-i", source, *codec, str(out)])
    return out


def _decoded_size(video: Path) -> tuple[int, int]:
    """(width, height) of the first frame the ffmpeg binary decodes (autorotate on)."""
    png = video.with_name(video.stem + "-first.png")
    run_ffmpeg(["-y", "-v", "error", "-i", str(video), "-frames:v", "1", str(png)])
    with Image.open(png) as im:
        return im.size


@pytest.mark.parametrize("width,height,codec", [
    (16, 8, ["-c:v", "libx264", "-pix_fmt", "yuv420p"]),  # a size regex once needed two digits
    (1, 1, ["-c:v", "png"]),                              # png and ffv1 take odd sizes; x264 needs even
    (3, 5, ["-c:v", "ffv1"]),
])
def test_tiny_sizes(tmp_path, width, height, codec):
    ext = "mp4" if "libx264" in codec else "mkv"
    video = _make(tmp_path / f"tiny.{ext}", f"testsrc=size={width}x{height}:rate=8:duration=1", *codec)
    info = probe_video(video)
    assert (info.width, info.height, info.fps, info.rotation) == (width, height, 8, 0)
    assert _decoded_size(video) == (width, height)
    assert info.duration_s == pytest.approx(1.0, abs=1 / 8)


@pytest.mark.parametrize("rate", ["25", "30000/1001"])
def test_frame_rate_and_duration(tmp_path, rate):
    video = _make(tmp_path / "v.mp4", f"testsrc=size=64x48:rate={rate}:duration=2", "-c:v", "libx264",
                  "-pix_fmt", "yuv420p")
    info = probe_video(video)
    fps = float(Fraction(rate))
    assert info.fps == pytest.approx(fps, abs=1e-6)
    assert info.duration_s == pytest.approx(2.0, abs=1 / fps)


@pytest.fixture(scope="module")
def landscape(tmp_path_factory) -> Path:
    return _make(tmp_path_factory.mktemp("src") / "land.mp4", "testsrc=size=64x48:rate=10:duration=1",
                 "-c:v", "libx264", "-pix_fmt", "yuv420p")


@pytest.mark.parametrize("degrees,rotation,displayed", [(90, 90, (48, 64)), (-90, 270, (48, 64)),
                                                        (180, 180, (64, 48))])
def test_display_matrix_gives_the_displayed_size(tmp_path, landscape, degrees, rotation, displayed):
    rotated = tmp_path / "phone.mp4"
    # A phone video: the stored frames stay landscape, a display matrix says how to show them.
    run_ffmpeg(["-y", "-v", "error", "-display_rotation", str(degrees), "-i", str(landscape), "-c", "copy",
                str(rotated)])
    info = probe_video(rotated)
    assert (info.width, info.height, info.rotation) == (*displayed, rotation)
    assert _decoded_size(rotated) == displayed


def test_cover_art_is_not_the_video(tmp_path, landscape):
    cover = _make(tmp_path / "cover.png", "color=c=red:size=30x30", "-frames:v", "1")
    video = tmp_path / "with-cover.mp4"
    run_ffmpeg(["-y", "-v", "error", "-i", str(landscape), "-i", str(cover), "-map", "0", "-map", "1",
                "-c", "copy", "-disposition:v:1", "attached_pic", str(video)])
    info = probe_video(video)
    assert (info.width, info.height, info.fps) == (64, 48, 10)
    # Music with album art: the picture is a stream too, but no video.
    song = tmp_path / "song.m4a"
    run_ffmpeg(["-y", "-v", "error", "-f", "lavfi", "-i", "sine=duration=0.5", "-i", str(cover), "-map", "0",
                "-map", "1", "-c:a", "aac", "-c:v", "copy", "-disposition:v:0", "attached_pic", str(song)])
    with pytest.raises(VideoProbeError, match="no video stream"):
        probe_video(song)


def test_without_a_stored_duration_the_packets_are_read(tmp_path, landscape):
    piped = tmp_path / "piped.webm"  # written to a pipe: no duration in the header
    with piped.open("wb") as f:
        f.write(run_ffmpeg(["-v", "error", "-i", str(landscape), "-c:v", "libvpx", "-f", "webm", "pipe:1"]).stdout)
    raw = tmp_path / "raw.h264"  # no container, no timestamps
    run_ffmpeg(["-y", "-v", "error", "-i", str(landscape), "-c", "copy", "-f", "h264", str(raw)])
    for video in (piped, raw):
        info = probe_video(video)
        # The raw demuxer assumes 25 fps; the stream's own timing says 10.
        assert (info.width, info.height, info.fps) == (64, 48, 10), video.name
        assert info.duration_s == pytest.approx(1.0, abs=1 / 10), video.name


def test_truncated_file_keeps_its_header(tmp_path):
    video = _make(tmp_path / "v.mkv", "testsrc=size=64x48:rate=10:duration=4", "-c:v", "ffv1")
    data = video.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    info = probe_video(cut)
    assert (info.width, info.height, info.fps) == (64, 48, 10)
    assert info.duration_s == pytest.approx(4.0, abs=0.1)  # the header's; the frames stage sees the rest


def test_files_without_a_video_stream(tmp_path):
    audio = _make(tmp_path / "audio.m4a", "sine=duration=0.5")
    with pytest.raises(VideoProbeError, match=r"audio\.m4a: no video stream"):
        probe_video(audio)
    subs = tmp_path / "captions.srt"
    subs.write_text("1\n00:00:01,000 --> 00:00:02,000\nhello\n")
    with pytest.raises(VideoProbeError, match="no video stream"):
        probe_video(subs)
    for name in ("notes.txt", "notes.mp4"):
        text = tmp_path / name
        text.write_text("not a video at all\n")
        with pytest.raises(VideoProbeError, match=rf"{name}: not a readable media file"):
            probe_video(text)
    with pytest.raises(VideoProbeError, match="file not found"):
        probe_video(tmp_path / "missing.mp4")

