# lk_segment: `make help` lists the targets. Every target installs on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_SPEC ?= torch==2.13.0
VARIANT ?= 3x3
ARGS ?=
PORT ?= 5000
HOST ?= 127.0.0.1
RUN ?=
RESUME ?=
CKPT ?=
INPUT ?=
OUT ?= predictions
DEVICE ?= auto
TTA ?=
ERF_OUT ?= erf
BENCH_OUT ?= bench.json
VARIANTS ?= 3x3 5x5 1x5 gcn replk
SEEDS ?= 3
EXPERIMENT ?= compare
TEST_ARGS ?=
TRACKING_URI ?= sqlite:///mlruns/mlflow.db
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: help install train predict ui test test-fast lint variants readme-variants erf bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo "  variables: VARIANT=$(VARIANT) ARGS=\"key=value ...\" RUN=<run id> CKPT=<path> INPUT=<dir> OUT=<dir> PORT=$(PORT)"

# torch first, with an exact pin: this machine holds its CPU wheel, a GPU machine gets the
# CUDA build of the same version; the project's own range is then already satisfied.
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

install: $(STAMP) ## create .venv and install the project (done on first use by every target)

train: $(STAMP) ## train one variant: make train VARIANT=5x5 ARGS="trainer.max_epochs=3 data.root=..." (RESUME=<run id>|last after a crash)
	$(BIN)/lk-segment train --variant $(VARIANT) $(ARGS) $(if $(RESUME),resume=$(RESUME))

.PHONY: compare report
compare: $(STAMP) ## every variant x seed under one MLflow parent run, then the report: make compare VARIANTS="3x3 5x5" SEEDS=3 ARGS="..."
	$(BIN)/lk-segment compare --experiment $(EXPERIMENT) --variants $(VARIANTS) --seeds $(SEEDS) $(ARGS)

report: $(STAMP) ## results table, plots, conclusions of a comparison from MLflow alone: make report EXPERIMENT=compare
	$(BIN)/lk-segment report $(EXPERIMENT) $(ARGS)

predict: $(STAMP) ## masks + submission.csv: make predict RUN=<id> (or CKPT=<path>) INPUT=<dir of .jpg> OUT=<dir> [DEVICE=cpu|cuda] [TTA=1]
	@test -n "$(INPUT)" || { echo "make predict needs INPUT=<folder of .jpg>"; exit 2; }
	$(BIN)/lk-segment predict $(if $(RUN),--run $(RUN)) $(if $(CKPT),--ckpt $(CKPT)) --input "$(INPUT)" --out "$(OUT)" \
		--device $(DEVICE) $(if $(TTA),--tta)

ui: $(STAMP) ## MLflow UI over the tracking store on http://127.0.0.1:5000 (PORT= to change)
	mkdir -p mlruns/artifacts
	$(BIN)/mlflow ui --backend-store-uri "$(TRACKING_URI)" --default-artifact-root ./mlruns/artifacts \
		--host $(HOST) --port $(PORT)

variants: $(STAMP) ## the kernel variants: params, GFLOPs, theoretical receptive field
	$(BIN)/lk-segment variants

readme-variants: $(STAMP) ## regenerate README.md's variants table (lk-segment variants --markdown)
	$(BIN)/lk-segment variants --markdown --readme README.md

erf: $(STAMP) ## effective receptive field: make erf RUN=<id> (logged to the run) or VARIANT=<v> (fresh model)
	$(BIN)/lk-segment erf $(if $(RUN),--run $(RUN),--variant $(VARIANT) $(ARGS)) --out "$(ERF_OUT)"

bench: $(STAMP) ## speed and memory vs a plain-PyTorch baseline: make bench BENCH_OUT=bench.json ARGS="--variants 3x3"
	$(BIN)/lk-segment bench --out "$(BENCH_OUT)" $(ARGS)

test: $(STAMP) ## the whole test suite, before a commit (LK_CARVANA_ROOT for the real-data tests; TEST_ARGS="-p randomly" shuffles)
	$(BIN)/python -m pytest $(TEST_ARGS)

test-fast: $(STAMP) ## the tests that train nothing and start nothing, under a minute: while working
	$(BIN)/python -m pytest -m "not slow" $(TEST_ARGS)

# ruff check only: the code is laid out by hand (dense argument lists at 120 columns), which
# ruff format would rewrite one argument per line.
lint: $(STAMP) ## ruff check (pyflakes, pycodestyle, isort, bugbear, pyupgrade)
	$(BIN)/ruff check lk_segment tests

clean: ## remove caches and checkpoints (keeps .venv, data and mlruns)
	rm -rf checkpoints .pytest_cache .ruff_cache predictions
