"""Synthetic media for tests, benchmarks and the demo corpus (generated with ffmpeg lavfi)."""

from __future__ import annotations

from pathlib import Path

from emotionclip.ffmpeg import run_ffmpeg


def make_test_video(
    path: str | Path,
    *,
    duration_s: float = 3.0,
    width: int = 320,
    height: int = 240,
    fps: float = 25,
    source: str = "testsrc2",
    codec: str = "libx264",
) -> Path:
    """Write a synthetic video (lavfi `source`) of the given size and length."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    vcodec = ["-c:v", codec, "-pix_fmt", "yuv420p", "-preset", "ultrafast"] if codec == "libx264" else ["-c:v", codec]
    run_ffmpeg([
        "-y", "-f", "lavfi", "-i", f"{source}=size={width}x{height}:rate={fps}:duration={duration_s}",
        *vcodec, str(path),
    ])
    return path
