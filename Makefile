# EmotionCLIP: `make demo` runs build-tv-dataset end to end on the bundled
# sample (tiny models, offline); `make test` runs the whole test suite.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Offline, nothing written to HOME (docs/design.md section 7).
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export YOLO_OFFLINE ?= 1
export YOLO_AUTOINSTALL := false
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export TOKENIZERS_PARALLELISM := false
export MPLBACKEND := Agg

.PHONY: install test test-fast demo server worker deploy stop bench bench-gpu clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

PORT ?= 4200
LOCAL := $(PY) -m deployments.local
PREFECT_CLIENT := PREFECT_HOME=$(CURDIR)/.prefect PREFECT_API_URL=http://127.0.0.1:$(PORT)/api $(VENV)/bin/prefect

# Server + deployments + worker, then the sample deployment end to end.
demo: $(STAMP)
	$(LOCAL) up --port $(PORT)
	$(PREFECT_CLIENT) deployment run build-tv-dataset/sample-tiny --watch
	$(LOCAL) where --port $(PORT)

server: $(STAMP)
	$(LOCAL) server --port $(PORT)

deploy: $(STAMP)
	$(LOCAL) deploy --port $(PORT)

worker: $(STAMP)
	$(LOCAL) worker --port $(PORT)

stop:
	$(LOCAL) down

bench: $(STAMP)
	for b in bench/bench_*.py; do [ $$b = bench/bench_train.py ] && continue; echo "== $$b"; $(PY) $$b || exit 1; done

# on a machine with a GPU: the figures the README marks GPU
bench-gpu: $(STAMP)
	$(PY) bench/bench_model.py --device cuda --batch 128 --bf16 --iters 5 --warmup 2
	$(PY) bench/bench_train.py --device cuda --batch 128 --workers 8 --steps 40 --warmup 10
	$(PY) bench/bench_humans.py --detector yolo11l.yaml --device cuda --half --batch 32 --seconds 16

clean:
	rm -rf $(VENV) .cache .prefect data models
