"""Human detection with a real Ultralytics detector (yolo11n.yaml, random weights).

Random weights make the boxes arbitrary, so normalization is checked against
Ultralytics' own pixel boxes for the same frames (normalized == pixel / size)
and by scale: the same picture at 2x (nearest-neighbour upscale, which the
letterbox's linear downscale undoes exactly) must give the same normalized
boxes. A bug that keeps letterbox coordinates, forgets the padding or divides
by the network size fails one of the two.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from emotionclip.core.catalog import load_catalog
from emotionclip.core.errors import ModelNotAvailable, StageError
from emotionclip.stages.humans import PAPER_CONF, PAPER_IMGSZ, PAPER_IOU, detect_humans, run_humans
from emotionclip.zoo.detector import load_detector, resolve_device
from emotionclip.zoo.tiny import build_tiny_detector
from emotionclip.core.io import parquet_metadata, read_parquet
from emotionclip.core.schemas import HUMANS

# Low enough that the random-weight detector returns boxes (its scores are ~1.6e-4).
LOW_CONF = 1e-4


@pytest.fixture(scope="session")
def detector(models_dir):
    path = models_dir / "tiny" / "detector.pt"
    if not path.exists():
        build_tiny_detector(path)
    return load_detector(str(path), "cpu")


@pytest.fixture(scope="session")
def person() -> np.ndarray:
    """Ultralytics' own sample photo of two people (ships with the wheel), 640x360 RGB."""
    import ultralytics

    path = Path(ultralytics.__file__).parent / "assets" / "zidane.jpg"
    return np.asarray(Image.open(path).convert("RGB").resize((640, 360), Image.BILINEAR))


def canvas(img: np.ndarray, size: tuple[int, int], offset: tuple[int, int]) -> np.ndarray:
    w, h = size
    out = np.full((h, w, 3), 114, dtype=np.uint8)
    x, y = offset
    out[y:y + img.shape[0], x:x + img.shape[1]] = img[: h - y, : w - x]
    return out


def ultralytics_boxes(model, frames: list[np.ndarray], conf: float) -> list[np.ndarray]:
    """Ultralytics' own predict on one batch: per frame, rows of (x1, y1, x2, y2, conf) in pixels."""
    bgr = [np.ascontiguousarray(f[..., ::-1]) for f in frames]
    res = model.predict(bgr, imgsz=PAPER_IMGSZ, conf=conf, iou=PAPER_IOU, classes=[0], device="cpu",
                        batch=len(bgr), verbose=False)
    return [np.concatenate([r.boxes.xyxy.numpy(), r.boxes.conf.numpy()[:, None]], axis=1) for r in res]


def test_tiny_detector_is_deterministic_and_loads_with_plain_yolo(tmp_path, models_dir, detector):
    from ultralytics import YOLO

    a = models_dir / "tiny" / "detector.pt"
    b = build_tiny_detector(tmp_path / "b" / ".detector.pt.tmp-1234")  # tiny.py builds under a temp name
    digest = lambda p: hashlib.sha256(Path(p).read_bytes()).hexdigest()  # noqa: E731
    assert digest(a) == digest(b)
    model = YOLO(str(a))
    assert model.task == "detect"
    head = model.model.model[-1]
    assert head.nc == 80 and not getattr(head, "end2end", False)  # NMS-based, COCO classes (0 = person)
    assert model.model.yaml["yaml_file"].endswith("yolo11n.yaml")


def test_load_detector_is_cached_per_ref_and_device(models_dir, detector):
    ref = str(models_dir / "tiny" / "detector.pt")
    assert load_detector(ref, "cpu") is detector


def test_missing_paper_weights_offline_say_how_to_fetch(monkeypatch):
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    with pytest.raises(ModelNotAvailable, match="yolo11l.pt.*emotionclip models fetch"):
        load_detector("yolo11l.pt", "cpu")


def test_nms_free_detector_is_refused(tmp_path):
    from ultralytics import YOLO

    model = YOLO("yolo26n.yaml")
    model.model.end2end = True  # one-to-one head: no NMS, so iou=0.45 would be ignored
    model.save(tmp_path / "nms_free.pt")
    with pytest.raises(ValueError, match="NMS-free"):
        load_detector(str(tmp_path / "nms_free.pt"), "cpu")


def test_missing_local_weights_are_model_not_available(tmp_path):
    with pytest.raises(ModelNotAvailable, match="does not exist"):
        load_detector(str(tmp_path / "nowhere" / "detector.pt"), "cpu")


def test_resolve_device():
    import torch

    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"


def test_boxes_are_ultralytics_pixel_boxes_over_frame_size(detector, person):
    # One "video" of 950x530 frames (not a multiple of the stride: letterbox pads)
    # with the people pasted at known offsets.
    size = (950, 530)
    frames = [canvas(person, size, off) for off in [(0, 0), (300, 160), (90, 33)]]
    df = detect_humans(frames, detector, conf=LOW_CONF, batch_size=2, device="cpu")
    assert df.attrs["n_frames"] == 3
    assert list(df.columns) == [f.name for f in HUMANS]
    assert len(df) > 0
    # Same batches as detect_humans ran (2 + 1), so the numbers are the same.
    expected = ultralytics_boxes(detector, frames[:2], LOW_CONF) + ultralytics_boxes(detector, frames[2:], LOW_CONF)
    w, h = size
    for k, px in enumerate(expected):
        got = df[df["frame_idx"] == k][["x1", "y1", "x2", "y2", "conf"]].to_numpy(np.float64)
        want = px / np.array([w, h, w, h, 1.0])
        assert len(got) == len(want) > 0
        np.testing.assert_allclose(got, want, atol=1e-6)
    assert df[["x1", "y1", "x2", "y2"]].to_numpy().min() >= 0
    assert df[["x1", "y1", "x2", "y2"]].to_numpy().max() <= 1
    assert (df["x2"] > df["x1"]).all() and (df["y2"] > df["y1"]).all()


def test_normalized_boxes_do_not_depend_on_frame_resolution(detector, person):
    small = canvas(person, (640, 400), (0, 20))  # letterboxed to 640x416: padding on both axes' stride
    big = small.repeat(2, axis=0).repeat(2, axis=1)  # 1280x800: the letterbox's 0.5x linear resize gives `small` back
    a = detect_humans([small], detector, conf=LOW_CONF, device="cpu")
    b = detect_humans([big], detector, conf=LOW_CONF, device="cpu")
    assert len(a) > 0 and len(a) == len(b)
    cols = ["x1", "y1", "x2", "y2", "conf"]
    np.testing.assert_allclose(a[cols].to_numpy(), b[cols].to_numpy(), atol=1e-6)


def test_frame_index_follows_input_order_across_batches(detector, person):
    blank = np.zeros((360, 640, 3), np.uint8)
    frames = [blank, person, blank, blank, person]
    df = detect_humans(frames, detector, conf=LOW_CONF, batch_size=2, device="cpu")
    per_frame = df.groupby("frame_idx").size()
    single = detect_humans([person], detector, conf=LOW_CONF, device="cpu")
    assert df.attrs["n_frames"] == 5
    assert per_frame.loc[1] == per_frame.loc[4] and set(per_frame.index) >= {1, 4}
    np.testing.assert_allclose(
        df[df.frame_idx == 4][["x1", "y1", "x2", "y2"]].to_numpy(),
        single[["x1", "y1", "x2", "y2"]].to_numpy(), atol=1e-4)


def test_detector_that_finds_nobody_gives_an_empty_table(detector, person):
    # Random weights score ~1.6e-4: nobody at the paper's confidence 0.25.
    df = detect_humans([person, person], detector, conf=PAPER_CONF, device="cpu", half=True)  # half: CUDA only
    assert len(df) == 0 and df.attrs["n_frames"] == 2
    assert dict(df.dtypes.astype(str)) == {"frame_idx": "int32", "x1": "float32", "y1": "float32",
                                           "x2": "float32", "y2": "float32", "conf": "float32"}


def test_frame_source_errors_surface(detector, person):
    def broken():
        yield person
        yield person
        yield person
        raise OSError("decoder died")

    with pytest.raises(OSError, match="decoder died"):
        detect_humans(broken(), detector, batch_size=2, device="cpu")
    with pytest.raises(ValueError, match="HxWx3"):
        detect_humans([np.zeros((10, 10), np.uint8)], detector, device="cpu")


# -- the stage on a real generated video ------------------------------------------

def _catalog(tmp_path, models_dir, **overrides):
    return load_catalog(profile="tiny", data_root=str(tmp_path / "data"),
                        overrides={"models_dir": str(models_dir), "stages.humans.device": "cpu", **overrides})


def _add_video(cat, vid: str, duration_s: float = 1.5) -> Path:
    from emotionclip.sample import make_test_video

    raw = Path(cat.artifact("raw_dir", vid))
    video = make_test_video(raw / f"{vid}.mp4", duration_s=duration_s, width=320, height=180, fps=25)
    Path(cat.artifact("info", vid)).write_text(json.dumps({"id": vid, "video_file": video.name, "source": "local"}))
    return video


def test_run_humans_on_a_generated_video(tmp_path, models_dir, detector):
    from emotionclip.core.frame_store import FrameStore
    from emotionclip.stages.frames import run_frames

    cat = _catalog(tmp_path, models_dir)
    _add_video(cat, "vid_a")
    summary = run_humans(cat, "vid_a")
    run_frames(cat, "vid_a")
    n_store = len(FrameStore(cat.artifact("frames", "vid_a")))
    # The same frames the store holds (1.5 s at 8 fps; ffmpeg's fps filter decides the last one).
    assert summary["n_frames"] == n_store and n_store in (12, 13)
    assert summary["n_boxes"] == 0  # random weights at conf 0.25: nobody
    path = cat.artifact("humans", "vid_a")
    meta = parquet_metadata(path)
    assert meta["n_frames"] == str(n_store) and meta["fps"] == "8"
    assert meta["fingerprint"] == cat.stage_fingerprint("humans")
    assert len(read_parquet(path)) == 0

    # Low confidence: boxes come through, normalized, on existing frames.
    cat_low = _catalog(tmp_path, models_dir, **{"stages.humans.conf": LOW_CONF})
    summary = run_humans(cat_low, "vid_a")
    det = read_parquet(path)
    assert summary["n_boxes"] == len(det) > 0
    assert det["frame_idx"].between(0, n_store - 1).all()
    assert det[["x1", "y1", "x2", "y2"]].stack().between(0, 1).all()
    assert parquet_metadata(path)["fingerprint"] != meta["fingerprint"]  # conf is part of the fingerprint


def test_run_humans_names_video_and_stage(tmp_path, models_dir, detector):
    cat = _catalog(tmp_path, models_dir)
    with pytest.raises(StageError, match=r"\[humans\] video gone"):
        run_humans(cat, "gone")
    raw = Path(cat.artifact("raw_dir", "junk"))
    raw.mkdir(parents=True)
    (raw / "junk.mp4").write_bytes(b"this is not a video")
    Path(cat.artifact("info", "junk")).write_text(json.dumps({"id": "junk", "video_file": "junk.mp4"}))
    with pytest.raises(StageError, match=r"\[humans\] video junk"):
        run_humans(cat, "junk")
    assert not Path(cat.artifact("humans", "junk")).exists()
