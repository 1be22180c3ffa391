# EmotionCLIP: `make demo` runs the mission on the bundled sample (tiny models,
# offline) as one deployment run, build-train-evaluate/sample: build-tv-dataset ->
# pretrain -> linear-probe, each a run linked to it on a local Prefect server;
# `make test` runs the whole test suite.
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

.PHONY: install test test-fast demo where server worker deploy stop bench bench-gpu clean

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
# the local server's PREFECT_HOME (its SQLite database, pid files and logs)
PREFECT_DIR ?= $(CURDIR)/.prefect
LOCAL := $(PY) -m deployments.local
PREFECT_CLIENT := PREFECT_HOME=$(PREFECT_DIR) PREFECT_API_URL=http://127.0.0.1:$(PORT)/api $(VENV)/bin/prefect

# Server + deployments + worker, then one run of deployments.definitions.DEMO
# (build -> pretrain -> linear-probe, each a linked run), watched to its end: a run
# that does not complete stops the demo (prefect exits 1).
demo: $(STAMP)
	$(LOCAL) up --home $(PREFECT_DIR) --port $(PORT)
	$(PREFECT_CLIENT) deployment run build-train-evaluate/sample --watch
	$(LOCAL) where --port $(PORT)

# where the demo's manifests, dataset card, checkpoint and results table are
where: $(STAMP)
	$(LOCAL) where --port $(PORT)

server: $(STAMP)
	$(LOCAL) server --home $(PREFECT_DIR) --port $(PORT)

deploy: $(STAMP)
	$(LOCAL) deploy --home $(PREFECT_DIR) --port $(PORT)

worker: $(STAMP)
	$(LOCAL) worker --home $(PREFECT_DIR) --port $(PORT)

stop:
	$(LOCAL) down --home $(PREFECT_DIR)

bench: $(STAMP)
	for b in bench/bench_*.py; do [ $$b = bench/bench_train.py ] && continue; echo "== $$b"; $(PY) $$b || exit 1; done

# on a machine with a GPU: the figures the README marks GPU
# (issue 18's three ratios, the decoder's speed-up and the projections in one run; OUT= for the results)
bench-gpu: $(STAMP)
	USE_VENV=1 bash bench/gpu_session.sh

clean:
	rm -rf $(VENV) .cache .prefect data models
