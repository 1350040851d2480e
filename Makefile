# Two commands do everything on a fresh machine:
#   make run    -- install the runtime and monitor the default microphone
#                  (no input device: the bundled demo recording, clearly labelled)
#   make test   -- install what the tests need (venv, packages, mosquitto) and run them
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=
# Microsoft CLAP's model code, without its dependency pins (numpy<2, transformers<5, a
# torchaudio for another torch): README "Microsoft CLAP"
MSCLAP := msclap==1.3.4

.PHONY: run test test-fast lint install install-test system-deps export export-msclap fetch-offline bench ha-check clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -e .

install-test: $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps $(MSCLAP)

system-deps:
	sh scripts/system-deps.sh

run: install
	$(BIN)/sound-monitor run $(ARGS)

test: system-deps install-test
	$(BIN)/python -m pytest -q $(ARGS)

# The fast lane for development: the stages' and rules' unit tests, in-process (no CLI run,
# no broker, no server), well under two minutes; CI still runs everything (make test)
test-fast: install-test
	$(BIN)/python -m pytest -q -m "not integration and not slow" $(ARGS)

# The gate CI runs before the tests: ruff (lint + format, with the banned-import layering
# contract), mypy (pydantic plugin) and import-linter (the package's layers)
lint: install-test
	$(BIN)/ruff check monitor tests scripts
	$(BIN)/ruff format --check monitor tests scripts
	$(BIN)/mypy monitor
	$(BIN)/lint-imports

# A real Home Assistant core (2026.2.3, built Python 3.13, its own venv) against the monitor
# and a real mosquitto: entities, attribute/state order, restart ends, the README automation
ha-check: system-deps install-test
	$(BIN)/python scripts/ha_check.py --ha-python "$$(sh scripts/build-ha-python.sh)"

# Export the real CLAP (needs the Hugging Face Hub) into ~/.local/share/sound-monitor/models
export: $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[export]'
	$(BIN)/sound-monitor export --model laion/clap-htsat-unfused

# Export Microsoft CLAP 2023 (MSCLAP_VERSION=2022 for the older one)
MSCLAP_VERSION ?= 2023
export-msclap: $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[export]'
	$(BIN)/pip install -q --no-deps $(MSCLAP)
	$(BIN)/sound-monitor export --model msclap:$(MSCLAP_VERSION)

fetch-offline: install
	$(BIN)/sound-monitor models fetch offline

# Benchmark on a random full-size CLAP (built once into ~/.cache), against the reference
BENCH_ARGS ?= --compare-reference
bench: install-test
	$(BIN)/sound-monitor bench --model "$$($(BIN)/python scripts/bench_model.py)" $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
