"""The ffmpeg binary (from the imageio-ffmpeg wheel: no system package needed).

Always called with argument lists, never shell strings.
"""

from __future__ import annotations

import functools
import subprocess


@functools.lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def run_ffmpeg(args: list[str], *, timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run ffmpeg with `args` (no shell); raise RuntimeError with its stderr tail on failure."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", *args]
    proc = subprocess.run(cmd, capture_output=True, timeout=timeout)
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError("ffmpeg failed: " + " | ".join(tail))
    return proc
