# raymeta developer entry points. `make quickstart` and `make test` are the README's two commands.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.raymeta-installed
TORCH ?= torch==2.13.0

.PHONY: setup quickstart test test-all lint format bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, so pip keeps its build: the CPU one that lies on disk (PyPI's Linux wheel is
	# the multi-GB CUDA build). Another build: make setup TORCH="torch --index-url URL" (README).
	$(BIN)/python -m pip install -q $(TORCH)
	# dev = the tools + the plots (matplotlib) and pb2 (scikit-learn) extras the tests use
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

quickstart: $(STAMP)
	$(BIN)/raymeta quickstart

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ""

lint: $(STAMP)
	$(BIN)/ruff check raymeta tests examples
	$(BIN)/ruff format --check raymeta tests examples
	$(BIN)/mypy raymeta

format: $(STAMP)
	$(BIN)/ruff format raymeta tests examples
	$(BIN)/ruff check --fix raymeta tests examples

bench: $(STAMP)
	$(BIN)/raymeta bench engine
	$(BIN)/raymeta bench learning
	$(BIN)/raymeta bench meta-train
	$(BIN)/raymeta bench priors
	$(BIN)/raymeta bench tune

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
