# reproml: the two commands a newcomer needs are `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# uv from PATH, else a private copy installed with pip under .tools/ (nothing outside the project).
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)

export UV_COMPILE_BYTECODE := 1
export UV_PYTHON_DOWNLOADS := never
export DVC_NO_ANALYTICS := 1
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: help install run test test-slow up down team-up team-down team-status postgresql ui monitor-ui check format benchmark clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/python -m pip install --quiet --disable-pip-version-check uv

$(VENV)/.installed: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --python $(PYTHON)
	$(BIN)/python -m compileall -q src  # each DVC stage is a new process; spare it compiling reproml
	$(BIN)/dvc config --local core.site_cache_dir "$(CURDIR)/.dvc/site_cache"
	touch $@

install: $(VENV)/.installed ## create .venv from uv.lock (bytecode compiled) and configure DVC for this clone
	@# DVC creates <site cache>/repo 0777 without the sticky bit and leaves an existing folder's mode
	@# alone: made (or tightened to) 0700 here, every time, so clones set up earlier are fixed too.
	@install -d -m 0700 .dvc/site_cache .dvc/site_cache/repo

run: install ## set up, run the pipeline on the bundled data (dvc repro), gate it, replay Jul-Dec 2013 (simulate)
	$(BIN)/dvc repro
	$(BIN)/dvc push --quiet
	$(BIN)/reproml promote
	$(BIN)/dvc metrics show
	$(BIN)/reproml runs --limit 5
	$(BIN)/reproml registry
	$(BIN)/reproml simulate

test: install ## set up and run the default test suite (unit + integration, no slow tests)
	$(BIN)/pytest

test-slow: install ## the slow tests (the main job on all 336,776 flights)
	$(BIN)/pytest -m slow

up: install ## start the Prefect server (http://127.0.0.1:4200) and the MLflow UI (http://127.0.0.1:5000) in the background
	$(BIN)/python -m reproml.servers up

down: ## stop the servers `make up` started (logs stay in .reproml/servers/)
	$(BIN)/python -m reproml.servers down

# PostgreSQL for the team stack: the Debian package, installed once (as root) when its binaries are missing.
postgresql:
	@ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || command -v postgres >/dev/null || { \
		echo "installing PostgreSQL (apt-get install -y postgresql)"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }

team-up: install postgresql ## start the team stack (PostgreSQL, MLflow, Prefect + 2 workers, Dask + 2 workers, S3 stand-in)
	$(BIN)/python -m reproml.team up

team-down: ## stop the team stack, every process of it (state stays in .reproml/team/)
	$(BIN)/python -m reproml.team down

team-status: ## the team stack's services, pids, addresses and health
	$(BIN)/python -m reproml.team status

ui: install ## the MLflow UI for this project's runs and registry, at http://127.0.0.1:5000 (Ctrl-C stops it)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db \
		--host 127.0.0.1 --port 5000 --workers 1

monitor-ui: install ## Evidently's UI over monitoring/workspace, at http://127.0.0.1:8000 (Ctrl-C stops it)
	DO_NOT_TRACK=1 $(BIN)/evidently ui --workspace monitoring/workspace --host 127.0.0.1 --port 8000

check: install ## ruff (lint + format check), mypy and the import contract (layers; see ARCHITECTURE.md)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: install ## apply ruff's formatting and safe fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

benchmark: install ## pipeline overhead, CLI start-up, tuning against random search and FLAML (long)
	$(UV) sync --frozen --group bench --inexact
	$(BIN)/python benchmarks/pipeline_overhead.py
	$(BIN)/python benchmarks/tuning.py

clean: ## stop the servers, remove pipeline outputs and local MLflow state (keeps .venv and the DVC cache)
	-test -x $(BIN)/python && $(BIN)/python -m reproml.servers down
	rm -rf data/ingested.parquet data/schema.json data/prepared models plots predictions mlflow.db mlartifacts registry optuna .reproml
	git worktree prune
