"""Training-step time of EmotionCLIP at ViT-B/32 size: SAP vs vanilla vs SAAM.

One step = forward (video + text towers) + SNCE loss + backward + AdamW step,
on random-init OpenCLIP ViT-B-32 (no download). Baseline: `vanilla` (the plain
OpenCLIP image tower) measured in the same run, and SAAM is also printed against
SAP. The three modes share one model (built as SAAM, so it has the learnable HMN
token; the other modes leave it unused) and one optimizer, and are interleaved
step by step so machine noise hits all alike.
On CPU the ratios use the process's CPU time (all threads), which other processes
on a shared machine disturb far less than wall time; both are printed.

    .venv/bin/python bench/bench_model.py --threads 1      # CPU, 2 clips x 8 frames (1 thread: steadiest on a shared machine)
    .venv/bin/python bench/bench_model.py --device cuda --batch 128 --bf16   # + clips/s, MFU
    .venv/bin/python bench/bench_model.py --device cuda --batch 128 --bf16 --compile   # + SAP compiled: MFU eager vs compiled

With `--compile`, SAP is also timed through `torch.compile(model)` (as training runs
it on a GPU by default): the first call's time (compilation) is reported, and
amortised over the paper's pre-training run (6.25M clip-steps = 48,828 steps of 128).
FLOPs come from `FlopCounterMode` on the eager step (compilation does not change
the arithmetic), MFU = FLOPs / step time / the GPU's dense bf16 peak.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from emotionclip.models import EmotionCLIP, SentimentGuidedLoss

MODES = ("vanilla", "sap", "saam")
# Dense bf16 tensor-core peaks (vendor datasheets), for the MFU estimate.
PEAK_BF16_TFLOPS = {"H100 SXM": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "A100": 312.0}


def _peak_tflops(name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in name:
            return value
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--batch", type=int, default=2, help="clips per step")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--iters", type=int, default=3, help="timed steps per mode")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    ap.add_argument("--compile", action="store_true", help="also time SAP through torch.compile")
    ap.add_argument("--compile-backend", default="inductor", help="aot_eager: trace only (a quick CPU check)")
    ap.add_argument("--modes", default=",".join(MODES), help="eager modes to time (comma-separated)")
    args = ap.parse_args()
    modes = tuple(m for m in args.modes.split(",") if m)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)

    torch.manual_seed(0)
    model = EmotionCLIP.from_openclip(args.model, subject_mode="saam", max_frames=args.frames, device=dev).train()
    criterion = SentimentGuidedLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.2)
    b, t = args.batch, args.frames
    video = torch.randn(b, t, 3, 224, 224, device=dev)
    masks = torch.zeros(b, t, 224, 224, device=dev)
    masks[:, :, 40:200, 60:150] = 1  # a person box over ~30% of the frame
    tokens = model.tokenize([f"sentence number {i} said with feeling!" for i in range(b)]).to(dev)
    sentiment = torch.randn(b, 7, device=dev)

    def step(mode: str, engine: torch.nn.Module = model) -> tuple[float, float]:
        model.config.subject_mode = mode
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.bf16):
            v, tx, scale = engine(video, masks, tokens)
            loss = criterion(v, tx, sentiment, scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0, time.process_time() - c0

    for _ in range(args.warmup):
        for mode in modes:
            step(mode)
    times: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(args.iters):
        for mode in modes:
            wall, c = step(mode)
            times[mode].append(wall)
            cpu[mode].append(c)
    compile_s = None
    if args.compile:  # SAP only: a compiled graph is specialised to one subject mode
        compiled = torch.compile(model, backend=args.compile_backend)
        compile_s, _ = step("sap", compiled)  # the first call compiles (forward and backward graphs)
        for _ in range(max(0, args.warmup - 1)):
            step("sap", compiled)
        times["sap-compiled"] = []
        cpu["sap-compiled"] = []
        for _ in range(args.iters):
            wall, c = step("sap", compiled)
            times["sap-compiled"].append(wall)
            cpu["sap-compiled"].append(c)

    med = {m: statistics.median(v) for m, v in times.items()}
    med_cpu = {m: statistics.median(v) for m, v in cpu.items()}
    basis = med_cpu if dev.type == "cpu" else med
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"EmotionCLIP train step, {args.model} random init, {b} clips x {t} frames, "
          f"{'bf16 autocast' if args.bf16 else 'fp32'}, {name}, median of {args.iters} steps, fused attention")
    for m in times:
        print(f"  {m:8s} wall {med[m] * 1000:9.1f} ms/step  cpu {med_cpu[m] * 1000:9.1f} ms/step  "
              f"{b / med[m]:8.2f} clips/s  (wall per step: {', '.join(f'{x * 1000:.0f}' for x in times[m])} ms)")
    kind = "CPU time" if dev.type == "cpu" else "wall time"
    if {"sap", "vanilla"} <= set(modes):
        print(f"ratio sap/vanilla  = {basis['sap'] / basis['vanilla']:.3f}  ({kind}; baseline: vanilla)")
    if {"saam", "vanilla"} <= set(modes):
        print(f"ratio saam/vanilla = {basis['saam'] / basis['vanilla']:.3f}  ({kind}; baseline: vanilla)")
    if {"saam", "sap"} <= set(modes):
        print(f"ratio saam/sap     = {basis['saam'] / basis['sap']:.3f}  ({kind}; baseline: sap)")
    if compile_s is not None:
        steady = med["sap-compiled"]
        paper_steps = 6_250_000 / b  # the paper's 250k clips x 25 epochs, in steps of this batch
        print(f"compiled sap: first call {compile_s:.1f} s (compilation), then {steady * 1000:.1f} ms/step = "
              f"{med.get('sap', steady) / steady:.3f}x eager; compilation = {compile_s / (paper_steps * steady):.2%} "
              f"of the paper's {paper_steps:,.0f} steps")

    if (dev.type == "cuda" or args.compile) and "sap" in med:
        from torch.utils.flop_counter import FlopCounterMode

        model.config.subject_mode = "sap"
        with FlopCounterMode(display=False) as fc:
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.bf16):
                v, tx, scale = model(video, masks, tokens)
                loss = criterion(v, tx, sentiment, scale)
            loss.backward()
        flops = fc.get_total_flops()
        peak = _peak_tflops(name)
        achieved = flops / med["sap"] / 1e12
        mfu = f"{achieved / peak:.1%} of {peak:.0f} TFLOP/s" if peak else "unknown peak"
        print(f"sap: {flops / 1e12:.2f} TFLOP/step, {achieved:.1f} TFLOP/s achieved, MFU {mfu}")
        result = {"device": name, "batch": b, "frames": t, "tflop_per_step": flops / 1e12,
                  "eager_s_per_step": med["sap"], "eager_mfu": achieved / peak if peak else None}
        if compile_s is not None:
            c_achieved = flops / med["sap-compiled"] / 1e12
            print(f"sap compiled: {c_achieved:.1f} TFLOP/s achieved, MFU "
                  f"{f'{c_achieved / peak:.1%} of {peak:.0f} TFLOP/s' if peak else 'unknown peak'} (eager {mfu})")
            result.update(compiled_s_per_step=med["sap-compiled"], compile_s=compile_s,
                          compiled_mfu=c_achieved / peak if peak else None)
        print(json.dumps(result))


if __name__ == "__main__":
    main()
