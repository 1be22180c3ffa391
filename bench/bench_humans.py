"""Benchmark: frames/s of the humans stage (decode the video with
`iter_frames`, or `iter_frames_parallel` with `--decode-workers K` ffmpeg
processes over time segments, + batched `detect_humans`) against the baseline
Ultralytics `predict` on the same frames already decoded in memory, in the same run.

Goal: ratio >= 0.85, i.e. decoding the full-resolution video costs
little because it overlaps inference (background decode thread, ffmpeg in its
own process).

    .venv/bin/python bench/bench_humans.py                      # tiny detector (yolo11n.yaml, random weights), CPU
    .venv/bin/python bench/bench_humans.py --detector yolo11l.yaml --device cuda --half
    python bench/bench_humans.py --detector yolo11l.yaml --device cuda --half --seconds 60 --gop 50 --decode-workers 1 4

`--detector` takes an Ultralytics yaml (random weights of that size, built
here) or a .pt file. Prints one line per repeat and the median ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Offline and nothing written to HOME, before ultralytics is imported.
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
_TMP = Path(tempfile.mkdtemp(prefix="bench-humans-"))
os.environ.setdefault("YOLO_CONFIG_DIR", str(_TMP / "ultralytics"))
os.environ.setdefault("MPLCONFIGDIR", str(_TMP / "mpl"))

import numpy as np  # noqa: E402

from emotionclip.stages.frames import iter_frames, iter_frames_parallel  # noqa: E402
from emotionclip.stages.humans import PAPER_CONF, PAPER_IMGSZ, PAPER_IOU, PERSON_CLASS, detect_humans  # noqa: E402
from emotionclip.zoo.detector import load_detector, resolve_device  # noqa: E402
from emotionclip.zoo.tiny import build_tiny_detector  # noqa: E402
from emotionclip.sample import make_test_video  # noqa: E402


def _detector(spec: str, device: str):
    if spec.endswith((".yaml", ".yml")):
        import torch

        path = _TMP / f"{Path(spec).stem}-random.pt"
        if spec == "yolo11n.yaml":
            build_tiny_detector(path)  # exactly the tiny profile's detector
        else:
            from ultralytics import YOLO

            torch.manual_seed(0)
            YOLO(spec).save(path)
        spec = str(path)
    return load_detector(str(Path(spec).resolve()), device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--detector", default="yolo11n.yaml", help="Ultralytics yaml (random weights) or .pt")
    ap.add_argument("--seconds", type=float, default=8.0, help="video length (frames = 8 * seconds)")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--fps", type=int, default=8, help="sampling fps (paper: 8)")
    ap.add_argument("--imgsz", type=int, default=PAPER_IMGSZ)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--half", action="store_true", help="fp16 (CUDA only)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--decode-workers", type=int, nargs="+", default=[1],
                    help="ffmpeg processes over time segments (iter_frames_parallel; 1: iter_frames); "
                         "several values: one ratio each, in the same run")
    ap.add_argument("--gop", type=int, default=0, help="keyframe interval of the made video (0: x264's default)")
    args = ap.parse_args()

    device = resolve_device(args.device)
    half = args.half and device.startswith("cuda")
    video = _TMP / "bench.mp4"
    if args.gop:  # YouTube-like GOPs and B-frames: segments cut just after keyframes
        from emotionclip.core.ffmpeg import run_ffmpeg

        run_ffmpeg(["-y", "-f", "lavfi", "-i", f"testsrc2=size={args.width}x{args.height}:rate=25:duration={args.seconds}",
                    "-c:v", "libx264", "-preset", "veryfast", "-bf", "2", "-g", str(args.gop), "-pix_fmt", "yuv420p",
                    str(video)])
    else:
        make_test_video(video, duration_s=args.seconds, width=args.width, height=args.height, fps=25,
                        source="testsrc2")
    model = _detector(args.detector, device)
    params = dict(imgsz=args.imgsz, conf=PAPER_CONF, iou=PAPER_IOU, classes=[PERSON_CLASS])

    # Baseline input: the same frames, decoded beforehand and in Ultralytics' BGR order.
    frames_bgr = [np.ascontiguousarray(f[..., ::-1]) for f in iter_frames(video, fps=args.fps)]
    n = len(frames_bgr)
    batches = [frames_bgr[i:i + args.batch] for i in range(0, n, args.batch)]

    def baseline() -> float:
        t = time.perf_counter()
        for b in batches:
            model.predict(b, device=device, batch=len(b), verbose=False, quantize=16 if half else 32, **params)
        return n / (time.perf_counter() - t)

    def ours(workers: int) -> float:
        t = time.perf_counter()
        df = detect_humans(iter_frames_parallel(video, fps=args.fps, workers=workers), model,
                           batch_size=args.batch, device=device, half=half, **params)
        assert df.attrs["n_frames"] == n
        return n / (time.perf_counter() - t)

    baseline()  # warm-up: predictor set-up, allocator, kernels
    print(f"video {args.width}x{args.height}, {n} frames at {args.fps} fps; detector {args.detector}; "
          f"imgsz {args.imgsz}, batch {args.batch}, device {device}{' fp16' if half else ''}; "
          f"torch threads {__import__('torch').get_num_threads()}")
    summary = {"device": device, "frames": n, "width": args.width, "height": args.height, "detector": args.detector}
    for k in args.decode_workers:
        ratios, rates, bases = [], [], []
        for r in range(args.repeats):
            # Alternate the order so drift in machine load hits both sides alike.
            if r % 2:
                o, b = ours(k), baseline()
            else:
                b, o = baseline(), ours(k)
            ratios.append(o / b)
            rates.append(o)
            bases.append(b)
            print(f"decode workers {k}, repeat {r}: baseline predict on in-memory frames {b:7.2f} frames/s | "
                  f"decode + detect_humans {o:7.2f} frames/s | ratio {o / b:.3f}")
        med = statistics.median(ratios)
        print(f"decode workers {k}: median ratio (decode + detect_humans / in-memory predict): {med:.3f} "
              "(goal >= 0.9 on a GPU)")
        summary[f"decode_workers_{k}"] = {"ratio": med, "frames_per_s": statistics.median(rates),
                                          "predict_frames_per_s": statistics.median(bases)}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
