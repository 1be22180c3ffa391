"""Loader throughput against only decoding the same JPEG frames.

    .venv/bin/python bench/bench_loader.py [--videos 4] [--clips 96] [--workers 2] [--repeats 3]

Builds a small corpus (ffmpeg test videos -> frame stores -> a manifest), then,
in the same run and with the same number of DataLoader worker processes:
  baseline: a dataset that reads and decodes (same JPEG decoder) exactly the
            frames the training loader picks for each clip, nothing else;
            FrameStore.get_many (PIL) is printed as a second reference;
  loader:   ClipDataset as the training loop uses it (sampling, per-frame
            random crop, subject-mask rectangles, tokenization, batches built in
            the workers by __getitems__ + collate_clips into shared-memory
            buffers each worker reuses once the main process drops a batch; the
            masks are rasterised on the training device, not here).
Prints clips/s of both and loader/baseline (goal >= 0.8). Best of `repeats`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from emotionclip.core.frame_store import FrameStore  # noqa: E402
from emotionclip.models import TINY_MODEL_NAME, get_tokenizer  # noqa: E402
from emotionclip.models.transforms import decode_frame  # noqa: E402
from emotionclip.training.dataset import ClipDataset, collate_clips, sample_frame_indices  # noqa: E402
from emotionclip.training.sampler import ResumableSampler  # noqa: E402
from training_data import make_corpus  # noqa: E402


class DecodePIL(Dataset):
    """Reference only: the same frames through FrameStore.get_many (PIL images)."""

    def __init__(self, ds: ClipDataset):
        self.ds = ds
        self.stores: dict[str, FrameStore] = {}

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> torch.Tensor:
        d = self.ds
        idx = sample_frame_indices(int(d.frame_start[i]), int(d.frame_end[i]), d.num_frames, True, d._rng(i))
        vid = d.video_ids[i]
        if vid not in self.stores:
            self.stores[vid] = FrameStore(d.frames_location(vid))
        images = self.stores[vid].get_many(np.unique(idx).tolist())
        return torch.tensor(sum(im.size[0] for im in images))


class DecodeOnly(Dataset):
    """The same frames as ClipDataset would read for each clip, decoded, nothing more."""

    def __init__(self, ds: ClipDataset):
        self.ds = ds
        self.stores: dict[str, FrameStore] = {}

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> torch.Tensor:
        d = self.ds
        idx = sample_frame_indices(int(d.frame_start[i]), int(d.frame_end[i]), d.num_frames, True, d._rng(i))
        vid = d.video_ids[i]
        if vid not in self.stores:
            self.stores[vid] = FrameStore(d.frames_location(vid))
        store = self.stores[vid]
        images = [decode_frame(store.read_bytes(int(k))) for k in np.unique(idx)]
        return torch.tensor(sum(int(im.shape[-1]) for im in images))


def _rate(dataset: Dataset, n: int, workers: int, batch: int, collate_fn=None, pin_memory: bool = False,
          device: str | None = None) -> float:
    """clips/s out of the loader; with `device`, of batches ready on it (DevicePrefetcher:
    uploaded, normalised, masks rasterised, as the training loop takes them)."""
    sampler = ResumableSampler(len(dataset), seed=0)
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers, collate_fn=collate_fn,
                        prefetch_factor=4 if workers else None, drop_last=True, pin_memory=pin_memory)
    it = iter(loader)
    if device is not None:
        from emotionclip.training.prefetch import DevicePrefetcher

        it = DevicePrefetcher(it, device, (0.48, 0.46, 0.41), (0.27, 0.26, 0.28))
    next(it)  # worker start-up is not throughput
    t0 = time.perf_counter()
    done = 0
    for _ in it:
        done += batch
    if device is not None and device.startswith("cuda"):
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return done / dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=4)
    ap.add_argument("--clips", type=int, default=96, help="clips per video")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pin-memory", action="store_true",
                    help="also time the loader with the DataLoader's pinned-memory thread (as training on a GPU uses it)")
    ap.add_argument("--device", help="also time batches made ready on this device (DevicePrefetcher), e.g. cuda")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cat, df = make_corpus(Path(tmp), n_videos=args.videos, clips_per_video=args.clips, duration_s=12.0)
        ds = ClipDataset(df, lambda v: cat.artifact("frames", v), get_tokenizer(TINY_MODEL_NAME), train=True)
        base = DecodeOnly(ds)
        n = len(ds)
        print(f"{n} clips x 8 frames, frames {FrameStore(cat.artifact('frames', 'vid0')).size}, "
              f"{args.workers} workers, batch {args.batch}, torch threads {torch.get_num_threads()}")
        pil = DecodePIL(ds)
        b_best = l_best = p_best = 0.0
        ratios = []
        for r in range(args.repeats):  # interleaved: machine load drifts over time
            b = _rate(base, n, args.workers, args.batch)
            ld = _rate(ds, n, args.workers, args.batch, collate_clips)  # as the training loop builds it
            p = _rate(pil, n, args.workers, args.batch)
            pinned = f"   loader + pin_memory {_rate(ds, n, args.workers, args.batch, collate_clips, True):7.1f}" \
                if args.pin_memory else ""
            if args.device:
                on_dev = _rate(ds, n, args.workers, args.batch, collate_clips, args.device.startswith("cuda"), args.device)
                pinned += f"   on {args.device} {on_dev:7.1f}"
            print(f"  repeat {r}: decode-only {b:7.1f} clips/s   loader {ld:7.1f} clips/s   ratio {ld / b:.3f}"
                  f"   (PIL decode-only {p:7.1f}){pinned}")
            b_best, l_best, p_best = max(b_best, b), max(l_best, ld), max(p_best, p)
            ratios.append(ld / b)
        print(f"baseline (decode only, same frames and decoder, {args.workers} workers): {b_best:.1f} clips/s")
        print(f"reference (decode only via FrameStore.get_many / PIL):        {p_best:.1f} clips/s")
        print(f"ClipDataset loader ({args.workers} workers):                           {l_best:.1f} clips/s")
        print(f"ratio loader / decode-only: {l_best / b_best:.3f}  (goal >= 0.8); "
              f"median of the per-repeat ratios {float(np.median(ratios)):.3f} (steadier on a loaded machine)")


if __name__ == "__main__":
    main()
