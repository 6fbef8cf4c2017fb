# Slipway: `make demo` runs the main job on the embedded default; `make test` runs the tests.
# Each target creates .venv if missing and installs what it needs.
# On a GPU machine: `make ... TORCH_CONSTRAINTS=` to take torch from pyproject's range.

PYTHON ?= python3
VENV ?= .venv
TORCH_CONSTRAINTS ?= constraints-cpu.txt
ROOT ?= data
BIN := $(VENV)/bin
DEPS_HASH := $(shell cat pyproject.toml $(TORCH_CONSTRAINTS) | sha256sum | cut -c1-12)
STAMP := $(VENV)/.installed-$(DEPS_HASH)-$(shell echo $(CURDIR) | sha256sum | cut -c1-8)

# Local runs: no Ray token auth on a laptop-local Ray; W&B offline unless WANDB_API_KEY is set.
export RAY_AUTH_MODE ?= disabled
export PYTHONWARNINGS ?= ignore::DeprecationWarning,ignore::FutureWarning

.PHONY: setup demo test lint redis bench-features clean

$(STAMP): pyproject.toml $(TORCH_CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(if $(TORCH_CONSTRAINTS),-c $(TORCH_CONSTRAINTS)) -e ".[dev]"
	rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP)

redis:
	@command -v redis-server >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; }

demo: setup
	$(BIN)/python -m jobs.generate --config configs/generate.yaml --set storage.root=$(ROOT)
	$(BIN)/python -m jobs.ingest --config configs/ingest.yaml --set storage.root=$(ROOT)
	$(BIN)/python -m jobs.features --config configs/features.yaml --set storage.root=$(ROOT)

test: setup redis
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .

bench-features: setup redis
	$(BIN)/python -m benchmarks.features

clean:
	rm -rf $(ROOT)
