# lk_segment: `make help` lists the targets. Every target installs on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_SPEC ?= torch==2.13.0
# SYSTEM_TORCH=1: use the torch that came with $(PYTHON) (a CUDA image, a cluster module): the venv
# sees $(PYTHON)'s packages and torch is not pinned. Left empty, it is set when $(PYTHON) imports a
# CUDA build of torch; SYSTEM_TORCH=0 pins $(TORCH_SPEC) regardless.
SYSTEM_TORCH ?=
# WHEELS=<folder>: install from that folder of wheels alone, no package index (an offline machine)
WHEELS ?=
PIP_SOURCE := $(if $(WHEELS),--no-index --find-links "$(WHEELS)" --no-build-isolation)
GPU_CHECK_OUT ?= gpu-check
VARIANT ?= 3x3
ARGS ?=
# Options left unset take the command's own default (lk-segment <command> --help), written there once.
PORT ?=
HOST ?=
# make ui/server beyond loopback: AUTH=1 (MLflow's basic-auth app; MLFLOW_AUTH_ADMIN_PASSWORD on the first
# start) or INSECURE=1 (a trusted network); ALLOWED_HOSTS: the Host headers it answers (default: this machine's)
AUTH ?=
INSECURE ?=
ALLOWED_HOSTS ?=
# WORKERS: the server's processes (default 1 for make ui, 4 for make server)
WORKERS ?=
SERVER_FLAGS = $(if $(AUTH),--auth) $(if $(INSECURE),--insecure) $(if $(ALLOWED_HOSTS),--allowed-hosts "$(ALLOWED_HOSTS)") \
	$(if $(WORKERS),--workers $(WORKERS))
RUN ?=
MODEL ?=
NAME ?=
# ALIAS: unset, the command's default (champion); ALIAS= (empty), no alias
RESUME ?=
CKPT ?=
INPUT ?=
OUT ?= predictions
DEVICE ?=
TTA ?=
DATA ?=
EVAL_OUT ?=
ERF_OUT ?=
BENCH_OUT ?=
VARIANTS ?=
SEEDS ?=
EXPERIMENT ?=
STUDY ?= cpu-sample
STUDY_OUT ?=
STUDY_MD ?=
TEST_ARGS ?=
# make test's pytest-xdist workers: auto, one per core (at most 4, tests/conftest.py); 0 runs the tests in this process
TEST_WORKERS ?= auto
# The store: every target reads MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db (lk_segment/tracking.py)

.PHONY: help install train predict evaluate register ui server test test-fast lint variants readme-variants erf bench gpu-check clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo "  variables: VARIANT=$(VARIANT) ARGS=\"key=value ...\" RUN=<run id> CKPT=<path> INPUT=<dir> OUT=<dir> PORT=$(PORT)"
	@echo "  make ui/server: HOST=$(HOST) AUTH=1 (basic auth) INSECURE=1 (no auth beyond loopback) ALLOWED_HOSTS=<name,...>"

# torch first, with an exact pin: this machine holds its CPU wheel, a GPU machine gets the
# CUDA build of the same version; the project's own range (torch>=2.4) is then already satisfied.
# With a system torch the venv is made with --system-site-packages, plus a .pth naming $(PYTHON)'s own
# site-packages: when $(PYTHON) is itself a venv's (as on many GPU images), --system-site-packages
# alone would show the base interpreter's packages, not the ones holding torch. pip then finds
# torch (and whatever else is there) already installed and leaves it alone. No pip of its own
# (--without-pip): $(PYTHON)'s pip and setuptools serve it, so nothing needs fetching to start.
# WHEELS= builds the project with the environment's setuptools (no isolated build env to fetch).
$(STAMP): pyproject.toml
	@system="$(SYSTEM_TORCH)"; \
	if [ -z "$$system" ] && $(PYTHON) -c "import sys, torch; sys.exit(torch.version.cuda is None)" 2>/dev/null; then \
		system=1; echo "$(PYTHON) has a CUDA build of torch: using it (SYSTEM_TORCH=0 pins $(TORCH_SPEC) instead)"; fi; \
	set -ex; \
	if [ "$$system" = 1 ]; then \
		test -d $(VENV) || $(PYTHON) -m venv --system-site-packages --without-pip $(VENV); \
		$(PYTHON) -c "import site; print(*site.getsitepackages(), sep='\n')" \
			> "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/_system_site.pth"; \
	else \
		test -d $(VENV) || $(PYTHON) -m venv $(VENV); \
	fi; \
	$(if $(WHEELS),,$(BIN)/python -m pip install -q --upgrade pip;) \
	if [ "$$system" != 1 ]; then $(BIN)/python -m pip install -q $(PIP_SOURCE) "$(TORCH_SPEC)"; fi; \
	$(if $(WHEELS),$(BIN)/python -m pip install -q $(PIP_SOURCE) "setuptools>=70.1";) \
	$(BIN)/python -m pip install -q $(PIP_SOURCE) -e ".[dev]"
	touch $@

install: $(STAMP) ## create .venv and install the project (done on first use by every target); SYSTEM_TORCH=1, WHEELS=<folder>

train: $(STAMP) ## train one variant: make train VARIANT=5x5 ARGS="trainer.max_epochs=3 data.root=..." (RESUME=<run id>|last after a crash)
	$(BIN)/lk-segment train --variant $(VARIANT) $(ARGS) $(if $(RESUME),resume=$(RESUME))

.PHONY: compare report study
compare: $(STAMP) ## every variant x seed under one MLflow parent run, then the report: make compare VARIANTS="3x3 5x5" SEEDS=3 ARGS="..."
	$(BIN)/lk-segment compare $(if $(EXPERIMENT),--experiment $(EXPERIMENT)) $(if $(VARIANTS),--variants $(VARIANTS)) \
		$(if $(SEEDS),--seeds $(SEEDS)) $(ARGS)

study: $(STAMP) ## the study of configs/study/<STUDY>.yaml (or STUDY=<file.yaml>): every variant x fold, report with intervals (resumes): make study STUDY=cpu-sample
	$(BIN)/lk-segment study $(STUDY) $(if $(STUDY_OUT),--out "$(STUDY_OUT)") $(if $(STUDY_MD),--markdown "$(STUDY_MD)") $(ARGS)

report: $(STAMP) ## results table, plots, conclusions of a comparison from MLflow alone: make report EXPERIMENT=compare
	$(BIN)/lk-segment report $(EXPERIMENT) $(ARGS)

predict: $(STAMP) ## masks + submission.csv: make predict RUN=<id> (or CKPT=<path>, MODEL=models:/lk-segment@champion) INPUT=<dir of .jpg> OUT=<dir> [DEVICE=cpu|cuda] [TTA=1]
	@test -n "$(INPUT)" || { echo "make predict needs INPUT=<folder of .jpg>"; exit 2; }
	$(BIN)/lk-segment predict $(if $(RUN),--run $(RUN)) $(if $(CKPT),--ckpt $(CKPT)) $(if $(MODEL),--model "$(MODEL)") \
		--input "$(INPUT)" --out "$(OUT)" \
		$(if $(DEVICE),--device $(DEVICE)) $(if $(TTA),--tta)

evaluate: $(STAMP) ## mean per-image Dice at full resolution: make evaluate RUN=<id> (or CKPT=<path>) DATA=<Kaggle-layout dir> [TTA=1]
	@test -n "$(DATA)" || { echo "make evaluate needs DATA=<folder with train/*.jpg and train_masks/*_mask.gif>"; exit 2; }
	$(BIN)/lk-segment evaluate $(if $(RUN),--run $(RUN)) $(if $(CKPT),--ckpt $(CKPT)) --data "$(DATA)" \
		$(if $(EVAL_OUT),--out "$(EVAL_OUT)") $(if $(DEVICE),--device $(DEVICE)) $(if $(TTA),--tta)

register: $(STAMP) ## register a run's MLflow model: make register RUN=<id> [NAME=lk-segment] [ALIAS=champion]
	@test -n "$(RUN)" || { echo "make register needs RUN=<run id>"; exit 2; }
	$(BIN)/lk-segment register --run $(RUN) $(if $(NAME),--name "$(NAME)") \
		$(if $(filter undefined,$(origin ALIAS)),,--alias "$(ALIAS)")

ui: $(STAMP) ## MLflow UI over the tracking store (one machine); prints the page to open (PORT=, HOST=, AUTH=1)
	$(BIN)/lk-segment ui $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT)) $(SERVER_FLAGS)

server: $(STAMP) ## MLflow tracking server for several machines: make server HOST=0.0.0.0 AUTH=1 [ALLOWED_HOSTS=name,...]
	$(BIN)/lk-segment ui --server $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT)) $(SERVER_FLAGS)

variants: $(STAMP) ## the kernel variants: params, GFLOPs, theoretical receptive field
	$(BIN)/lk-segment variants

readme-variants: $(STAMP) ## regenerate README.md's variants table (lk-segment variants --markdown)
	$(BIN)/lk-segment variants --markdown --readme README.md

erf: $(STAMP) ## effective receptive field: make erf RUN=<id> (logged to the run) or VARIANT=<v> (fresh model)
	$(BIN)/lk-segment erf $(if $(RUN),--run $(RUN),--variant $(VARIANT) $(ARGS)) $(if $(ERF_OUT),--out "$(ERF_OUT)")

bench: $(STAMP) ## speed and memory vs a plain-PyTorch baseline: make bench BENCH_OUT=bench.json ARGS="--variants 3x3"
	$(BIN)/lk-segment bench $(if $(BENCH_OUT),--out "$(BENCH_OUT)") $(ARGS)

# NO_VENV=1: run with $(PYTHON) as it is, no venv made or installed (a GPU machine whose python has
# torch, the other packages made importable by PYTHONPATH; docs/gpu.md).
gpu-check: $(if $(NO_VENV),,$(STAMP)) ## prove the GPU path (tests, trainings, bench, loader, predict) into gpu-check/ (no GPU: small CPU mode)
	$(if $(NO_VENV),$(PYTHON),$(BIN)/python) -m lk_segment.commands.gpu_check --out "$(GPU_CHECK_OUT)" $(ARGS)

test: $(STAMP) ## the whole test suite, before a commit (LK_CARVANA_ROOT for the real-data tests; TEST_ARGS="-p randomly" shuffles)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder $(TEST_ARGS)

test-fast: $(STAMP) ## the tests that train nothing and start nothing, under a minute: while working
	$(BIN)/python -m pytest -m "not slow" $(TEST_ARGS)

# ruff check only: the code is laid out by hand (dense argument lists at 120 columns), which
# ruff format would rewrite one argument per line.
lint: $(STAMP) ## ruff check (pyflakes, pycodestyle, isort, bugbear, pyupgrade)
	$(BIN)/ruff check lk_segment tests

clean: ## remove caches and checkpoints (keeps .venv, data and mlruns)
	rm -rf checkpoints .pytest_cache .ruff_cache predictions evaluations
