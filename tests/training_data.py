"""Small real corpora for the training tests: ffmpeg-made videos, frame stores
written by `emotionclip.stages.frames.extract_frames`, manifests per schemas.MANIFEST."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from emotionclip.core import schemas
from emotionclip.core.catalog import Catalog, load_catalog
from emotionclip.core.ffmpeg import run_ffmpeg
from emotionclip.stages.frames import extract_frames
from emotionclip.core.io import atomic_write_parquet
from emotionclip.sample import make_test_video

# A white box on black: where the box is in the video, in pixels of a 320x240 frame.
BOX_PX = (100, 60, 180, 160)  # x, y, x2, y2
VIDEO_W, VIDEO_H = 320, 240

TEXTS = ["I can't believe you did that!", "This is wonderful news.", "Get out of here now!",
         "I am so sorry for your loss.", "What a surprise to see you.", "That is disgusting."]


def tiny_catalog(root: Path) -> Catalog:
    return load_catalog(profile="tiny", data_root=str(root))


def make_box_video(path: Path, duration_s: float = 2.0) -> Path:
    x, y, x2, y2 = BOX_PX
    path.parent.mkdir(parents=True, exist_ok=True)
    run_ffmpeg(["-y", "-f", "lavfi", "-i", f"color=c=black:size={VIDEO_W}x{VIDEO_H}:rate=8:duration={duration_s}",
                "-vf", f"drawbox=x={x}:y={y}:w={x2 - x}:h={y2 - y}:color=white:t=fill",
                "-c:v", "libx264", "-pix_fmt", "yuv420p", "-preset", "ultrafast", str(path)])
    return path


def make_corpus(root: Path, n_videos: int = 2, clips_per_video: int = 4, duration_s: float = 2.5,
                box_video: bool = False, seed: int = 0) -> tuple[Catalog, pd.DataFrame]:
    """Frame stores for `n_videos` videos under `root` and a manifest DataFrame."""
    cat = tiny_catalog(root)
    rng = np.random.default_rng(seed)
    rows = []
    for v in range(n_videos):
        vid = f"vid{v}"
        video = root / "src" / f"{vid}.mp4"
        if box_video:
            make_box_video(video, duration_s)
        else:
            make_test_video(video, duration_s=duration_s, width=VIDEO_W, height=VIDEO_H, fps=8)
        info = extract_frames(video, cat.artifact("frames", vid))
        n = info["n_frames"]
        for c in range(clips_per_video):
            start = int(rng.integers(0, max(1, n - 12)))
            end = min(n - 1, start + int(rng.integers(3, 14)))  # some clips shorter than 8 frames
            x1, y1, x2, y2 = (BOX_PX[0] / VIDEO_W, BOX_PX[1] / VIDEO_H, BOX_PX[2] / VIDEO_W, BOX_PX[3] / VIDEO_H)
            boxes = []
            for f in range(start, end + 1):
                boxes.append({"frame_idx": f, "x1": x1, "y1": y1, "x2": x2, "y2": y2, "conf": 0.9})
                boxes.append({"frame_idx": f, "x1": 0.7, "y1": 0.7, "x2": 0.8, "y2": 0.8, "conf": 0.3})  # below 0.5
            logits = rng.normal(size=7).astype(np.float32)
            probs = np.exp(logits) / np.exp(logits).sum()
            row = {
                "clip_id": f"{vid}:{c}", "video_id": vid, "sentence_idx": c,
                "text": TEXTS[(v * clips_per_video + c) % len(TEXTS)],
                "start_s": start / 8, "end_s": end / 8, "frame_start": start, "frame_end": end,
                "neutral": float(probs[schemas.NEUTRAL_INDEX]), "person_frac": 1.0, "boxes": boxes,
            }
            row.update({k: float(x) for k, x in zip(schemas.LOGIT_COLUMNS, logits)})
            row.update({k: float(x) for k, x in zip(schemas.PROB_COLUMNS, probs)})
            rows.append(row)
    df = pd.DataFrame(rows)
    return cat, df


def write_manifest(df: pd.DataFrame, path: Path) -> Path:
    atomic_write_parquet(path, schemas.to_table(df, schemas.MANIFEST), schema=schemas.MANIFEST)
    return path


def write_frame_store(path: str | Path, n_frames: int) -> None:
    """A real frame store of `n_frames` tiny black frames, written atomically (the
    manifests stage checks clip frame ranges against its length)."""
    import io

    from PIL import Image

    from emotionclip.core.frame_store import FrameStoreWriter
    from emotionclip.core.io import atomic_path

    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "JPEG")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(str(path)) as tmp:
        with FrameStoreWriter(tmp) as w:
            for _ in range(n_frames):
                w.add(buf.getvalue())
