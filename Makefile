# Quick start: `make demo` (set-up + the main job on synthetic data) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install dev demo test test-slow bench bench-methods clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.dev-installed: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

dev: $(VENV)/.dev-installed

demo: install
	$(BIN)/wsss run configs/synthetic/demo.yaml

test: dev
	$(BIN)/python -m pytest

test-slow: dev
	$(BIN)/python -m pytest -m slow

bench: install
	$(BIN)/python benchmarks/run_all.py $(BENCH_ARGS)

# Every method's synthetic preset over 3 seeds from the pretrained start (hours on a CPU; resumable)
bench-methods: install
	$(BIN)/python benchmarks/bench_methods.py $(BENCH_ARGS)

clean:
	rm -rf runs data/synthetic-demo
