"""The ffmpeg binary (from the imageio-ffmpeg wheel: no system package needed).

Always called with argument lists, never shell strings. imageio-ffmpeg ships no
ffprobe, so `probe_video` (the one probe every stage uses) reads duration,
displayed size and rate from `ffmpeg -i`'s log.

The binary, not PyAV: PyAV was measured no faster on the frames and humans
stages nor on the probe, and the binary keeps ffmpeg's autorotate, one FFmpeg
build, and a decoder crash in a child process rather than in the worker.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from dataclasses import dataclass, replace


class FFmpegError(RuntimeError):
    """ffmpeg failed; the message carries the tail of its log."""


class VideoProbeError(FFmpegError):
    """A file ffmpeg cannot read as a video (missing, corrupt, no video stream)."""


@functools.lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def stderr_tail(stderr: bytes | str, n: int = 5) -> str:
    """Last `n` non-empty lines of an ffmpeg log, joined on one line."""
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    lines = [ln.strip() for ln in text.replace("\r", "\n").splitlines() if ln.strip()]
    return " | ".join(lines[-n:])


def run_ffmpeg(args: list[str], *, timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run ffmpeg with `args` (no shell); raise FFmpegError with its stderr tail on failure."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", *args]
    proc = subprocess.run(cmd, capture_output=True, timeout=timeout)
    if proc.returncode != 0:
        raise FFmpegError("ffmpeg failed: " + stderr_tail(proc.stderr))
    return proc


@dataclass(frozen=True)
class VideoInfo:
    """What ffmpeg reports about a file's first video stream. `width`/`height`
    are as displayed: swapped for a display matrix of 90/270 degrees (a phone
    video), which ffmpeg's autorotate applies when decoding, so they match the
    decoded frames. `duration_s` is NaN when no duration can be found."""

    duration_s: float
    width: int
    height: int
    fps: float | None
    rotation: int = 0  # display-matrix degrees as ffmpeg prints them, in [0, 360)


_DURATION = re.compile(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)")
_STREAM = re.compile(r"Stream #\d+:\d+.*?: Video: (.*)$")
_SIZE = re.compile(r",\s(\d+)x(\d+)\b")
_FPS = re.compile(r"(\d+(?:\.\d+)?)(k?) (?:fps|tbr)\b")
# Only the display matrix: it is what autorotate applies when decoding. A bare
# `rotate` tag (Matroska, old muxers) is not applied, so it does not swap the size.
_ROTATION = re.compile(r"(?:displaymatrix|Display Matrix): rotation of (-?\d+(?:\.\d+)?) degrees", re.I)
_TIME = re.compile(r"time=\s*(\d+):(\d+):(\d+(?:\.\d+)?)")


def _hms(m: re.Match) -> float:
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))


def parse_probe(log: str, name: str = "video") -> VideoInfo:
    """Parse the log of `ffmpeg -i FILE` (no output) into a VideoInfo."""
    if "Input #0" not in log:
        raise VideoProbeError(f"{name}: not a readable media file: {stderr_tail(log, 4)}")
    lines = log.splitlines()
    for i, line in enumerate(lines):
        m = _STREAM.search(line)
        if not m or "attached pic" in line:  # cover art is not the video
            continue
        desc = m.group(1)
        size = _SIZE.search(desc)
        if not size:
            continue
        width, height = int(size.group(1)), int(size.group(2))
        fps_m = _FPS.search(desc)
        fps = float(fps_m.group(1)) * (1000 if fps_m.group(2) else 1) if fps_m else None
        # The stream's own block (metadata, side data) runs until the next stream.
        block = []
        for nxt in lines[i + 1:]:
            if "Stream #" in nxt or nxt.startswith(("Output", "Input")):
                break
            block.append(nxt)
        block_text = "\n".join(block)
        rot_m = _ROTATION.search(block_text)
        rotation = int(round(float(rot_m.group(1)))) % 360 if rot_m else 0
        if rotation in (90, 270):
            width, height = height, width
        dur_m = _DURATION.search(log)
        duration = _hms(dur_m) if dur_m else float("nan")
        return VideoInfo(duration, width, height, fps, rotation)
    raise VideoProbeError(f"{name}: no video stream")


def _last_timestamp(path: str, *, decode: bool) -> float | None:
    """The last video timestamp ffmpeg reaches reading `path` to null, or None."""
    codec = [] if decode else ["-c", "copy"]
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", path, "-map", "0:v:0", *codec,
                           "-f", "null", "-"], capture_output=True, timeout=600)
    times = _TIME.findall(proc.stderr.decode(errors="replace"))
    if not times:
        return None
    h, m, s = times[-1]
    return int(h) * 3600 + int(m) * 60 + float(s)


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Duration, displayed size and frame rate of a video, from `ffmpeg -i`.

    When the container has no duration (a WebM written to a pipe, a raw
    stream), the video is remuxed to null (no decoding) and the last timestamp
    taken; a raw elementary stream has no timestamps to copy, so it is decoded."""
    path = os.fspath(path)
    if "://" not in path and not os.path.exists(path):
        raise VideoProbeError(f"{path}: file not found")
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", path],
                          capture_output=True, timeout=120)
    info = parse_probe(proc.stderr.decode(errors="replace"), name=path)
    if info.duration_s != info.duration_s:  # NaN: "Duration: N/A"
        duration = _last_timestamp(path, decode=False)
        if duration is None:
            duration = _last_timestamp(path, decode=True)
        if duration is not None:
            info = replace(info, duration_s=duration)
    return info
