# `make demo` and `make test` are all the set-up a fresh machine needs: both create .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU wheel of torch; a plain `torch` requirement would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install test test-fast demo lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev,train]"
	touch $(STAMP)

test: install
	$(BIN)/ruff check ropext tests bench
	$(BIN)/python -m pytest -q tests

test-fast: install
	$(BIN)/python -m pytest -q tests -m "not slow"

demo: install
	$(BIN)/python -m ropext.demo

lint: install
	$(BIN)/ruff check ropext tests bench
	$(BIN)/ruff format --check ropext tests bench

format: install
	$(BIN)/ruff format ropext tests bench
	$(BIN)/ruff check --fix ropext tests bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
