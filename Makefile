# raymeta developer entry points. `make quickstart` and `make test` are the README's two commands.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.raymeta-installed

.PHONY: setup quickstart test test-all lint format bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU build of torch that lies on disk; an unpinned torch may pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q "torch==2.13.0"
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
