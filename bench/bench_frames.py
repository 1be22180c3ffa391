"""Frames stage throughput: `extract_frames` against plain ffmpeg making the same
JPEG frames from the same file into /dev/null, measured in the same run.

    .venv/bin/python bench/bench_frames.py [--duration 60] [--size 1280x720] [--repeats 3]

Goal: ratio >= 0.9, i.e. splitting the JPEG stream and writing the
random-access zip costs at most 10% over ffmpeg alone.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emotionclip.core.ffmpeg import ffmpeg_exe, run_ffmpeg  # noqa: E402
from emotionclip.stages.frames import extract_frames, jpeg_ffmpeg_args  # noqa: E402


def make_source(path: Path, duration: float, size: str, fps: int) -> Path:
    """A 720p H.264 file like a YouTube download: moving test pattern plus grain,
    about 4 Mbit/s, so decoding and JPEG encoding do real work."""
    run_ffmpeg(["-y", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={fps}:duration={duration}",
                "-vf", "noise=alls=8", "-c:v", "libx264", "-preset", "veryfast", "-crf", "23",
                "-pix_fmt", "yuv420p", str(path)])
    return path


def _cpu() -> tuple[float, float]:
    """(CPU seconds of this process, of its finished children)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def plain_ffmpeg(video: Path) -> tuple[float, float]:
    """Baseline: the identical ffmpeg command (same filter, codec, quality) into /dev/null.
    Returns (wall seconds, CPU seconds)."""
    c0, t = _cpu(), time.perf_counter()
    subprocess.run([ffmpeg_exe(), *jpeg_ffmpeg_args(str(video), output="-")],
                   stdout=subprocess.DEVNULL, check=True)
    wall, c1 = time.perf_counter() - t, _cpu()
    return wall, (c1[0] - c0[0]) + (c1[1] - c0[1])


def ours(video: Path, out: Path) -> tuple[float, float, float, int]:
    """(wall seconds, total CPU seconds, CPU seconds spent in Python, frames)."""
    c0, t = _cpu(), time.perf_counter()
    summary = extract_frames(video, out)
    wall, c1 = time.perf_counter() - t, _cpu()
    return wall, (c1[0] - c0[0]) + (c1[1] - c0[1]), c1[0] - c0[0], summary["n_frames"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--fps", type=int, default=30, help="source frame rate")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--video", type=Path, help="use this file instead of generating one")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-frames-") as d:
        video = args.video or make_source(Path(d) / "src.mp4", args.duration, args.size, args.fps)
        out = Path(d) / "frames.zip"
        ours(video, out)  # warm-up (page cache, binary)
        base_t, our_t, base_cpu, our_cpu, py_cpu = [], [], [], [], []
        n = 0
        for _ in range(args.repeats):  # interleaved, so load changes hit both alike
            t, c = plain_ffmpeg(video)
            base_t.append(t)
            base_cpu.append(c)
            t, c, py, n = ours(video, out)
            our_t.append(t)
            our_cpu.append(c)
            py_cpu.append(py)
        size_mb = out.stat().st_size / 1e6

    base_fps = n / statistics.median(base_t)
    our_fps = n / statistics.median(our_t)
    print(f"source: {video if args.video else f'{args.duration:g} s {args.size} @ {args.fps} fps H.264'}")
    print(f"frames: {n} at 8 FPS, smaller edge 256; store {size_mb:.1f} MB")
    print(f"plain ffmpeg -> /dev/null : {base_fps:8.1f} frames/s  (median of {args.repeats}: "
          + ", ".join(f"{t:.2f}" for t in base_t) + " s)")
    print(f"extract_frames -> zip     : {our_fps:8.1f} frames/s  (median of {args.repeats}: "
          + ", ".join(f"{t:.2f}" for t in our_t) + " s)")
    print(f"ratio extract_frames / plain ffmpeg: {our_fps / base_fps:.3f}  (goal >= 0.9)")
    # On a shared machine wall time is noisy; CPU time says what the work costs.
    bc, oc, pc = (statistics.median(x) for x in (base_cpu, our_cpu, py_cpu))
    print(f"CPU seconds: plain ffmpeg {bc:.2f}, extract_frames {oc:.2f} (of which Python {pc:.2f}); "
          f"CPU ratio plain/ours: {bc / oc:.3f}")
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this Python process: {rss_mb:.0f} MB (frames are streamed, never all in memory)")


if __name__ == "__main__":
    main()
