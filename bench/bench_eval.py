"""Feature extraction throughput for the linear probe on CPU: clips/s with the
tiny model (the named baseline) and with a ViT-B/32-size random-init model, and
the share of time spent decoding (frame extraction, reading, preprocessing)
versus in the model. Each model starts from empty caches, so both pay decoding.

    .venv/bin/python bench/bench_eval.py --clips 8 --seconds 3
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from emotionclip.evaluation.datasets import Sample
from emotionclip.evaluation.features import FeatureConfig, extract_features, model_fingerprint
from emotionclip.models import EmotionCLIP
from emotionclip.sample import make_test_video


def run(model, samples, tmp: Path, tag: str, batch_size: int) -> dict:
    t0 = time.perf_counter()
    _, feats, st = extract_features(model, samples, dataset="bench", split=tag, cache_dir=tmp / tag,
                                    model_fp=model_fingerprint(model), config=FeatureConfig(detector=None),
                                    batch_size=batch_size)
    wall = time.perf_counter() - t0
    return {"clips_s": len(samples) / wall, "wall": wall, "decode": st.decode_s, "model": st.model_s,
            "decode_share": st.decode_s / max(st.decode_s + st.model_s, 1e-9), "dim": feats.shape[1]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        samples = []
        for i in range(args.clips):
            p = make_test_video(tmp / "videos" / f"dia{i}_utt0.mp4", duration_s=args.seconds, width=640, height=360,
                                fps=24)
            samples.append(Sample(f"dia{i}_utt0", "test", str(p), "video", i % 7))
        torch.manual_seed(0)
        tiny = EmotionCLIP.from_openclip("emotionclip-tiny-vit").eval()
        b32 = EmotionCLIP.from_openclip("ViT-B-32").eval()
        res = {"tiny (baseline)": run(tiny, samples, tmp, "tiny", args.batch_size),
               "ViT-B/32 random init": run(b32, samples, tmp, "b32", args.batch_size)}
    print(f"{args.clips} clips x {args.seconds:g} s (640x360, 24 fps), 8 frames/clip, CPU, {args.threads} threads")
    for name, r in res.items():
        print(f"{name:22s} {r['clips_s']:6.2f} clips/s  wall {r['wall']:6.2f} s  decode {r['decode']:6.2f} s  "
              f"model {r['model']:6.2f} s  decode share {100 * r['decode_share']:5.1f}%")
    base, big = res["tiny (baseline)"], res["ViT-B/32 random init"]
    print(f"ratio ViT-B/32 / tiny clips/s: {big['clips_s'] / base['clips_s']:.3f}")


if __name__ == "__main__":
    main()
