# Two commands do everything on a fresh machine:
#   make run    -- install the runtime and monitor the default microphone
#                  (no input device: the bundled demo recording, clearly labelled)
#   make test   -- install what the tests need (venv, packages, mosquitto) and run them
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: run test lint install install-test system-deps export fetch-offline bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -e .

install-test: $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'

system-deps:
	sh scripts/system-deps.sh

run: install
	$(BIN)/sound-monitor run $(ARGS)

test: system-deps install-test
	$(BIN)/python -m pytest -q $(ARGS)

# The gate CI runs before the tests: ruff (lint + format) and mypy (pydantic plugin)
lint: install-test
	$(BIN)/ruff check monitor tests scripts
	$(BIN)/ruff format --check monitor tests scripts
	$(BIN)/mypy monitor

# Export the real CLAP (needs the Hugging Face Hub) into ~/.local/share/sound-monitor/models
export: $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[export]'
	$(BIN)/sound-monitor export --model laion/clap-htsat-unfused

fetch-offline: install
	$(BIN)/sound-monitor models fetch offline

# Benchmark on a random full-size CLAP (built once into ~/.cache), against the reference
BENCH_ARGS ?= --compare-reference
bench: install-test
	$(BIN)/sound-monitor bench --model "$$($(BIN)/python scripts/bench_model.py)" $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
