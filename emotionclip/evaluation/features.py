"""Frozen EmotionCLIP features for benchmark samples, cached on disk.

Video samples go through the TV dataset's own stages: `emotionclip.stages.frames.
extract_frames` (8 FPS, smaller edge 256) writes one frame store per video,
8 frames are taken uniformly over the sample's time range, and where the
dataset gives no person box the subject mask comes from
`emotionclip.stages.humans.detect_humans` on the same frames decoded at full
resolution (`iter_frames`), with the paper's detector settings. Images (EMOTIC)
are read directly and encoded by the frame encoder with the annotated box.
Frames and masks are prepared by `emotionclip.models.transforms.ClipPreprocessor`,
the training loader's own decode, resize, centre crop, normalisation and mask
rule (from the stored JPEG bytes, as the loader reads them). Features are
L2-normalised.

Cache: one `.npz` per (model fingerprint, dataset, split, preprocessing
fingerprint) holding sample keys and features; a later run computes only the
samples not in it (so a probe with other settings costs no forward pass, and
an interrupted run resumes). Frame stores and detections are cached per video
under `work_dir` and shared between splits and models. Beside the features, a
probe's C search (appendix B.3) is cached as one JSON per search
(`c-search/<dataset>/<key>.json`, the key from `probes.search_key`: the search's
own features and targets, mode, range, trials, seed), so a re-run refits no trial.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from emotionclip.core.progress import ProgressHook, Tracker, track
from emotionclip.evaluation.datasets.base import Sample, media_problem

if TYPE_CHECKING:
    import torch

    from emotionclip.models.transforms import ClipPreprocessor
    from emotionclip.core.frame_store import FrameStore

# 2: frames prepared by the training loader's path (torchvision decode and resize, not PIL)
FEATURES_VERSION = 2
STAGE = "eval-features"
# Paper: 8 frames per clip, sampled at 8 FPS with the smaller edge at 256.
NUM_FRAMES = 8
FPS = 8
SHORT_EDGE = 256


@dataclass
class FeatureConfig:
    """Everything besides the model that changes a feature (part of the cache key)."""

    num_frames: int = NUM_FRAMES
    fps: int = FPS
    short_edge: int = SHORT_EDGE
    detector: str | None = None  # catalog model_ref("detector"); None: no detection (empty masks)
    det_imgsz: int = 640  # paper (YOLOv7 at 640, conf 0.25, NMS IoU 0.45)
    det_conf: float = 0.25
    det_iou: float = 0.45

    def fingerprint(self, model_preprocess: dict[str, Any], kind: str) -> str:
        d = asdict(self) | {"preprocess": model_preprocess, "kind": kind, "version": FEATURES_VERSION}
        if d["detector"]:
            d["detector"] = _file_or_name_id(d["detector"])
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class FeatureStats:
    computed: int = 0
    cached: int = 0
    # {id, media, reason, error}; error: "missing" / "empty" / "unreadable" or the exception's type name
    skipped: list[dict[str, str]] = field(default_factory=list)
    forward_batches: int = 0
    decode_s: float = 0.0  # frame extraction, reading, detection, preprocessing
    model_s: float = 0.0
    cache_path: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def skip_summary(self, total: int) -> str:
        """One line: how many of `total` samples were skipped, by error type, and the
        first error of the commonest type (the likely cause when all were skipped)."""
        import collections

        from emotionclip.core.errors import StageError

        if not total:
            return "the split lists no samples"
        if not self.skipped:
            return f"0 of {total} skipped"
        kinds = collections.Counter(x.get("error") or x["reason"] for x in self.skipped)
        top = kinds.most_common(1)[0][0]
        first = next(x for x in self.skipped if (x.get("error") or x["reason"]) == top)
        counts = ", ".join(f"{k}: {n}" for k, n in kinds.most_common())
        reason = str(first["reason"])
        if reason in ("missing", "empty", "unreadable"):  # a media check: name the file as a decode error does
            reason = str(StageError(STAGE, first["id"], f"{first['media']}: {reason}"))
        reason = " ".join(reason.split())  # one line: some messages carry newlines
        return f"{len(self.skipped)} of {total} skipped ({counts}); first error: {reason}"


# -- fingerprints ----------------------------------------------------------------------

def _sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _file_or_name_id(ref: str) -> str:
    p = Path(ref)
    return f"sha256:{_sha256_file(p)}" if p.is_file() else ref


def model_fingerprint(model: Any, checkpoint: str | os.PathLike | None = None) -> str:
    """sha256 of the checkpoint file (or of the weights when there is none) plus
    the model config (the subject mode changes features without changing weights)."""
    import torch

    h = hashlib.sha256()
    if checkpoint is not None:
        h.update(_sha256_file(checkpoint).encode())
    else:
        for name, t in sorted(model.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    cfg = model.config.to_dict() if hasattr(model, "config") else {}
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    return h.hexdigest()


def sample_key(s: Sample) -> str:
    return hashlib.sha1(repr(s.key()).encode()).hexdigest()


def cache_file(cache_dir: str | os.PathLike, model_fp: str, dataset: str, split: str, prep_fp: str) -> Path:
    return Path(cache_dir) / "features" / model_fp[:16] / dataset / f"{split}-{prep_fp[:16]}.npz"


def read_cache(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        return {}
    with np.load(path, allow_pickle=False) as z:
        return dict(zip(z["keys"].tolist(), z["features"]))


def write_cache(path: Path, feats: dict[str, np.ndarray]) -> None:
    from emotionclip.core.io import atomic_path

    keys = sorted(feats)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, keys=np.asarray(keys), features=np.stack([feats[k] for k in keys]).astype(np.float32))


def search_cache_file(cache_dir: str | os.PathLike, dataset: str, key: str) -> Path:
    """Where one C search's result lives, beside the feature caches."""
    return Path(cache_dir) / "c-search" / dataset / f"{key[:32]}.json"


def read_search_cache(path: Path) -> dict[str, Any] | None:
    """A cached C search ({C, c_source, trials, search}), or None when absent or
    unreadable (a torn or hand-edited file is searched again, never trusted)."""
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(d, dict) or not {"C", "c_source", "trials", "search"} <= set(d):
        return None
    if d["search"].get("key", "")[:32] != path.stem:
        return None
    return d


def write_search_cache(path: Path, result: dict[str, Any]) -> None:
    from emotionclip.core.io import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(str(path), json.dumps(result, indent=1, sort_keys=True))


# -- frame selection ----------------------------------------------------------------

def uniform_indices(first: int, last: int, n: int) -> list[int]:
    """`n` indices spaced uniformly over [first, last] (repeats when the range is short)."""
    last = max(first, last)
    return [int(round(x)) for x in np.linspace(first, last, n)]


def frame_range(s: Sample, n_stored: int, fps: int, native_fps: float | None) -> tuple[int, int]:
    """Stored frame indices [first, last] covering the sample's time range."""
    if s.time_s is not None:
        a, b = s.time_s
    elif s.frames is not None:
        if not native_fps:
            raise ValueError("native frame numbers given but the video's frame rate is unknown")
        a, b = s.frames[0] / native_fps, (s.frames[1] + 1) / native_fps
    else:
        return 0, n_stored - 1
    first = int(np.ceil(a * fps - 1e-6))
    last = max(first, int(np.ceil(b * fps - 1e-6)) - 1)
    first, last = min(max(first, 0), n_stored - 1), min(max(last, 0), n_stored - 1)
    return first, last


def box_at(boxes: dict[int, tuple[float, float, float, float]], native_frame: float,
           tolerance: float) -> tuple[float, float, float, float] | None:
    """The box of the nearest annotated native frame within `tolerance` frames."""
    if not boxes:
        return None
    keys = np.fromiter(boxes.keys(), dtype=np.int64)
    i = int(np.abs(keys - native_frame).argmin())
    return boxes[int(keys[i])] if abs(keys[i] - native_frame) <= tolerance else None


# -- per-video preparation -----------------------------------------------------------

class _Videos:
    """Frame stores, probes and detections per video file, cached under work_dir."""

    def __init__(self, work_dir: Path, cfg: FeatureConfig, device: str):
        self.work_dir, self.cfg, self.device = work_dir, cfg, device
        self._probe: dict[str, Any] = {}

    def _stem(self, media: str) -> str:
        st = os.stat(media)
        ident = f"{os.path.abspath(media)}|{st.st_size}|{int(st.st_mtime)}"
        return hashlib.sha1(ident.encode()).hexdigest()[:20]

    def probe(self, media: str):
        if media not in self._probe:
            from emotionclip.core.ffmpeg import probe_video

            self._probe[media] = probe_video(media)
        return self._probe[media]

    def store(self, media: str):
        from emotionclip.core.frame_store import FrameStore
        from emotionclip.stages.frames import extract_frames

        path = self.work_dir / "frames" / f"{self._stem(media)}-{self.cfg.fps}-{self.cfg.short_edge}.zip"
        if not path.is_file():
            extract_frames(media, path, fps=self.cfg.fps, short_edge=self.cfg.short_edge)
        return FrameStore(path)

    def detections(self, media: str, indices: Sequence[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Normalised person boxes and confidences at the stored frame indices, from
        the full-resolution frames (cached per video and detector settings)."""
        import pandas as pd

        from emotionclip.core.io import atomic_write_parquet, parquet_metadata, read_parquet

        cfg = self.cfg
        det_fp = hashlib.sha1(json.dumps([_file_or_name_id(cfg.detector), cfg.det_imgsz, cfg.det_conf,
                                          cfg.det_iou, cfg.fps]).encode()).hexdigest()[:12]
        path = self.work_dir / "detections" / f"{self._stem(media)}-{det_fp}.parquet"
        done: set[int] = set()
        df = None
        if path.is_file():
            done = set(json.loads(parquet_metadata(path).get("frames", "[]")))
            df = read_parquet(path)
        todo = sorted(set(int(i) for i in indices) - done)
        if todo:
            from emotionclip.stages.frames import iter_frames
            from emotionclip.stages.humans import detect_humans
            from emotionclip.zoo.detector import load_detector

            model = load_detector(cfg.detector, self.device)
            wanted = set(todo)
            frames = (f for k, f in enumerate(iter_frames(media, fps=cfg.fps)) if k in wanted)
            new = detect_humans(frames, model, imgsz=cfg.det_imgsz, conf=cfg.det_conf, iou=cfg.det_iou,
                                device=self.device)
            seen = todo[:new.attrs.get("n_frames", len(todo))]
            new["frame_idx"] = [seen[i] for i in new["frame_idx"]]
            df = new if df is None else pd.concat([df, new], ignore_index=True)
            done |= set(seen)
            atomic_write_parquet(path, df, metadata={"frames": json.dumps(sorted(done))})
        out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for k in indices:
            rows = df[df["frame_idx"] == int(k)] if df is not None and len(df) else None
            if rows is None or rows.empty:
                out[int(k)] = (np.zeros((0, 4), np.float32), np.zeros(0, np.float32))
            else:
                out[int(k)] = (rows[["x1", "y1", "x2", "y2"]].to_numpy(np.float32), rows["conf"].to_numpy(np.float32))
        return out


def stored_clip_inputs(store: "FrameStore", indices: Sequence[int], boxes: Sequence[Any] | None,
                       confs: Sequence[Any] | None,
                       preprocessor: "ClipPreprocessor") -> tuple["torch.Tensor", "torch.Tensor"]:
    """One sample's model inputs from a frame store: the stored JPEGs at `indices`
    (each distinct frame read and decoded once) with per-frame normalised boxes
    and confidences through `preprocessor` (a `ClipPreprocessor`) ->
    (frames [T, 3, S, S] float32, masks [T, S, S] bool)."""
    data = {k: store.read_bytes(k) for k in dict.fromkeys(int(k) for k in indices)}
    return preprocessor([data[int(k)] for k in indices], boxes, confs)


def _video_inputs(samples: list[Sample], videos: _Videos, preprocessor, cfg: FeatureConfig):
    """(frames [B, T, 3, S, S], masks [B, T, S, S]) for samples of one video file."""
    import torch

    media = samples[0].media
    store = videos.store(media)
    try:
        n = len(store)
        if n == 0:
            raise ValueError("no frames decoded")
        need_native = any(s.frames is not None or s.boxes for s in samples)
        info = videos.probe(media) if need_native else None
        native_fps = info.fps if info is not None else None
        plans = []
        for s in samples:
            first, last = frame_range(s, n, cfg.fps, native_fps)
            plans.append(uniform_indices(first, last, cfg.num_frames))
        det = None
        if cfg.detector and any(s.boxes is None for s in samples):
            det = videos.detections(media, sorted({k for p, s in zip(plans, samples) if s.boxes is None for k in p}))
        xs, ms = [], []
        for s, idx in zip(samples, plans):
            boxes, confs = [], []
            for k in idx:
                if s.boxes is not None:
                    if not native_fps:
                        raise ValueError("person boxes need the video's frame rate")
                    b = box_at(s.boxes, k / cfg.fps * native_fps, tolerance=max(0.5, native_fps / cfg.fps / 2))
                    bx = (np.asarray([b], np.float32) / np.asarray([info.width, info.height] * 2, np.float32)
                          if b is not None else np.zeros((0, 4), np.float32))
                    boxes.append(np.clip(bx, 0, 1))
                    confs.append(None)
                elif det is not None:
                    boxes.append(det[k][0])
                    confs.append(det[k][1])
                else:
                    boxes.append(None)
                    confs.append(None)
            x, m = stored_clip_inputs(store, idx, boxes, confs, preprocessor)
            xs.append(x)
            ms.append(m)
        return torch.stack(xs), torch.stack(ms)
    finally:
        store.close()


def _image_inputs(s: Sample, preprocessor):
    from emotionclip.models.transforms import decode_frame

    with open(s.media, "rb") as f:
        img = decode_frame(f.read())
    boxes = None
    if s.boxes and 0 in s.boxes:
        h, w = int(img.shape[1]), int(img.shape[2])
        boxes = [np.clip(np.asarray([s.boxes[0]], np.float32) / np.asarray([w, h, w, h], np.float32), 0, 1)]
    x, m = preprocessor([img], boxes, [None])
    return x, m  # [1, 3, S, S], [1, S, S]


# -- extraction ----------------------------------------------------------------------

def dataset_preprocess(model_cfg: Any, dataset: str) -> Any:
    """The model's preprocessing with the benchmark's own short-edge resize, where
    the authors' loader used another one (EMOTIC: 224)."""
    import dataclasses

    from emotionclip.evaluation.datasets import NAMES, get_spec

    resize = get_spec(dataset).resize if dataset in NAMES else None
    return dataclasses.replace(model_cfg, resize=resize) if resize else model_cfg


def extract_features(
    model: Any,
    samples: Sequence[Sample],
    *,
    dataset: str,
    split: str,
    cache_dir: str | os.PathLike,
    model_fp: str,
    config: FeatureConfig | None = None,
    batch_size: int = 16,
    device: str = "cpu",
    work_dir: str | os.PathLike | None = None,
    progress: ProgressHook | None = None,
) -> tuple[list[Sample], np.ndarray, FeatureStats]:
    """L2-normalised features for `samples` -> (kept samples, features [N, D], stats).

    Samples whose media is missing, unreadable or undecodable are skipped and
    listed in `stats.skipped` (a bad video never stops the run). `progress` (else
    the hook of `emotionclip.core.progress.use`) counts samples done (cached,
    computed or skipped) out of all of them; frame extraction and detection of a
    video report as nested trackers."""
    from emotionclip.models.transforms import ClipPreprocessor

    cfg = config or FeatureConfig()
    kind = samples[0].kind if samples else "video"
    if cfg.detector and kind == "video" and os.path.isabs(cfg.detector) and not os.path.exists(cfg.detector):
        # a tiny detector is built on first load: build it before its bytes enter the cache key
        from emotionclip.zoo.detector import load_detector

        load_detector(cfg.detector, device)
    prep_cfg = dataset_preprocess(model.preprocess_cfg, dataset)
    prep_fp = cfg.fingerprint(prep_cfg.to_dict(), kind)
    path = cache_file(cache_dir, model_fp, dataset, split, prep_fp)
    stats = FeatureStats(cache_path=str(path))
    cache = read_cache(path)
    work = Path(work_dir) if work_dir else Path(cache_dir) / "work"
    videos = _Videos(work, cfg, device)
    preprocessor = ClipPreprocessor(prep_cfg, train=False)
    model.eval()

    keys = {s.id: sample_key(s) for s in samples}
    todo = [s for s in samples if keys[s.id] not in cache]
    stats.cached = len(samples) - len(todo)
    with track(f"features {dataset}/{split}", len(samples), "samples", hook=progress,
               completed=stats.cached) as bar:
        _compute(model, todo, kind, keys, cache, stats, videos, preprocessor, cfg, batch_size, device, bar)
    if stats.computed:
        write_cache(path, cache)

    kept = [s for s in samples if keys[s.id] in cache]
    feats = np.stack([cache[keys[s.id]] for s in kept]) if kept else np.zeros((0, 0), np.float32)
    return kept, feats, stats


def _compute(model: Any, todo: list[Sample], kind: str, keys: dict[str, str], cache: dict[str, np.ndarray],
             stats: FeatureStats, videos: _Videos, preprocessor: Any, cfg: FeatureConfig, batch_size: int,
             device: str, bar: Tracker) -> None:
    """Features of the `todo` samples into `cache`, batched; `bar` advanced per
    sample encoded or skipped."""
    import torch
    import torch.nn.functional as F

    from emotionclip.core.errors import StageError

    usable = []
    for s in todo:
        why = media_problem(s.media)
        if why:
            stats.skipped.append({"id": s.id, "media": s.media, "reason": why, "error": why})
            bar.advance()
        else:
            usable.append(s)

    def flush(batch_x, batch_m, batch_s):
        if not batch_s:
            return
        t0 = time.perf_counter()
        x = torch.cat(batch_x).to(device)
        m = torch.cat(batch_m).to(device)
        with torch.no_grad(), torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16,
                                             enabled=torch.device(device).type == "cuda"):
            f = model.encode_frames(x, m) if kind == "image" else model.encode_video(x, m)
        f = F.normalize(f.float(), dim=-1).cpu().numpy()
        stats.model_s += time.perf_counter() - t0
        stats.forward_batches += 1
        for s, v in zip(batch_s, f):
            cache[keys[s.id]] = v
        stats.computed += len(batch_s)
        bar.advance(len(batch_s))

    bx: list = []
    bm: list = []
    bs: list[Sample] = []
    groups: dict[str, list[Sample]] = {}
    for s in usable:
        groups.setdefault(s.media, []).append(s)
    for media, group in groups.items():
        t0 = time.perf_counter()
        try:
            if kind == "image":
                parts = [(_image_inputs(s, preprocessor), s) for s in group]
                xs = [p[0][0] for p in parts]
                ms = [p[0][1] for p in parts]
            else:
                x, m = _video_inputs(group, videos, preprocessor, cfg)
                xs, ms = list(x.split(1)), list(m.split(1))
        except Exception as e:  # one bad file: record and go on
            # the type names the cause (ModelNotAvailable: no detector offline) when every sample fails alike
            err = StageError(STAGE, group[0].id, f"{media}: {type(e).__name__}: {e}")
            stats.skipped += [{"id": s.id, "media": media, "reason": str(err), "error": type(e).__name__}
                              for s in group]
            stats.decode_s += time.perf_counter() - t0
            bar.advance(len(group))
            continue
        stats.decode_s += time.perf_counter() - t0
        for s, x, m in zip(group, xs, ms):
            bx.append(x)
            bm.append(m)
            bs.append(s)
            if len(bs) == batch_size:
                flush(bx, bm, bs)
                bx, bm, bs = [], [], []
    flush(bx, bm, bs)
