# Two commands matter: `make run` (demo against the local sandbox) and `make test`.
# Each creates its own virtualenv, one per Python version, so
# `make test PYTHON=python3.12` never disturbs the default one.
PYTHON ?= python3
PYVER := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
ifeq ($(PYVER),)
$(error $(PYTHON) does not run; pass a working interpreter, e.g. make test PYTHON=python3.12 (with pyenv: PYENV_VERSION=3.12.1 make test PYTHON=python3.12))
endif
VENV ?= .venv-$(PYVER)
BIN := $(VENV)/bin
PY := $(BIN)/python
PYTEST_ARGS ?=
# Test processes (pytest-xdist): one per core; `make test PYTEST_WORKERS=0` runs serially.
PYTEST_WORKERS ?= auto

.PHONY: help venv run serve test lint typecheck unit bench clean

help:
	@echo "make run        demo: submit and watch a job on the local Baseten sandbox (no account, no cost)"
	@echo "make test       lint, type checks and the whole test suite"
	@echo "make bench      benchmarks with ratios against baselines"
	@echo "make serve      serve train_http on :8080 against REAL Baseten (needs BASETEN_API_KEY)"

$(VENV)/.stamp-runtime: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.stamp-dev: $(VENV)/.stamp-runtime requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

$(VENV)/.stamp-train: $(VENV)/.stamp-dev requirements-train.txt
	$(PY) -m pip install --quiet -r requirements-train.txt
	touch $@

venv: $(VENV)/.stamp-dev

run: $(VENV)/.stamp-dev
	$(PY) -m scripts.demo

# Real Baseten: spends money when you submit. Never the default.
serve: $(VENV)/.stamp-runtime
	@test -n "$$BASETEN_API_KEY$$BASETEN_API_KEY_SECRET_ID" || { echo "set BASETEN_API_KEY or BASETEN_API_KEY_SECRET_ID first" >&2; exit 2; }
	$(BIN)/functions-framework --source main.py --target train_http --port $${PORT:-8080}

lint: $(VENV)/.stamp-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/shellcheck deploy.sh .ci/run tests/fakes/gcloud

typecheck: $(VENV)/.stamp-dev
	$(BIN)/mypy

unit: $(VENV)/.stamp-train
	$(BIN)/pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

test: lint typecheck unit

bench: $(VENV)/.stamp-dev
	$(PY) -m bench

clean:
	rm -rf .venv-* .pytest_cache .mypy_cache .ruff_cache
