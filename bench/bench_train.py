"""Pre-training throughput on one GPU: the real loop fed by the real loader,
against the same training steps on one batch already on the GPU.

    .venv/bin/python bench/bench_train.py --make-corpus bench-corpus      # once, on any machine (needs ffmpeg)
    python bench/bench_train.py --corpus bench-corpus --device cuda --batch 128 --workers 8

Baseline ("resident"): `EmotionCLIP` ViT-B/32 (random init, SAP, transformer
head), bf16 autocast, SentimentGuidedLoss + backward + AdamW on a batch made once
by the loader and kept on the GPU: the model-bound ceiling.
Loader-fed: `emotionclip.training.train` itself (DataLoader workers decoding the
corpus' frame stores, the next batch uploaded, normalised and its masks
rasterised on a side stream during each step by `DevicePrefetcher`, logging, no
checkpoints in the timed window), clips/s and data-wait share read from its metrics.jsonl after the
warm-up steps. Prints loader-fed / resident; 1.0 means the GPU never waits for data.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

MANIFEST = "manifest.parquet"


def make_corpus_dir(root: Path, videos: int, seconds: float, clips: int) -> Path:
    from training_data import make_corpus, write_manifest  # tests/training_data.py: ffmpeg-made videos

    _, df = make_corpus(root, n_videos=videos, clips_per_video=clips, duration_s=seconds)
    write_manifest(df, root / MANIFEST)
    for src in (root / "src").glob("*.mp4"):  # only the frame stores are read in training
        src.unlink()
    return root / MANIFEST


def train_config(args: argparse.Namespace, corpus: Path, out: Path, steps: int):
    from emotionclip.training import make_config

    return make_config("paper", **dict(
        manifests=str(corpus / MANIFEST), data_root=str(corpus), profile="tiny", out_dir=str(out),
        clip_model=args.model, batch_size=args.batch, num_workers=args.workers, precision=args.precision,
        device=args.device, max_steps=steps, log_every_steps=args.log_every, ckpt_every_steps=10**9,
        epochs=1000, warmup_steps=10, compile={"on": True, "off": False, "auto": "auto"}[args.compile],
        pin_memory=not args.no_pin,
    ))


def resident_rate(config, iters: int, warmup: int) -> tuple[float, float]:
    """clips/s and s/step of the training computation on one GPU-resident batch."""
    from emotionclip.models import SentimentGuidedLoss
    from emotionclip.models.transforms import normalize_frames
    from emotionclip.training import build_model
    from emotionclip.training.dataset import batch_masks, collate_clips
    from emotionclip.training.loop import build_dataset, load_catalog_for
    from emotionclip.training.config import compile_enabled
    from emotionclip.training.optim import build_optimizer

    dev = torch.device(config.device)
    torch.manual_seed(0)
    catalog = load_catalog_for(config)
    model = build_model(config, catalog, dev).train()
    ds = build_dataset(config, catalog, model)
    batch = collate_clips(ds.__getitems__(list(range(config.batch_size))))
    mean, std = model.preprocess_cfg.mean, model.preprocess_cfg.std
    frames = normalize_frames(batch["frames"].to(dev), mean, std).contiguous()
    masks = batch_masks(batch, dev).float()
    tokens, sentiment = batch["tokens"].to(dev), batch["sentiment"].to(dev).float()
    opt = build_optimizer(model, config)
    loss_fn = SentimentGuidedLoss(beta=config.beta, kl_direction=config.kl_direction)
    engine = torch.compile(model) if compile_enabled(config.compile, dev) else model

    cpu: list[float] = []

    def step() -> float:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0, c0 = time.perf_counter(), time.thread_time()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=config.precision == "bf16"):
            v, t, scale = engine(frames, masks, tokens)
        loss = loss_fn(v, t, sentiment, scale.float())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        c1 = time.thread_time()  # before the sync: the main thread's own work (kernel launches)
        float(loss.detach())  # the loop syncs on the loss every step too
        cpu.append(c1 - c0)
        return time.perf_counter() - t0

    first = step()  # with torch.compile: the compilation
    for _ in range(warmup - 1):
        step()
    cpu.clear()
    times = [step() for _ in range(iters)]
    s = statistics.median(times)
    print(f"resident step: main-thread CPU {statistics.median(cpu) * 1000:.0f} ms of {s * 1000:.0f} ms wall "
          f"(near the wall time would mean a step bound by kernel launches); first step {first:.1f} s")
    del model, opt, engine
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return config.batch_size / s, s


def loader_fed_rate(config, warmup_steps: int) -> tuple[float, float, int, float | None]:
    """clips/s and data-wait share of `train` after `warmup_steps` (from metrics.jsonl),
    and its first step's time (compilation included, `first_step_s`)."""
    from emotionclip.training import train
    from emotionclip.training.metrics import METRICS_FILE, read_jsonl

    from emotionclip.core.manifest_store import read_manifests

    per_epoch = len(read_manifests(config.manifests)) // config.batch_size
    if config.max_steps >= per_epoch:
        raise SystemExit(f"{config.max_steps} steps cross an epoch end ({per_epoch} steps per epoch): "
                         "make the corpus with more --clips")
    train(config)
    logged = read_jsonl(Path(config.out_dir) / METRICS_FILE)
    first = next((r["first_step_s"] for r in logged if "first_step_s" in r), None)
    rows = [r for r in logged if r["step"] > warmup_steps]
    # each row covers the log_every steps before it: weight by steps, not rows
    secs = sum(config.log_every_steps * config.batch_size / r["clips_per_s"] for r in rows)
    clips = len(rows) * config.log_every_steps * config.batch_size
    wait = sum(r["data_wait_frac"] * config.log_every_steps * config.batch_size / r["clips_per_s"] for r in rows)
    return clips / secs, wait / secs, len(rows) * config.log_every_steps, first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--make-corpus", type=Path, help="build a corpus folder here and exit")
    ap.add_argument("--videos", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=40.0)
    # many clips per video (they share frames): the timed steps must stay inside epoch 0,
    # an epoch end restarts the workers and writes a checkpoint
    ap.add_argument("--clips", type=int, default=2000, help="clips per video")
    ap.add_argument("--corpus", type=Path, help="a folder made by --make-corpus (default: a temporary one)")
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--workers", type=int, nargs="*", default=[8],
                    help="one loader-fed run per value (none: the resident baseline only)")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=25, help="loader-fed steps, warm-up included")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--log-every", type=int, default=5)
    ap.add_argument("--compile", nargs="?", const="on", default="off", choices=["on", "off", "auto"],
                    help="torch.compile both sides (bare --compile: on; auto: the TrainConfig default, on for CUDA)")
    ap.add_argument("--no-pin", action="store_true", help="loader-fed runs without pinned host memory")
    args = ap.parse_args()

    if args.make_corpus:
        args.make_corpus.mkdir(parents=True, exist_ok=True)
        print("corpus manifest:", make_corpus_dir(args.make_corpus, args.videos, args.seconds, args.clips))
        return
    with tempfile.TemporaryDirectory() as tmp:
        corpus = args.corpus or make_corpus_dir(Path(tmp) / "corpus", args.videos, args.seconds, args.clips).parent
        name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
        base_cfg = train_config(argparse.Namespace(**{**vars(args), "workers": (args.workers or [0])[0]}), corpus,
                                Path(tmp) / "resident", args.steps)
        rate, s = resident_rate(base_cfg, iters=10, warmup=args.warmup)
        print(f"{name}; {args.model} random init, SAP + transformer head, {args.batch} clips x 8 frames at 224, "
              f"{args.precision}, compile {args.compile}{', no pin_memory' if args.no_pin else ''}")
        print(f"baseline, resident batch on the GPU:  {rate:8.1f} clips/s  ({s * 1000:.0f} ms/step)")
        results = {"device": name, "batch": args.batch, "compile": args.compile, "resident_clips_per_s": rate,
                   "loader_fed": []}
        for w in args.workers:
            cfg = train_config(argparse.Namespace(**{**vars(args), "workers": w}), corpus, Path(tmp) / f"fed{w}",
                               args.steps)
            fed, wait, n, first = loader_fed_rate(cfg, args.warmup)
            print(f"loader-fed train(), {w:2d} workers:     {fed:8.1f} clips/s  data wait {wait:.1%} of the time "
                  f"({n} steps after {args.warmup} warm-up)   ratio loader-fed / resident {fed / rate:.3f}"
                  + (f"; first step {first:.1f} s" if first is not None else ""))
            results["loader_fed"].append({"workers": w, "clips_per_s": fed, "data_wait_frac": wait,
                                          "ratio": fed / rate, "first_step_s": first})
        print(json.dumps(results))


if __name__ == "__main__":
    main()
