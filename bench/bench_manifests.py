"""Incremental manifests: rebuilds against a build from scratch over the paper's dataset size.

    .venv/bin/python bench/bench_manifests.py [--videos 3600] [--clips 30] [--boxes 24] [--frames 48] [--added 10]

Synthesises, in a temporary data root, `videos` videos of `clips` clips each, as real
files: each video's clips.parquet (`boxes` person boxes per clip) and a real frame
store of `frames` tiny JPEG frames. Then, in the same run:
  (a) scratch:  no clips cache, every video's clips read and frame store opened
                (the baseline: what every build cost before the cache);
  (b) +added:   `added` new videos, then a rebuild;
  (c) nothing:  a rebuild with nothing new;
  (d) refilter: the same videos with stages.filter.max_neutral changed.
Every build writes a full manifest generation, rejected and failures. Prints the
seconds of each and its ratio to (a). The page cache is warm throughout (the files
were just written).
"""

from __future__ import annotations

import argparse
import io
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from emotionclip.core.catalog import load_catalog
from emotionclip.core.frame_store import FrameStoreWriter
from emotionclip.core.io import atomic_path, atomic_write_parquet
from emotionclip.core.schemas import BOX, CLIP, EMOTIONS
from emotionclip.stages import manifests
from emotionclip.stages.manifests import build_manifests


def clips_table(video_id: str, n: int, boxes: int, rng: np.random.Generator) -> pa.Table:
    """n clips of 3 s, half of them clearly emotional (neutral < 0.1), `boxes` boxes each."""
    start = np.round(0.1 * np.arange(n), 3)
    end = start + 3.0
    fs, fe = np.ceil(start * 8).astype(np.int32), np.floor(end * 8).astype(np.int32)
    neutral = np.where(np.arange(n) % 2 == 0, rng.uniform(0.0, 0.1, n), rng.uniform(0.6, 1.0, n)).astype(np.float32)
    others = rng.dirichlet(np.ones(6), n) * (1 - neutral[:, None])
    cols: dict[str, pa.Array] = {
        "clip_id": pa.array([f"{video_id}:{i}" for i in range(n)]),
        "video_id": pa.array([video_id] * n),
        "sentence_idx": pa.array(np.arange(n, dtype=np.int32)),
        "text": pa.array([f"Sentence {i} of {video_id}: I can't believe it!" for i in range(n)]),
        "start_s": pa.array(start), "end_s": pa.array(end),
        "frame_start": pa.array(fs), "frame_end": pa.array(fe),
    }
    probs = {}
    k = 0
    for e in EMOTIONS:
        if e == "neutral":
            probs[e] = neutral
        else:
            probs[e] = others[:, k].astype(np.float32)
            k += 1
    for e in EMOTIONS:
        cols[f"logit_{e}"] = pa.array(np.log(np.maximum(probs[e], 1e-6)).astype(np.float32))
    for e in EMOTIONS:
        cols[f"prob_{e}"] = pa.array(probs[e])
    cols["neutral"] = pa.array(neutral)
    cols["person_frac"] = pa.array(np.full(n, 0.9, np.float32))
    m = n * boxes
    frame_idx = (np.repeat(fs, boxes) + np.tile(np.arange(boxes), n) % 24).astype(np.int32)
    xy = rng.uniform(0, 0.5, (4, m)).astype(np.float32)
    struct = pa.StructArray.from_arrays(
        [pa.array(frame_idx), pa.array(xy[0]), pa.array(xy[1]), pa.array(xy[2] + 0.5), pa.array(xy[3] + 0.5),
         pa.array(rng.uniform(0.25, 1, m).astype(np.float32))], fields=list(BOX))
    cols["boxes"] = pa.ListArray.from_arrays(pa.array(np.arange(0, m + 1, boxes, dtype=np.int32)), struct)
    return pa.Table.from_arrays([cols[f.name] for f in CLIP], schema=CLIP)


def write_video(cat, video_id: str, args, rng: np.random.Generator, jpeg: bytes) -> None:
    atomic_write_parquet(cat.artifact("clips", video_id), clips_table(video_id, args.clips, args.boxes, rng))
    with atomic_path(cat.artifact("frames", video_id)) as tmp:
        with FrameStoreWriter(tmp) as w:
            for _ in range(args.frames):
                w.add(jpeg)


def timed(label: str, fn, baseline: float | None) -> float:
    reads = []
    real = manifests._read_clips

    def counting(catalog, video_id):
        reads.append(video_id)
        return real(catalog, video_id)

    manifests._read_clips = counting
    try:
        t0 = time.perf_counter()
        counts = fn()
        dt = time.perf_counter() - t0
    finally:
        manifests._read_clips = real
    ratio = f"{dt / baseline:.3f}" if baseline else "1.000"
    print(f"{label:<34} {dt:8.2f} s  ratio {ratio:>6}  clips files read {len(reads):5d}  "
          f"kept {counts['kept']:7d} of {counts['clips']:7d}", flush=True)
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--videos", type=int, default=3600)
    ap.add_argument("--clips", type=int, default=30)
    ap.add_argument("--boxes", type=int, default=24, help="person boxes per clip (one per frame of a 3 s clip)")
    ap.add_argument("--frames", type=int, default=48, help="frames in each video's frame store")
    ap.add_argument("--added", type=int, default=10)
    ap.add_argument("--root", help="data root to use (default: a temporary folder, removed after)")
    args = ap.parse_args()

    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="bench-manifests-"))
    try:
        cat = load_catalog(profile="tiny", data_root=str(root))
        rng = np.random.default_rng(0)
        buf = io.BytesIO()
        Image.new("RGB", (16, 16), (90, 60, 30)).save(buf, "JPEG")
        ids = [f"vid{i:05d}" for i in range(args.videos)]
        t0 = time.perf_counter()
        for vid in ids:
            write_video(cat, vid, args, rng, buf.getvalue())
        size = sum(Path(cat.artifact("clips", v)).stat().st_size for v in ids)
        print(f"synthesised {args.videos} videos x {args.clips} clips ({args.boxes} boxes each, {args.frames} frames), "
              f"clips files {size / 2**20:.1f} MiB, in {time.perf_counter() - t0:.1f} s", flush=True)

        base = timed("(a) from scratch (no cache)", lambda: build_manifests(cat, ids), None)
        cache = Path(cat.artifact("clips_cache"))
        print(f"    clips cache {cache.stat().st_size / 2**20:.1f} MiB", flush=True)
        added = [f"new{i:05d}" for i in range(args.added)]
        for vid in added:
            write_video(cat, vid, args, rng, buf.getvalue())
        timed(f"(b) rebuild, {args.added} videos added", lambda: build_manifests(cat, ids + added), base)
        timed("(c) rebuild, nothing new", lambda: build_manifests(cat, ids + added), base)
        looser = load_catalog(profile="tiny", data_root=str(root), overrides={"stages.filter.max_neutral": 0.08})
        timed("(d) re-filter, max_neutral 0.08", lambda: build_manifests(looser, ids + added), base)
        cache.unlink()
        timed("(a') from scratch again", lambda: build_manifests(looser, ids + added), base)
    finally:
        if not args.root:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
