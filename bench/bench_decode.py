"""Benchmark: the humans stage's full-resolution decode at 8 FPS, one ffmpeg
process (`iter_frames`, the baseline) against K processes over time segments
(`iter_frames_parallel`), in the same run, on the same file. Checks that both
give the same frames (a digest of every frame) and prints the speed-up (wall)
and the CPU time per frame against the single decode (what the cuts cost: on a
machine whose cores are busy with other work, wall time cannot improve).

    .venv/bin/python bench/bench_decode.py                       # 720p, 24 s, K = 2 (the 2-core machine)
    python bench/bench_decode.py --workers 4 8 16 --seconds 60   # a 16-core GPU machine

The video: lavfi testsrc2 at 25 fps, H.264 with B-frames and a keyframe every
2 s (YouTube-like GOPs; the segment cuts sit just after keyframes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emotionclip.core.ffmpeg import run_ffmpeg  # noqa: E402
from emotionclip.core.segment_decode import DEFAULT_SEGMENT_S  # noqa: E402
from emotionclip.stages.frames import iter_frames, iter_frames_parallel  # noqa: E402


def make_video(path: Path, seconds: float, width: int, height: int) -> Path:
    run_ffmpeg(["-y", "-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate=25:duration={seconds}",
                "-c:v", "libx264", "-preset", "veryfast", "-bf", "2", "-g", "50", "-pix_fmt", "yuv420p", str(path)])
    return path


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the ffmpeg processes)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(frames) -> tuple[float, float, int, str]:
    """(wall s, CPU s, frames, digest of every frame)."""
    t, c = time.perf_counter(), _cpu()
    h = hashlib.blake2b(digest_size=16)
    n = 0
    for f in frames:
        h.update(f.data)
        n += 1
    return time.perf_counter() - t, _cpu() - c, n, h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=24.0)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--workers", type=int, nargs="+", default=[2])
    ap.add_argument("--segment-s", type=float, default=DEFAULT_SEGMENT_S)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--video", type=Path, help="an existing file instead of the synthetic one")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-decode-") as tmp:
        video = args.video or make_video(Path(tmp) / "v.mp4", args.seconds, args.width, args.height)
        results: dict[str, list[float]] = {"single": []}
        cpu: dict[str, list[float]] = {"single": []}
        ref = None
        for r in range(args.repeats):  # interleaved: machine load drifts
            s, c, n, digest = timed(iter_frames(video, fps=8))
            results["single"].append(s)
            cpu["single"].append(c)
            ref = ref or (n, digest)
            for k in args.workers:
                s, c, n, digest = timed(iter_frames_parallel(video, fps=8, workers=k, segment_s=args.segment_s))
                if (n, digest) != ref:
                    raise SystemExit(f"K={k}: frames differ from the single decode ({n} vs {ref[0]} frames)")
                results.setdefault(f"K={k}", []).append(s)
                cpu.setdefault(f"K={k}", []).append(c)
        n = ref[0]
        base = statistics.median(results["single"])
        base_cpu = statistics.median(cpu["single"])
        print(f"{video}: {n} frames at 8 FPS, {args.width}x{args.height}; median of {args.repeats}; "
              f"frames identical to the single decode; {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
        out = {"frames": n, "single_frames_per_s": n / base}
        print(f"  single ffmpeg       {n / base:7.1f} frames/s  ({base:.2f} s, CPU {base_cpu:.2f} s)")
        for k in args.workers:
            t = statistics.median(results[f"K={k}"])
            c = statistics.median(cpu[f"K={k}"])
            print(f"  {k:2d} segment decoders {n / t:7.1f} frames/s  ({t:.2f} s, CPU {c:.2f} s)  "
                  f"ratio {base / t:.2f}x wall, CPU per frame {c / base_cpu:.2f}x the single decode's")
            out[f"K{k}_frames_per_s"] = n / t
            out[f"K{k}_speedup"] = base / t
            out[f"K{k}_cpu_ratio"] = c / base_cpu
        print(json.dumps(out))


if __name__ == "__main__":
    main()
