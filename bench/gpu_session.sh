#!/usr/bin/env bash
# The GPU figures of the README (issue 18), in one go, on a bare offline CUDA machine
# (a lent H200: 16 cores, python3 with torch 2.11+, no ffmpeg, no internet):
#   detection      decode + detect_humans / Ultralytics predict on in-memory frames
#                  (720p, yolo11l, fp16, batch 32), one ffmpeg and K segment decoders  goal >= 0.9
#   training       loader-fed train() / the same step on a GPU-resident batch
#                  (ViT-B/32, 128 clips x 8 frames, bf16, 8 workers, compile auto)       goal >= 0.97
#   MFU            SAP train step at 128 x 8 bf16, eager and torch.compile'd,
#                  FLOPs from FlopCounterMode, compile time amortised                     goal >= 35%
# plus the parallel decoder alone (bench_decode.py). Figures: $OUT/gpu_results.txt (the device
# tool sets OUT; default ./gpu-results), one section per part and a summary of the three ratios.
#
# 1. Here, on a machine with the package registries (once; everything goes to git-ignored .gpu/):
#        bash bench/gpu_session.sh prepare
#    Wheels the project needs beyond the GPU image (no dependencies of theirs: the image has
#    numpy, pandas, pyarrow, PIL, yaml, timm, huggingface_hub, tensorboard), the bundled
#    ffmpeg (imageio-ffmpeg's, xz-compressed) and the training benchmark's corpus (frame stores +
#    manifest, made here because the image has no PyAV for the frames stage's probe).
#    It prints the size: what travels must stay under 64 MiB.
# 2. On the GPU machine, from the repository root, carrying .gpu:
#        bash bench/gpu_session.sh                      # every part, at most TOTAL=540 s (one call, timeout_s 600)
#        PART=decode,humans bash bench/gpu_session.sh   # some parts (humans model train decode)
# On a machine where `make install` works (a GPU box with internet), .venv is used instead and
# nothing is installed: USE_VENV=1 bash bench/gpu_session.sh
# A check of the script itself on a CPU machine, toy sizes: USE_VENV=1 SMALL=1 bash bench/gpu_session.sh
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
GPU=${GPU_DIR:-$ROOT/.gpu}  # what travels to the device machine (carry: .gpu)

if [ "${1:-}" = prepare ]; then
  set -e
  PY=${PY:-.venv/bin/python}
  # git-ignored (as the device tool's notes do it), so that it is never committed
  if [ "$GPU" = "$ROOT/.gpu" ]; then grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude; fi
  mkdir -p "$GPU/whl"
  # cp312 wheels for the image's python; versions = this repository's venv
  ver() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
  pkgs=""
  for p in open_clip_torch ftfy wcwidth pydantic pydantic_core annotated-types typing-inspection \
           typing_extensions ultralytics ultralytics-thop ultralytics-platform; do pkgs="$pkgs $p==$(ver $p)"; done
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$GPU/whl" $pkgs
  ff=$("$PY" -c "import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())")
  [ -s "$GPU/ffmpeg.xz" ] || xz -T0 -9 -c "$ff" > "$GPU/ffmpeg.xz"
  # one 32 s video, 6000 clips: 40 steps of 128 stay inside epoch 0 (an epoch end restarts the
  # workers and checkpoints); small, so that it travels with the ffmpeg binary (64 MiB in all)
  [ -f "$GPU/corpus/manifest.parquet" ] || "$PY" bench/bench_train.py --make-corpus "$GPU/corpus" \
    --videos 1 --seconds 32 --clips 6000
  du -sh "$GPU"/* "$GPU"
  total=$(du -sb "$GPU" | cut -f1)
  [ "$total" -lt $((62 * 1024 * 1024)) ] || echo "WARNING: $total bytes: with the tree, over the 64 MiB one device call carries"
  exit 0
fi

OUT=${OUT:-$ROOT/gpu-results}; mkdir -p "$OUT"
RES=$OUT/gpu_results.txt
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 YOLO_OFFLINE=1 YOLO_CONFIG_DIR=/tmp/yolo \
  YOLO_AUTOINSTALL=false MPLBACKEND=Agg TOKENIZERS_PARALLELISM=false EMOTIONCLIP_CACHE=/tmp/ec-cache
if [ "${USE_VENV:-0}" = 1 ]; then
  make install >/dev/null || exit 1
  PY=$ROOT/.venv/bin/python
else
  PY=python3
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$GPU"/whl/*.whl || exit 1
  mkdir -p /tmp/bin /tmp/shim/imageio_ffmpeg
  [ -x /tmp/bin/ffmpeg ] || { xz -T0 -dc "$GPU/ffmpeg.xz" > /tmp/bin/ffmpeg && chmod +x /tmp/bin/ffmpeg; } || exit 1
  # emotionclip.core.ffmpeg asks imageio_ffmpeg for the binary: point it at the one above
  printf 'def get_ffmpeg_exe():\n    return "/tmp/bin/ffmpeg"\n' > /tmp/shim/imageio_ffmpeg/__init__.py
  export PYTHONPATH=$ROOT:/tmp/site:/tmp/shim
fi
has() { [ "${PART:-all}" = all ] || [[ ",$PART," == *",$1,"* ]]; }
section() { printf '\n== %s: %s\n' "$1" "$2" | tee -a "$RES"; }
# The whole run stays inside one device call (600 s): TOTAL seconds for the parts, each also
# under its own limit; a part that no longer fits is skipped (and says so).
TOTAL=${TOTAL:-540}
T0=$SECONDS
# one part: bounded in time, its output into the results file (and its last JSON line into the summary)
run() {
  local name=$1 limit=$2; shift 2
  local left=$((TOTAL - (SECONDS - T0)))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 30 ]; then section "$name" "skipped: ${left}s left of TOTAL=${TOTAL}s"; return; fi
  section "$name" "(${limit}s at most) $*"
  timeout "$limit" "$PY" "$@" 2>&1 | grep -v -e '^WARNING' -e 'UserWarning' | tee "$OUT/$name.log" | tee -a "$RES"
  grep '^{' "$OUT/$name.log" | tail -1 > "$OUT/$name.json" || true
}

: > "$RES"
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc
  "$PY" -c "import torch, open_clip; print('torch', torch.__version__, 'open_clip', open_clip.__version__)"
  git -C "$ROOT" log -1 --format='commit %h %s' 2>/dev/null; } 2>&1 | tee -a "$RES"

if [ "${SMALL:-0}" = 1 ]; then
  # a check of this script on a CPU machine: the same parts at toy sizes (the figures mean nothing)
  CORPUS=/tmp/gpu-session-corpus
  [ -f $CORPUS/manifest.parquet ] || "$PY" bench/bench_train.py --make-corpus $CORPUS --videos 1 --seconds 4 \
    --clips 40 >/dev/null
  DECODE=(--seconds 6 --width 320 --height 240 --workers 2 --repeats 1)
  HUMANS=(--device cpu --batch 8 --seconds 3 --width 320 --height 240 --gop 8 --repeats 1 --decode-workers 1 2)
  MODEL=(--model emotionclip-tiny-vit --device cpu --batch 2 --frames 2 --iters 1 --warmup 1 --modes sap
         --compile --compile-backend aot_eager)
  TRAIN=(--corpus $CORPUS --model emotionclip-tiny-vit --device cpu --precision fp32 --batch 4 --workers 1
         --steps 6 --warmup 2 --log-every 2 --compile off)
else
  CORPUS=$GPU/corpus
  # with the venv (PyAV for the frames stage's probe) the corpus can be made here
  [ -f "$CORPUS/manifest.parquet" ] || [ "${USE_VENV:-0}" != 1 ] || "$PY" bench/bench_train.py --make-corpus "$CORPUS" \
    --videos 1 --seconds 32 --clips 6000 >/dev/null
  # the parallel segment decoder alone: 720p, 60 s, K = 2, 4, 8 (frames checked identical)
  DECODE=(--seconds 60 --workers 2 4 8 --repeats 2)
  # detection: one decoder (today) and 4 (the catalog's auto on 16 cores), same video, same run
  HUMANS=(--detector yolo11l.yaml --device cuda --half --batch 32 --seconds 60 --gop 50 --repeats 3
          --decode-workers 1 4)
  # MFU: SAP eager vs compiled (SAAM for its overhead), 128 x 8 bf16
  MODEL=(--device cuda --batch 128 --bf16 --iters 5 --warmup 2 --modes sap,saam --compile)
  # training: loader-fed train() vs resident, compile auto (the TrainConfig default: on for CUDA)
  TRAIN=(--corpus "$CORPUS" --device cuda --batch 128 --workers 8 --steps 40 --warmup 10 --log-every 5
         --compile auto)
fi
# the three ratios first, the decoder alone last
has humans && run humans 150 bench/bench_humans.py "${HUMANS[@]}"
has model && run model 200 bench/bench_model.py "${MODEL[@]}"
has train && run train 240 bench/bench_train.py "${TRAIN[@]}"
has decode && run decode 90 bench/bench_decode.py "${DECODE[@]}"

section summary "the three ratios of issue 18"
"$PY" - "$OUT" <<'EOF' 2>&1 | tee -a "$RES"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
def load(name):
    p = out / f"{name}.json"
    try:
        return json.loads(p.read_text()) if p.exists() and p.stat().st_size else None
    except ValueError:
        return None
d, h, m, t = (load(n) for n in ("decode", "humans", "model", "train"))
if d:
    print("decode speed-up vs one ffmpeg:", {k: round(v, 2) for k, v in d.items() if k.endswith("speedup")})
if h:
    for k, v in h.items():
        if k.startswith("decode_workers_"):
            print(f"detection ratio, {k.split('_')[-1]} decoder(s): {v['ratio']:.3f} ({v['frames_per_s']:.0f} vs "
                  f"{v['predict_frames_per_s']:.0f} frames/s)   goal >= 0.9")
if t:
    for r in t["loader_fed"]:
        print(f"training loader-fed / resident ({r['workers']} workers, compile {t['compile']}): {r['ratio']:.3f} "
              f"({r['clips_per_s']:.0f} vs {t['resident_clips_per_s']:.0f} clips/s, first step {r['first_step_s'] or 0:.1f} s)"
              "   goal >= 0.97")
        for gpus in (1, 8):
            print(f"  paper's run, 6.25M clip-steps on {gpus} GPU(s): {6.25e6 / r['clips_per_s'] / gpus / 3600:.1f} h "
                  "(8: if it scales linearly)")
if m:
    print(f"MFU eager {m.get('eager_mfu') or 0:.1%}, compiled {m.get('compiled_mfu') or 0:.1%} "
          f"({m['tflop_per_step']:.2f} TFLOP/step; compile {m.get('compile_s') or 0:.0f} s)   goal >= 35%")
if h and "decode_workers_4" in h:
    fps = h["decode_workers_4"]["frames_per_s"]
    print(f"detection, 78M frames (the paper's 3,613 videos) on one 8-GPU node: {78e6 / fps / 8 / 3600:.1f} h "
          f"at {fps:.0f} frames/s per GPU (if the node's cores keep 8 decoders fed)")
EOF
echo "results: $RES"
