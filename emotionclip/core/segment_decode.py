"""Decode one video with K ffmpeg processes at once, time segment by time
segment, and yield exactly the frames one ffmpeg process yields, in order.

Why: on a GPU the humans stage (person boxes on every frame the TV dataset
keeps, at 8 FPS: paper appendix A.1) is bound by one ffmpeg process decoding
the full-resolution video and converting it to RGB (docs/design.md section 4,
"Humans"); the detector itself keeps up with twice that rate.

How the cuts stay exact. The single decode runs `fps=F:round=up:start_time=0`
(frame `k` = the latest frame with pts <= k/F on the timeline whose zero is the
container's start time). A segment that starts at slot `a` runs the same filter
with `start_time=a/F` on the *same* timeline:

- `-ss T -itsoffset T` before `-i`: ffmpeg seeks to a keyframe at or before T,
  and its timestamp offset becomes `itsoffset - (ss + container start)` =
  `-container start`, computed in integer microseconds, the offset of the single
  decode exactly, so every frame reaches the filter with the pts it has there;
- `-noaccurate_seek`: no trim drops the frames between that keyframe and `a/F`,
  so the fps filter sees the frame on screen at `a/F` (whose pts is usually
  before it) and picks the same frame for slot `a`; the ones before it it drops;
- the filter converts `pts - in_off` with `in_off` = `a/F` in the stream's time
  base, rounded up (libavfilter/vf_fps.c): a cut is only placed where `a/F` is a
  whole number of time-base ticks, where that rounding is exact and the slot of
  every frame is `ceil(pts * F)` as with `start_time=0`. `cut_step` gives the
  spacing of such slots (1 for the 1/90000 or 1/15360 of MP4, 8 for 1/25);
- the seek point is a keyframe from the container's index (listed by the same
  ffmpeg binary, `read_keyframes`) at or before the segment's first slot, nudged so ffmpeg's own B-frame heuristic (3/23 s back
  when the codec has a reorder delay) lands on that keyframe or an earlier one
  (earlier only costs decoding time). B-frames are reordered by the decoder as
  in the single decode; VFR timestamps go through unchanged;
- `-frames:v n` ends a segment after its slots; the last runs to the end of the
  file, where the fps filter's end-of-stream rule is the single decode's.

Each segment but the first also decodes `cut_step` slots before its first one,
and they must equal the end of the segment before it byte for byte, else the
decode stops trusting the cuts (`SegmentMismatch`) and `iter_frames_parallel`
finishes the video with the single decode. Memory: at most `workers` segments
are decoded ahead, each of at most `segment_s` seconds of frames.
"""

from __future__ import annotations

import io
import logging
import math
import os
import subprocess
import tempfile
import threading
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Iterator, Sequence

import numpy as np

from emotionclip.core.ffmpeg import FFmpegError, ffmpeg_exe, read_ppm, run_ffmpeg, stderr_tail

log = logging.getLogger(__name__)

# ffmpeg (fftools/ffmpeg_demux.c) seeks 3/23 s before -ss when a stream has a
# reorder delay (B-frames), so that a DTS-indexed demuxer lands before the pts.
_DTS_HEURISTIC_S = 3 / 23
# Seconds of frames a segment aims at: long enough that the process start and
# the frames decoded past its end (the fps filter and the decoder threads look
# ahead) stay small against it, short enough that `workers` segments decoded
# ahead fit in memory (8 s at 8 FPS = 64 frames, 177 MB at 720p).
DEFAULT_SEGMENT_S = 8.0
_CHUNK = 1 << 20


class SegmentMismatch(FFmpegError):
    """The frames two segments both decoded at a cut differ: the cut is not exact."""


@dataclass(frozen=True)
class Segment:
    """Slots `first .. first + count - 1` (count None: to the end of the video),
    decoded from the keyframe at `seek_s` (timeline seconds), after `lead`
    slots before `first` that are checked against the previous segment."""

    first: int
    count: int | None
    seek_s: float
    lead: int


@dataclass(frozen=True)
class KeyframeIndex:
    """What planning needs from the container: keyframe times on ffmpeg's
    timeline (seconds from the container's start time), the stream's time base,
    whether the codec reorders frames, and about how long the video is."""

    keyframes: tuple[float, ...]
    time_base: Fraction
    reorders: bool
    duration_s: float


def read_keyframes(path: str | os.PathLike) -> KeyframeIndex:
    """The keyframe index of the video stream ffmpeg decodes (`-map 0:V:0`), from
    the same ffmpeg binary in one demuxing pass, no decoding: keyframe packets
    only (the `noise` bitstream filter drops the rest), listed by the framecrc
    muxer (time base, then one `stream, dts, pts, duration, size, crc` line per
    packet), timestamps on ffmpeg's own timeline (container start time
    subtracted), as the decode sees them."""
    proc = run_ffmpeg(["-v", "error", "-i", os.fspath(path), "-map", "0:V:0", "-c", "copy",
                       "-bsf:v", "noise=drop=not(key)", "-f", "framecrc", "-"], timeout=600)
    tb: Fraction | None = None
    keys: list[float] = []
    reorders = False
    end = 0.0
    for line in proc.stdout.decode(errors="replace").splitlines():
        if line.startswith("#tb 0:"):
            tb = Fraction(line.split(":", 1)[1].strip())
        elif line and not line.startswith("#"):
            fields = [f.strip() for f in line.split(",")]
            if len(fields) < 5 or fields[0] != "0" or tb is None:
                continue
            dts, pts, duration = int(fields[1]), int(fields[2]), int(fields[3])
            reorders = reorders or dts != pts  # B-frames: a keyframe decoded before it is shown
            keys.append(float(pts * tb))
            end = max(end, float((pts + duration) * tb))
    if tb is None or not keys:
        raise FFmpegError(f"{path}: no keyframe index")
    keys = sorted(set(keys))
    # the last GOP's end is not listed: about one mean GOP after its keyframe
    gop = (keys[-1] - keys[0]) / (len(keys) - 1) if len(keys) > 1 else 0.0
    return KeyframeIndex(tuple(keys), tb, reorders, end + gop)


def cut_step(fps: int, time_base: Fraction) -> int:
    """The smallest slot spacing at which `slot / fps` s is a whole number of
    `time_base` ticks (see the module docstring) and of microseconds (the unit
    the filter's start time passes through): cuts are placed on multiples."""
    num = fps * time_base.numerator
    ticks = num // math.gcd(num, time_base.denominator)
    micros = fps // math.gcd(fps, 1_000_000)
    return ticks * micros // math.gcd(ticks, micros)


def plan_segments(index: KeyframeIndex, fps: int, *, segment_s: float = DEFAULT_SEGMENT_S,
                  cuts: Sequence[int] | None = None) -> list[Segment]:
    """Segments covering the video. Cuts: `cuts` (slot numbers, multiples of
    `cut_step`) or, by default, every ~`segment_s` seconds at the first usable
    slot after a keyframe (so a segment decodes little before its first slot).
    One segment = nothing to split."""
    step = cut_step(fps, index.time_base)
    keys = index.keyframes
    if not keys:
        return [Segment(0, None, 0.0, 0)]
    if cuts is None:
        target = max(step, int(round(segment_s * fps)))
        total = index.duration_s * fps
        chosen: list[int] = []
        last = 0
        for t in keys[1:]:
            # first cut slot whose check slot (cut - step) lies at or after this keyframe
            a = (math.ceil(t * fps / step - 1e-9) + 1) * step
            if a - last >= target and a < total - step:
                chosen.append(a)
                last = a
        cuts = chosen
    bad = [a for a in cuts if a <= 0 or a % step]
    if bad or list(cuts) != sorted(set(cuts)):
        raise ValueError(f"cuts must be increasing positive multiples of {step}, got {list(cuts)}")
    starts = [0, *cuts]
    out = []
    for i, a in enumerate(starts):
        lead = step if a else 0
        check_t = (a - lead) / fps  # the earliest slot this segment outputs
        out.append(Segment(a, starts[i + 1] - a if i + 1 < len(starts) else None,
                           _seek_point(keys, check_t, index.reorders), lead))
    return out


def _seek_point(keys: Sequence[float], t: float, reorders: bool) -> float:
    """An -ss value at which ffmpeg lands on the latest keyframe at or before `t`
    (or an earlier one, which only costs decoding): that keyframe's time, plus
    what ffmpeg's B-frame heuristic takes off and a millisecond against rounding,
    at most half the gap to the next keyframe (a DTS-indexed demuxer lands at or
    before the target, and a keyframe's DTS is at or before its PTS)."""
    i = max(0, int(np.searchsorted(np.asarray(keys), t + 1e-9, side="right")) - 1)
    k = keys[i]
    gap = (keys[i + 1] - k) if i + 1 < len(keys) else 1.0
    nudge = min((_DTS_HEURISTIC_S if reorders else 0.0) + 1e-3, gap / 2)
    return max(0.0, k + nudge)


def segment_args(input_args: Sequence[str], vf: str, output_args: Sequence[str], seg: Segment, fps: int,
                 threads: int | None = None) -> list[str]:
    """The single decode's arguments with the segment's seek before `-i`, its own
    filter start and frame count. `input_args` holds `-i PATH` and the stream
    options; `vf` the filter chain with `{start}` where the fps filter's start goes."""
    args = list(input_args)
    i = args.index("-i")
    seek = f"{seg.seek_s:.6f}"
    pre = ["-noaccurate_seek"]
    if seg.first or seg.lead:
        pre = ["-ss", seek, "-itsoffset", seek, "-noaccurate_seek"]
    if threads:
        pre = ["-threads", str(threads), *pre]
    args[i:i] = pre
    # slot / fps in seconds: ffmpeg reads start_time as a double, in which k/8 is exact
    start = repr((seg.first - seg.lead) / fps)
    frames = [] if seg.count is None else ["-frames:v", str(seg.count + seg.lead)]
    return [*args, "-vf", vf.replace("{start}", start), *frames, *output_args]


# -- reading -------------------------------------------------------------------

class _Job:
    """One segment's frames, filled by its worker thread, read in order by the consumer."""

    def __init__(self, seg: Segment) -> None:
        self.seg = seg
        self.frames: list[np.ndarray] = []
        self.done = False
        self.error: BaseException | None = None
        self.proc: subprocess.Popen | None = None


class ParallelDecode:
    """Iterator over the frames of `segments`, decoded by `workers` threads, each
    running one ffmpeg process at a time (segment i on worker i mod workers), at
    most `workers` segments ahead of the consumer. `frames_yielded` counts what
    was handed out (for a fallback that resumes after them)."""

    def __init__(self, video: str, segments: Sequence[Segment], workers: int,
                 make_args: Callable[[Segment], list[str]]) -> None:
        self.video = video
        self.jobs = [_Job(s) for s in segments]
        self.workers = max(1, min(int(workers), len(self.jobs)))
        self.make_args = make_args
        self.frames_yielded = 0
        self._cond = threading.Condition()
        self._current = 0  # the segment the consumer reads
        self._stop = False
        self._threads = [threading.Thread(target=self._work, args=(w,), name=f"segment-decode-{w}", daemon=True)
                         for w in range(self.workers)]
        for t in self._threads:
            t.start()

    # worker side
    def _work(self, w: int) -> None:
        for i in range(w, len(self.jobs), self.workers):
            with self._cond:
                while not self._stop and i >= self._current + self.workers:
                    self._cond.wait()
                if self._stop:
                    return
            job = self.jobs[i]
            try:
                self._run(job)
            except BaseException as e:  # handed to the consumer
                with self._cond:
                    job.error = e
            with self._cond:
                job.done = True
                self._cond.notify_all()

    def _run(self, job: _Job) -> None:
        err = tempfile.TemporaryFile()
        try:
            with self._cond:
                if self._stop:
                    return
                job.proc = subprocess.Popen([ffmpeg_exe(), *self.make_args(job.seg)], stdin=subprocess.DEVNULL,
                                            stdout=subprocess.PIPE, stderr=err, bufsize=0)
            out = io.BufferedReader(job.proc.stdout, buffer_size=_CHUNK)
            where = f"{self.video} (segment at slot {job.seg.first})"
            while True:
                frame = read_ppm(out, where)
                if frame is None:
                    break
                with self._cond:
                    job.frames.append(frame)
                    self._cond.notify_all()
            rc = job.proc.wait()
            if rc != 0 and not self._stop:
                err.seek(0)
                raise FFmpegError(f"{where}: ffmpeg failed: {stderr_tail(err.read())}")
        finally:
            if job.proc is not None:
                if job.proc.poll() is None:
                    job.proc.kill()
                job.proc.wait()
                job.proc.stdout.close()
            err.close()

    # consumer side
    def __iter__(self) -> Iterator[np.ndarray]:
        # the last frames handed out: the next segment's check frames must equal them
        tail: deque[np.ndarray] = deque(maxlen=max([j.seg.lead for j in self.jobs] + [1]))
        try:
            for i, job in enumerate(self.jobs):
                with self._cond:
                    self._current = i
                    self._cond.notify_all()
                k = emitted = 0
                while True:
                    with self._cond:
                        while k >= len(job.frames) and not job.done:
                            self._cond.wait()
                        if k < len(job.frames):
                            frame = job.frames[k]
                            job.frames[k] = None  # type: ignore[call-overload]  # handed on: not held here
                        elif job.error is not None:
                            raise job.error
                        else:
                            break
                    k += 1
                    if k <= job.seg.lead:  # a check frame at the cut
                        j = len(tail) - job.seg.lead + k - 1
                        if j < 0 or not np.array_equal(tail[j], frame):
                            raise SegmentMismatch(f"{self.video}: frame {job.seg.first - job.seg.lead + k - 1} "
                                                  "differs between two segments")
                        continue
                    emitted += 1
                    self.frames_yielded += 1
                    tail.append(frame)
                    yield frame
                if job.seg.count is not None and emitted < job.seg.count:
                    return  # the video ended inside this segment: the later ones hold nothing
        finally:
            self.close()

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
            procs = [j.proc for j in self.jobs if j.proc is not None]
        for p in procs:
            if p.poll() is None:
                p.kill()
        for t in self._threads:
            t.join(timeout=10)


def default_threads(workers: int) -> int:
    """Decoder threads per ffmpeg process: the cores shared out, at least one
    (more would only add frames decoded past a segment's end)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, workers))


def decode_parallel(video: str | os.PathLike, fps: int, workers: int, *, input_args: Sequence[str], vf: str,
                    output_args: Sequence[str], fallback: Callable[[], Iterator[np.ndarray]],
                    segment_s: float = DEFAULT_SEGMENT_S, cuts: Sequence[int] | None = None,
                    threads: int | None = None) -> Iterator[np.ndarray]:
    """The frames of the single decode `fallback()`, decoded by `workers` ffmpeg
    processes over time segments (`input_args` / `vf` / `output_args`: the single
    decode's command, `vf` with `{start}` for the fps filter's start time).
    `fallback()` runs instead when there is nothing to split (one worker, no
    keyframe index, a video shorter than two segments); after a `SegmentMismatch`
    it finishes the video, past the frames already yielded."""
    video = os.fspath(video)
    segments: list[Segment] = []
    if workers > 1:
        try:
            index = read_keyframes(video)
            # at least two segments per worker on a short video, so that all of them work
            seg_s = min(segment_s, max(1.0, index.duration_s / (2 * workers)))
            segments = plan_segments(index, fps, segment_s=seg_s, cuts=cuts)
        except (FFmpegError, OSError, ValueError, subprocess.SubprocessError) as e:
            if cuts is not None:
                raise
            # the single decode then reports what is wrong with the file, if anything
            log.info("%s: no segment plan (%s); decoding in one process", video, e)
    if len(segments) < 2:
        yield from fallback()
        return
    threads = threads or default_threads(workers)
    dec = ParallelDecode(video, segments, workers,
                         lambda seg: segment_args(input_args, vf, output_args, seg, fps, threads))
    try:
        yield from dec
    except SegmentMismatch as e:
        log.warning("%s; finishing with one decoder after frame %d", e, dec.frames_yielded)
        for k, frame in enumerate(fallback()):
            if k >= dec.frames_yielded:
                yield frame
    finally:
        dec.close()
