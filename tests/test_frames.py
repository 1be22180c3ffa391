"""Frames stage: real ffmpeg on generated videos (counts, sizes, timestamps,
random access, full-resolution iteration, bad input)."""

from __future__ import annotations

import json
import math
import pickle
import random
import subprocess
import zipfile
from pathlib import Path

import fsspec
import numpy as np
import pytest
from fsspec.spec import AbstractBufferedFile, AbstractFileSystem
from PIL import Image

from emotionclip.core.catalog import load_catalog
from emotionclip.core.errors import StageError
from emotionclip.core.ffmpeg import ffmpeg_exe, probe_video, run_ffmpeg
from emotionclip.core.frame_store import FrameStore
from emotionclip.stages.frames import FrameError, extract_frames, iter_frames, run_frames
from emotionclip.sample import make_test_video


def _no_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".zip")


# Odd sizes need a source and codec without 4:2:0 chroma (which rounds to even).
_ODD = {"name": "v.mkv", "source": "testsrc", "codec": "ffv1", "vf": "format=yuv444p"}


@pytest.mark.parametrize(
    "width,height,duration,opts",
    [(320, 240, 2.3, {}), (180, 320, 2.0, {}), (333, 199, 1.7, _ODD), (96, 64, 1.0, {})],
    ids=["landscape", "portrait", "odd", "small-upscaled"],
)
def test_sizes_counts_and_full_resolution_iterator(tmp_path, width, height, duration, opts):
    opts = dict(opts)
    video = make_test_video(tmp_path / opts.pop("name", "v.mp4"), duration_s=duration, width=width,
                            height=height, fps=25, **opts)
    assert (probe_video(video).width, probe_video(video).height) == (width, height)
    out = tmp_path / "frames.zip"
    summary = extract_frames(video, out)

    n = summary["n_frames"]
    assert abs(n - math.floor(duration * 8)) <= 1
    w, h = summary["width"], summary["height"]
    assert min(w, h) == 256  # smaller edge 256, also when the source is smaller
    long_src, short_src = max(width, height), min(width, height)
    assert abs(max(w, h) - 256 * long_src / short_src) <= 1  # aspect kept
    assert (w > h) == (width > height)
    assert summary["duration_s"] == pytest.approx(duration, abs=0.05)

    store = FrameStore(out)
    assert len(store) == n
    assert store.size == (w, h)
    assert all(store[k].size == (w, h) and store[k].mode == "RGB" for k in (0, n - 1))

    frames = list(iter_frames(video))
    assert len(frames) == n  # same frames as the store
    assert all(f.shape == (height, width, 3) and f.dtype == np.uint8 for f in frames)
    # Same content: a full-resolution frame scaled down matches its stored frame
    # far better than the stored frame from the other end of the video.
    for k in (0, n // 2, n - 1):
        small = np.asarray(Image.fromarray(frames[k]).resize((w, h), Image.BILINEAR), dtype=np.float32)
        same = np.abs(small - np.asarray(store[k], dtype=np.float32)).mean()
        other = np.abs(small - np.asarray(store[n - 1 - k if k != n // 2 else 0], dtype=np.float32)).mean()
        assert same < 8, same
        assert same < other


def _gray_means(video: Path) -> np.ndarray:
    """Mean gray level of every decoded frame of `video` (no resampling)."""
    proc = subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(video), "-f", "rawvideo", "-pix_fmt", "gray", "-"],
                          capture_output=True, check=True)
    frames = np.frombuffer(proc.stdout, dtype=np.uint8).reshape(-1, 48, 64)
    return frames.reshape(len(frames), -1).mean(axis=1)


@pytest.mark.parametrize("src_fps", [25, 30000 / 1001])
def test_frame_k_is_the_frame_on_screen_at_k_over_8(tmp_path, src_fps):
    # Each source frame's brightness encodes its number N, i.e. its time N / src_fps.
    video = make_test_video(tmp_path / "clock.mp4", duration_s=2, width=64, height=48, fps=src_fps,
                            source="color", vf="format=yuv420p,geq=lum=16+3*N:cb=128:cr=128")
    ref = _gray_means(video)
    assert len(ref) >= 2 * int(src_fps)
    extract_frames(video, tmp_path / "frames.zip")
    store = FrameStore(tmp_path / "frames.zip")
    iterated = [f.mean() for f in iter_frames(video)]
    assert len(iterated) == len(store)
    for k in range(len(store)):
        for mean in (np.asarray(store[k].convert("L"), dtype=np.float32).mean(), iterated[k]):
            src_n = int(np.abs(ref - mean).argmin())
            t = src_n / src_fps
            # The latest source frame at or before k/8 s: never the next one, never a slot late.
            assert k / 8 - 1 / src_fps < t <= k / 8 + 1e-6, (k, src_n, t)


def test_rotation_metadata_is_applied(tmp_path):
    src = make_test_video(tmp_path / "land.mp4", duration_s=1, width=320, height=240)
    rotated = tmp_path / "rot.mp4"
    # A phone video: stored landscape, displayed portrait.
    run_ffmpeg(["-y", "-display_rotation", "90", "-i", str(src), "-c", "copy", str(rotated)])
    info = probe_video(rotated)
    assert (info.width, info.height, info.rotation) == (240, 320, 90)
    summary = extract_frames(rotated, tmp_path / "frames.zip")
    assert (summary["width"], summary["height"]) == (256, 341)
    assert next(iter_frames(rotated)).shape == (320, 240, 3)


def test_anamorphic_source_keeps_its_displayed_aspect(tmp_path):
    # 240x240 stored pixels, each 4:3 wide: displayed 320x240.
    video = make_test_video(tmp_path / "ana.mp4", duration_s=1, width=240, height=240, vf="setsar=4/3")
    summary = extract_frames(video, tmp_path / "frames.zip")
    assert (summary["width"], summary["height"]) == (341, 256)
    assert FrameStore(tmp_path / "frames.zip")[0].size == (341, 256)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("store")
    video = make_test_video(d / "v.mp4", duration_s=3, width=320, height=180)
    extract_frames(video, d / "frames.zip", metadata={"video_id": "abc"})
    return d / "frames.zip"


def test_store_random_access_and_layout(store_path):
    store = FrameStore(store_path)
    n = len(store)
    assert n == 24
    with zipfile.ZipFile(store_path) as zf:
        infos = zf.infolist()
        assert [i.filename for i in infos] == [f"{k:06d}.jpg" for k in range(n)]
        assert all(i.compress_type == zipfile.ZIP_STORED for i in infos)
        meta = json.loads(zf.comment)
    assert meta["n_frames"] == n and meta["fps"] == 8 and meta["video_id"] == "abc"
    assert store.fps == 8

    order = list(range(n))
    random.Random(0).shuffle(order)
    arrays = {k: np.asarray(store[k]) for k in order}
    assert store.read_bytes(5)[:2] == b"\xff\xd8"
    assert np.array_equal(np.asarray(store[-1]), arrays[n - 1])
    assert not np.array_equal(arrays[0], arrays[n - 1])
    many = store.get_many([7, 2, 7, 20])
    assert [np.array_equal(np.asarray(im), arrays[k]) for im, k in zip(many, [7, 2, 7, 20])] == [True] * 4
    assert np.array_equal(store.get_array(3), arrays[3])
    for bad in (n, -n - 1):
        with pytest.raises(IndexError):
            store[bad]

    clone = pickle.loads(pickle.dumps(store))  # DataLoader workers get a picklable store
    assert np.array_equal(np.asarray(clone[11]), arrays[11])
    store.close()


class _CountingFile(AbstractBufferedFile):
    def _fetch_range(self, start, end):
        self.fs.fetched += end - start
        with open(self.path, "rb") as f:
            f.seek(start)
            return f.read(end - start)


class CountingFS(AbstractFileSystem):
    """A remote-style fsspec filesystem (ranged reads, like s3fs) over local files
    that counts the bytes it fetches."""

    protocol = "countfs"
    fetched = 0

    def info(self, path, **kwargs):
        p = Path(self._strip_protocol(path))
        return {"name": str(p), "size": p.stat().st_size, "type": "file"}

    def _open(self, path, mode="rb", block_size=None, **kwargs):
        return _CountingFile(self, self._strip_protocol(path), mode, block_size=4096, cache_type="readahead")


def test_store_over_fsspec_reads_only_what_it_needs(store_path):
    fsspec.register_implementation("countfs", CountingFS, clobber=True)
    CountingFS.fetched = 0
    store = FrameStore(f"countfs://{store_path}")
    local = FrameStore(store_path)
    assert len(store) == len(local)
    assert np.array_equal(np.asarray(store[17]), np.asarray(local[17]))
    assert [im.size for im in store.get_many([3, 9])] == [local.size] * 2
    assert CountingFS.fetched < store_path.stat().st_size / 3

    mem = fsspec.filesystem("memory")
    mem.pipe("/frames-test/frames.zip", store_path.read_bytes())
    remote = FrameStore("memory://frames-test/frames.zip")
    assert np.array_equal(np.asarray(remote[4]), np.asarray(local[4]))


def _truncated(tmp_path: Path) -> Path:
    # moov at the front, so ffmpeg opens it and decodes until the data runs out.
    full = tmp_path / "full.mp4"
    run_ffmpeg(["-y", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:duration=6", "-c:v", "libx264",
                "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(full)])
    cut = tmp_path / "bad" / "truncated.mp4"
    cut.parent.mkdir(exist_ok=True)
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 4])
    return cut


@pytest.mark.parametrize("kind", ["empty", "garbage", "truncated", "audio-only", "missing"])
def test_bad_videos_raise_and_leave_nothing(tmp_path, kind):
    bad = tmp_path / "bad" / "video.mp4"
    bad.parent.mkdir()
    if kind == "empty":
        bad.write_bytes(b"")
    elif kind == "garbage":
        bad.write_bytes(random.Random(1).randbytes(20000))
    elif kind == "truncated":
        bad = _truncated(tmp_path)
    elif kind == "audio-only":
        bad = bad.with_suffix(".m4a")
        run_ffmpeg(["-y", "-f", "lavfi", "-i", "sine=duration=1", str(bad)])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(FrameError, match=bad.name):
        extract_frames(bad, out_dir / "frames.zip")
    assert _no_leftovers(out_dir) == []  # no file, no temp file
    if kind != "truncated":  # iter_frames streams what decodes; the frames stage checks completeness
        with pytest.raises(FrameError):
            list(iter_frames(bad))


def _stage_catalog(tmp_path: Path, video_id: str, video_file: str | None):
    cat = load_catalog(data_root=str(tmp_path / "data"))
    raw = Path(cat.artifact("raw_dir", video_id))
    raw.mkdir(parents=True)
    info = {"id": video_id, "title": "t", "channel": None, "duration": 2, "url": None, "source": "local",
            "caption_kind": None, "caption_lang": None, "caption_file": None, "video_file": video_file,
            "width": 320, "height": 240}
    Path(cat.artifact("info", video_id)).write_text(json.dumps(info))
    return cat, raw


def test_run_frames_writes_the_catalog_artifact(tmp_path):
    cat, raw = _stage_catalog(tmp_path, "vid_1", "vid_1.mp4")
    make_test_video(raw / "vid_1.mp4", duration_s=2, width=320, height=240)
    summary = run_frames(cat, "vid_1")
    assert summary == {"n_frames": 16, "width": 341, "height": 256, "duration_s": pytest.approx(2.0, abs=0.05)}
    store = FrameStore(cat.artifact("frames", "vid_1"))
    assert len(store) == 16
    assert store.metadata["fingerprint"] == cat.stage_fingerprint("frames")


@pytest.mark.parametrize("problem", ["corrupt", "missing-file", "bad-name", "no-info"])
def test_run_frames_bad_input_is_a_stage_error(tmp_path, problem):
    name = {"bad-name": "../../etc/passwd"}.get(problem, "vid_2.mp4")
    cat, raw = _stage_catalog(tmp_path, "vid_2", name)
    if problem == "corrupt":
        (raw / name).write_bytes(b"\x00" * 1000)
    if problem == "no-info":
        Path(cat.artifact("info", "vid_2")).unlink()
    with pytest.raises(StageError) as err:
        run_frames(cat, "vid_2")
    assert err.value.stage == "frames" and err.value.video_id == "vid_2"
    assert not Path(cat.artifact("frames", "vid_2")).exists()
