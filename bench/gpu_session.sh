#!/usr/bin/env bash
# The GPU measurements of the README (marked GPU), on a bare CUDA machine whose
# Python already has torch (2.11+ was used) but not this project's other
# packages, nor ffmpeg, nor internet. Run from the repository root there:
#     PART=model,train,humans bash bench/gpu_session.sh        (default: all)
# Prepare on a machine with the package registries (both folders are git-ignored
# via .git/info/exclude; together about 55 MB):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 -d .whl open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 \
#     pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
#     typing_extensions==4.16.0 ultralytics==8.4.190 ultralytics-thop==2.2.3 ultralytics-platform==0.1.99
#   mkdir -p .gpu && xz -6 -c .venv/lib/python3.11/site-packages/imageio_ffmpeg/binaries/ffmpeg-* > .gpu/ffmpeg.xz
# (imageio-ffmpeg's own wheel is 68 MB; the static ffmpeg inside it compresses to 48 MB).
# Results are written to $OUT (default: ./gpu-results). The README's GPU figures came from this
# script's steps, run from a snapshot of the tree (the same commands, one part per call).
set -u
OUT=${OUT:-$PWD/gpu-results}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 YOLO_OFFLINE=1 YOLO_CONFIG_DIR=/tmp/yolo \
  YOLO_AUTOINSTALL=false MPLBACKEND=Agg EMOTIONCLIP_CACHE=/tmp/ec-cache
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
mkdir -p /tmp/bin /tmp/shim/imageio_ffmpeg
xz -T4 -dc .gpu/ffmpeg.xz > /tmp/bin/ffmpeg && chmod +x /tmp/bin/ffmpeg && export PATH=/tmp/bin:$PATH
# emotionclip.ffmpeg asks imageio_ffmpeg for the binary: point it at the one above
printf 'import shutil\n\n\ndef get_ffmpeg_exe():\n    return shutil.which("ffmpeg")\n' > /tmp/shim/imageio_ffmpeg/__init__.py
export PYTHONPATH=$PWD:/tmp/site:/tmp/shim
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, open_clip; print('torch', torch.__version__, 'open_clip', open_clip.__version__)"
has() { [ "${PART:-all}" = all ] || [[ ",$PART," == *",$1,"* ]]; }
if has model; then
  timeout 150 python3 bench/bench_model.py --device cuda --batch 128 --bf16 --iters 5 --warmup 2 2>&1 | tee "$OUT/bench_model.txt"
fi
if has train || has compile; then
  [ -f /tmp/corpus/manifest.parquet ] || timeout 60 python3 bench/bench_train.py --make-corpus /tmp/corpus | tail -1
fi
if has train; then
  timeout 200 python3 bench/bench_train.py --corpus /tmp/corpus --device cuda --batch 128 --workers 8 --steps 40 \
    --warmup 10 2>&1 | grep -v "^WARNING" | tee "$OUT/bench_train.txt"
fi
if has compile; then
  timeout 200 python3 bench/bench_train.py --corpus /tmp/corpus --device cuda --batch 128 --compile --workers 2>&1 \
    | grep -v "^WARNING" | tee "$OUT/bench_compile.txt"
fi
if has loader; then
  timeout 150 python3 bench/bench_loader.py --workers 8 --batch 128 --videos 4 --clips 256 --repeats 1 --pin-memory 2>&1 \
    | tee "$OUT/bench_loader.txt"
fi
if has humans; then
  timeout 150 python3 bench/bench_humans.py --detector yolo11l.yaml --device cuda --half --batch 32 --seconds 16 2>&1 \
    | tee "$OUT/bench_humans.txt"
fi
if has tests; then
  timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_training_dataset.py 2>&1 | tail -3 | tee "$OUT/tests.txt"
fi
