"""The ffmpeg binary (from the imageio-ffmpeg wheel: no system package needed),
and `probe_video`, the one probe every stage uses.

Always called with argument lists, never shell strings. imageio-ffmpeg ships no
ffprobe, so the probe reads the stream metadata with PyAV (FFmpeg's libraries):
fields, not a log meant for people.

Decoding stays with the binary: PyAV was measured no faster on the frames and
humans stages, and the binary keeps ffmpeg's autorotate and a decoder crash in
a child process rather than in the worker. The probe decodes at most one frame,
for the display matrix.
"""

from __future__ import annotations

import functools
import os
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    import numpy as np
    from av.container import InputContainer
    from av.video.stream import VideoStream


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
    """What a file's first video stream declares. `width`/`height` are as
    displayed: swapped for a display matrix of 90/270 degrees (a phone video),
    which ffmpeg's autorotate applies when decoding, so they match the decoded
    frames. `duration_s` is NaN when no duration can be found."""

    duration_s: float
    width: int
    height: int
    fps: float | None
    rotation: int = 0  # display-matrix degrees as ffmpeg prints them, in [0, 360)


# Packets to try before giving up on a first frame (and so on a display matrix):
# enough for a decoder's reorder delay and a few damaged packets at the start.
_FIRST_FRAME_PACKETS = 64


def _video_stream(container: InputContainer) -> VideoStream | None:
    """The first video stream with a size that is not cover art: the stream
    ffmpeg's `-map 0:V:0` decodes."""
    import av

    for stream in container.streams.video:
        if stream.disposition & av.stream.Disposition.attached_pic:
            continue
        if stream.codec_context.width > 0 and stream.codec_context.height > 0:
            return stream
    return None


def _seconds(ts: int | None, time_base: Fraction | None) -> float | None:
    if ts is None or time_base is None or ts <= 0:
        return None
    return float(ts * time_base)


def _scan(container: InputContainer, stream: VideoStream, fps: float | None, *,
          to_end: bool) -> tuple[int, float | None]:
    """(rotation, demuxed duration) from one pass over `stream`'s packets.

    Rotation: the display matrix the decoder attaches to the first frame (PyAV
    exposes no stream-level side data). Duration, only when `to_end`: from the
    packet timestamps, else the packet durations, else the packet count at
    `fps` (a raw elementary stream has no timestamps; its parser still times
    most frames)."""
    import av

    rotation: int | None = None
    tried = 0
    first = end = None
    total = n = 0
    try:
        for packet in container.demux(stream):
            if rotation is None and tried < _FIRST_FRAME_PACKETS:
                tried += 1
                try:
                    frames = stream.decode(packet)  # the final empty packet flushes the decoder
                except av.FFmpegError:
                    frames = []  # a damaged packet: the next one may decode
                if frames:
                    rotation = frames[0].rotation
            if packet.size == 0:
                continue
            if not to_end:
                if rotation is not None or tried >= _FIRST_FRAME_PACKETS:
                    break
                continue
            n += 1
            total += packet.duration or 0
            ts = packet.pts if packet.pts is not None else packet.dts
            if ts is not None:
                first = ts if first is None else min(first, ts)
                end = max(end if end is not None else ts, ts + (packet.duration or 0))
    except av.FFmpegError:
        pass  # a read error mid-file (truncated): keep what was read before it
    if first is not None and end is not None and end > first:
        duration = _seconds(end - first, stream.time_base)
    elif total:
        duration = _seconds(total, stream.time_base)
    else:
        duration = n / fps if n and fps else None
    return (rotation or 0), duration


def _frame_rate(container: InputContainer, stream: VideoStream) -> float | None:
    import av

    rates = [stream.average_rate, stream.guessed_rate]
    if container.format.flags & av.format.Flags.no_timestamps.value:
        # A raw stream's average rate is the demuxer's default (25), not the stream's.
        rates.reverse()
    rate = next((r for r in rates if r), None)
    return float(rate) if rate else None


def _swaps_size(rotation: int) -> bool:
    # PyAV truncates the matrix angle to an int (89.99 -> 89); autorotate takes
    # anything within a degree of a quarter turn as one.
    r = rotation % 360
    return abs(r - 90) <= 1 or abs(r - 270) <= 1


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Duration, displayed size and frame rate of a video, read from the
    container's stream metadata with PyAV (imageio-ffmpeg ships no ffprobe).

    The duration is the video stream's, else the container's; when neither is
    stored (a WebM written to a pipe, a raw stream) the packets are demuxed to
    the end. Raises VideoProbeError for a missing file, one no demuxer reads,
    and one with no video stream."""
    import av  # here, not at the top: ~50 ms that only the probe needs

    path = os.fspath(path)
    if "://" not in path and not os.path.exists(path):
        raise VideoProbeError(f"{path}: file not found")
    try:
        container = av.open(path, metadata_errors="replace", timeout=120)
    except (av.FFmpegError, OSError, UnicodeError) as e:
        raise VideoProbeError(f"{path}: not a readable media file: {e}") from None
    with container:
        stream = _video_stream(container)
        if stream is None:
            raise VideoProbeError(f"{path}: no video stream")
        width, height = stream.codec_context.width, stream.codec_context.height
        duration = _seconds(stream.duration, stream.time_base)
        if duration is None:
            duration = _seconds(container.duration, Fraction(1, av.time_base))
        fps = _frame_rate(container, stream)
        rotation, demuxed = _scan(container, stream, fps, to_end=duration is None)
        if duration is None:
            duration = demuxed
    rotation %= 360
    if _swaps_size(rotation):
        width, height = height, width
    return VideoInfo(float("nan") if duration is None else duration, width, height, fps, rotation)


def read_ppm(out: BinaryIO, where: str, error: type[Exception] = FFmpegError) -> "np.ndarray | None":
    """One PPM (P6, maxval 255) frame from an ffmpeg image2pipe stream read into a fresh
    uint8 array, or None at the stream's end; a malformed or cut frame raises `error`."""
    import numpy as np

    magic = out.readline()
    if not magic:
        return None
    dims = out.readline().split()
    maxval = out.readline().strip()
    if magic.strip() != b"P6" or len(dims) != 2 or maxval != b"255":
        raise error(f"{where}: unexpected frame header from ffmpeg")
    w, h = int(dims[0]), int(dims[1])
    frame = np.empty((h, w, 3), dtype=np.uint8)
    view = memoryview(frame).cast("B")
    got = 0
    while got < len(view):
        k = out.readinto(view[got:])
        if not k:
            raise error(f"{where}: ffmpeg output ended inside a frame")
        got += k
    return frame
