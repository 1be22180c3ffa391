"""Frames stage: a video -> every frame at 8 FPS, smaller edge 256, as JPEGs in
one random-access file per video (an uncompressed zip, members 000000.jpg ...).

Frame `k` is the frame ffmpeg's `fps` filter emits for time `k / fps` s: the
first stored frame is index 0 at t=0. (The authors' code wrote files numbered
from 1 and indexed them from 0, shifting every clip by one frame; we do not.)

One ffmpeg process decodes, resamples, scales and JPEG-encodes; Python only
splits the JPEG stream from the pipe and appends it to the zip, so memory is
flat however long the video is. `iter_frames` decodes the same frames (same
filter, same count, same timestamps) at full resolution for detection.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

from emotionclip.core.ffmpeg import FFmpegError, ffmpeg_exe, probe_video, read_ppm, stderr_tail
from emotionclip.core.frame_store import FrameStoreWriter
from emotionclip.core.progress import ProgressHook, track

FPS = 8  # paper: frames sampled at 8 FPS
SHORT_EDGE = 256  # paper: smaller edge resized to 256, aspect kept
JPEG_QUALITY = 3  # ffmpeg -q:v (2 best .. 31 worst); visually lossless at 256 px

_CHUNK = 1 << 20


class FrameError(RuntimeError):
    """A video from which no (or not all) frames could be decoded."""


# -- ffmpeg command lines ----------------------------------------------------

def frame_filter(fps: int = FPS, short_edge: int | None = SHORT_EDGE, start_time: str = "0") -> str:
    """The -vf chain: resample to `fps` first (cheaper, and the same frame choice
    with or without scaling), then scale so the smaller *displayed* edge is
    `short_edge` (upscaling small sources too). `iw*sar` is the displayed width,
    so anamorphic sources keep their aspect; setsar=1 makes pixels square.

    fps options: `start_time=0` anchors slot 0 at t=0 even when the first video
    frame starts later (edit lists, audio-first files), so index k always means
    k/fps s; `round=up` makes slot k the frame on screen at k/fps (latest frame
    with pts <= k/fps) instead of ffmpeg's default `near` (on screen at
    (k + 0.5)/fps). `start_time` other than 0: a time segment of the same
    decode (`emotionclip.core.segment_decode`)."""
    chain = f"fps={fps}:round=up:start_time={start_time}"
    if short_edge:
        s = int(short_edge)
        w = f"if(gte(iw*sar,ih),round({s}*iw*sar/ih),{s})"
        h = f"if(gte(iw*sar,ih),{s},round({s}*ih/(iw*sar)))"
        chain += f",scale=w='{w}':h='{h}',setsar=1"
    return chain


def _input_args(video_path: str) -> list[str]:
    return ["-hide_banner", "-nostdin", "-nostats", "-v", "error", "-i", video_path,
            # 0:V: video streams that are not attached pictures, the stream probe_video describes
            "-map", "0:V:0", "-an", "-sn", "-dn", "-fps_mode", "passthrough"]


def jpeg_ffmpeg_args(video_path: str, fps: int = FPS, short_edge: int = SHORT_EDGE,
                     jpeg_quality: int = JPEG_QUALITY, output: str = "-") -> list[str]:
    """Arguments (after the executable) that write the stored JPEG frames to `output`."""
    return [*_input_args(video_path), "-vf", frame_filter(fps, short_edge),
            "-c:v", "mjpeg", "-q:v", str(jpeg_quality), "-f", "image2pipe", output]


# -- streaming JPEG split -----------------------------------------------------

def _jpeg_end(buf: bytearray, start: int) -> int:
    """End offset of the JPEG beginning at `start`, or -1 if `buf` does not hold all of it.
    Walks the header segments by length (their payload may contain any byte),
    then finds EOI in the entropy-coded data, where 0xFF is always byte-stuffed
    so FF D9 can only be the end marker."""
    n = len(buf)
    i = start + 2
    while i + 4 <= n:
        if buf[i] != 0xFF:
            raise FrameError(f"corrupt JPEG stream from ffmpeg at byte {i}")
        marker = buf[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            i += 2
            continue
        seg_len = (buf[i + 2] << 8) | buf[i + 3]
        if marker == 0xDA:  # start of scan: entropy-coded data follows the header
            end = buf.find(b"\xff\xd9", i + 2 + seg_len)
            return -1 if end < 0 else end + 2
        i += 2 + seg_len
    return -1


def _iter_jpegs(stream) -> Iterator[bytes]:
    """Split the concatenated JPEGs of an image2pipe stream, holding at most one
    read chunk plus one frame in memory."""
    buf = bytearray()
    while True:
        data = stream.read1(_CHUNK)
        if data:
            buf += data
        pos = 0
        while len(buf) - pos >= 4:
            if buf[pos] != 0xFF or buf[pos + 1] != 0xD8:
                raise FrameError("ffmpeg output is not a JPEG stream")
            end = _jpeg_end(buf, pos)
            if end < 0:
                break
            yield bytes(buf[pos:end])
            pos = end
        if pos:
            del buf[:pos]  # bytearray drops a prefix without copying the rest
        if not data:
            if buf:
                raise FrameError(f"ffmpeg output ended inside a JPEG ({len(buf)} bytes left)")
            return


def _jpeg_size(jpeg: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(jpeg)) as im:
        return im.size


class _Ffmpeg:
    """An ffmpeg process writing to a pipe; stderr goes to a temp file (no pipe
    deadlock, no memory growth). Killed on exit unless it finished."""

    def __init__(self, args: list[str]):
        self._err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([ffmpeg_exe(), *args], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=self._err, bufsize=0)
        self.stdout = io.BufferedReader(self.proc.stdout, buffer_size=_CHUNK)

    def finish(self) -> tuple[int, str]:
        rc = self.proc.wait()
        self._err.seek(0)
        return rc, stderr_tail(self._err.read())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()
        self._err.close()


# -- extraction ---------------------------------------------------------------

def _check_complete(video_path: str, n_frames: int, fps: int, duration_s: float, min_coverage: float) -> None:
    """A truncated file whose index survived decodes without an ffmpeg error but
    stops early; compare the frames we got with the container's duration."""
    if n_frames == 0:
        raise FrameError(f"{video_path}: no frames could be decoded")
    if duration_s == duration_s and duration_s > 0:  # not NaN
        expected = duration_s * fps
        if n_frames < min_coverage * expected - fps:
            raise FrameError(
                f"{video_path}: truncated or corrupt: decoded {n_frames / fps:.1f} s of "
                f"{duration_s:.1f} s ({n_frames} of ~{int(expected)} frames)")


def extract_frames(
    video_path: str | os.PathLike,
    out_path: str | os.PathLike,
    fps: int = FPS,
    short_edge: int = SHORT_EDGE,
    jpeg_quality: int = JPEG_QUALITY,
    *,
    metadata: dict[str, Any] | None = None,
    min_coverage: float = 0.9,
    progress: ProgressHook | None = None,
) -> dict[str, Any]:
    """Decode `video_path` at `fps`, scale the smaller edge to `short_edge`, and
    write the JPEGs to one uncompressed zip at `out_path` (atomically; local path
    or fsspec URL). Returns {"n_frames", "width", "height", "duration_s", "fps"}.

    Raises FrameError for a missing, corrupt, truncated or frame-less video
    (fewer frames than `min_coverage` of the container's duration, minus one second).
    `progress`: reports frames written (else the hook of `emotionclip.core.progress.use`)."""
    from emotionclip.core.io import atomic_path

    video_path = os.fspath(video_path)
    try:
        info = probe_video(video_path)
    except FFmpegError as e:
        raise FrameError(str(e)) from e

    n = 0
    width = height = 0
    with atomic_path(out_path) as tmp:
        ff = _Ffmpeg(jpeg_ffmpeg_args(video_path, fps, short_edge, jpeg_quality))
        try:
            with FrameStoreWriter(tmp) as store:
                bar = track(f"frames {Path(video_path).stem}", expected_frames(info.duration_s, fps), "frames",
                            hook=progress)
                for jpeg in _iter_jpegs(ff.stdout):
                    if n == 0:
                        width, height = _jpeg_size(jpeg)
                    store.add(jpeg)
                    n += 1
                    bar.advance()
                bar.close()
                rc, log = ff.finish()
                if rc != 0:
                    raise FrameError(f"{video_path}: ffmpeg failed: {log}")
                _check_complete(video_path, n, fps, info.duration_s, min_coverage)
                summary = {"n_frames": n, "width": width, "height": height,
                           "duration_s": info.duration_s, "fps": fps}
                store.metadata = {**summary, "short_edge": short_edge, "jpeg_quality": jpeg_quality,
                                  **(metadata or {})}
        finally:
            ff.close()
    return summary


def expected_frames(duration_s: float, fps: int = FPS) -> int | None:
    """About how many frames the fps filter emits for a container duration (a
    progress total, not a check); None when the duration is unknown."""
    return int(duration_s * fps) + 1 if duration_s == duration_s and duration_s > 0 else None


def iter_frames(video_path: str | os.PathLike, fps: int = FPS) -> Iterator[np.ndarray]:
    """Yield HxWx3 uint8 RGB frames at full (displayed) resolution: the same frames
    as `extract_frames` stores (same fps filter, count and timestamps), streaming.

    Frames come as PPM (raw RGB behind a tiny header) so each frame carries its
    own size: nothing depends on parsing the probe log. Raises FrameError if the
    video cannot be decoded or yields no frame."""
    video_path = os.fspath(video_path)
    if "://" not in video_path and not os.path.exists(video_path):
        raise FrameError(f"{video_path}: file not found")
    args = [*_input_args(video_path), "-vf", frame_filter(fps, None), "-pix_fmt", "rgb24",
            "-c:v", "ppm", "-f", "image2pipe", "-"]
    ff = _Ffmpeg(args)
    n = 0
    try:
        out = ff.stdout
        while (frame := read_ppm(out, str(video_path), FrameError)) is not None:
            n += 1
            yield frame
        rc, log = ff.finish()
        if rc != 0:
            raise FrameError(f"{video_path}: ffmpeg failed after {n} frames: {log}")
        if n == 0:
            raise FrameError(f"{video_path}: no frames could be decoded")
    finally:
        ff.close()


def iter_frames_parallel(video_path: str | os.PathLike, fps: int = FPS, workers: int = 1,
                         **kwargs: Any) -> Iterator[np.ndarray]:
    """`iter_frames`' frames (byte for byte, same count and order), decoded by
    `workers` ffmpeg processes over time segments of the video
    (`emotionclip.core.segment_decode.decode_parallel`, which says how the cuts
    stay exact; kwargs go to it). One worker, or nothing to split: `iter_frames`."""
    from emotionclip.core.segment_decode import decode_parallel

    video_path = os.fspath(video_path)
    if workers <= 1 or "://" in video_path or not os.path.exists(video_path):
        return iter_frames(video_path, fps=fps)
    return decode_parallel(
        video_path, fps, workers, input_args=_input_args(video_path), vf=frame_filter(fps, None, "{start}"),
        output_args=["-pix_fmt", "rgb24", "-c:v", "ppm", "-f", "image2pipe", "-"],
        fallback=lambda: iter_frames(video_path, fps=fps), **kwargs)


# -- stage --------------------------------------------------------------------

@contextlib.contextmanager
def local_video(catalog, video_id: str, stage: str = "frames") -> Iterator[Path]:
    """The raw video of `video_id` (info.json's `video_file` in raw_dir) as a local
    path; a remote data root is copied to a temporary folder first. Missing
    info or video -> StageError naming `stage`."""
    from emotionclip.core.errors import StageError
    from emotionclip.core.ids import validate_video_id
    from emotionclip.core.io import exists, is_local, read_json

    validate_video_id(video_id)
    info_path = catalog.artifact("info", video_id)
    if not exists(info_path):
        raise StageError(stage, video_id, f"no info.json at {info_path} (run download first)")
    info = read_json(info_path)
    name = info.get("video_file")
    # A file name inside raw_dir, never a path that could leave it.
    if not name or name != os.path.basename(name) or name in (".", ".."):
        raise StageError(stage, video_id, f"info.json has no valid video_file: {name!r}")
    src = f"{catalog.artifact('raw_dir', video_id).rstrip('/')}/{name}"
    if not exists(src):
        raise StageError(stage, video_id, f"video file missing: {src}")
    if is_local(src):
        yield Path(src[len("file://"):] if src.startswith("file://") else src)
        return
    import fsspec

    with tempfile.TemporaryDirectory(prefix="emotionclip-video-") as d:
        local = Path(d) / name
        fs, p = fsspec.core.url_to_fs(src)
        fs.get_file(p, str(local))
        yield local


def run_frames(catalog, video_id: str) -> dict[str, Any]:
    """Frames stage for one video: raw video -> catalog.artifact("frames", video_id).
    Returns {"n_frames", "width", "height", "duration_s"}; bad video -> StageError."""
    from emotionclip.core.errors import StageError

    params = catalog.stages.frames
    out = catalog.artifact("frames", video_id)
    with local_video(catalog, video_id, "frames") as video:
        try:
            summary = extract_frames(
                video, out, fps=params.fps, short_edge=params.short_edge, jpeg_quality=params.jpeg_quality,
                metadata={"video_id": video_id, "fingerprint": catalog.stage_fingerprint("frames")})
        except (FrameError, FFmpegError, OSError) as e:
            raise StageError("frames", video_id, str(e)) from e
    return {k: summary[k] for k in ("n_frames", "width", "height", "duration_s")}
