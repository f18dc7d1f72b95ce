# The targets are the interface: CI runs `make test` through .ci/run, exactly as developers do.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PACKAGES := libs/vecsync services/producer services/embedder-worker services/upserter services/embedding-api
PYPROJECTS := $(addsuffix /pyproject.toml,$(PACKAGES))

.PHONY: venv run test test-unit test-rules lint typecheck chaos big-sync bench-snapshot clean up up-gpu down logs scale config bench-embed bench

venv: $(STAMP)

# torch is pinned and installed first, on its own: an unpinned torch pulls a multi-GB CUDA build.
$(STAMP): $(PYPROJECTS) requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e 'libs/vecsync[cli]' $(addprefix -e ,$(filter-out libs/vecsync,$(PACKAGES))) -r requirements-dev.txt
	touch $(STAMP)

# Starts every stage locally on the embedded default, loads the sample data, runs until Ctrl-C.
run: $(STAMP)
	$(BIN)/python -m vecsync.localstack

test: $(STAMP)
	$(BIN)/pytest

test-unit: $(STAMP)
	$(BIN)/pytest tests/unit

# The alert rules and their unit tests (promtool comes with Debian's prometheus package); make test runs them too.
test-rules:
	promtool check rules prometheus/rules/*.yml
	promtool test rules prometheus/tests/*.yml

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy -p vecsync -p producer -p embedder_worker -p upserter -p embedding_api

# The long chaos test (tests/chaos/harness.py); `make test` runs a short one. SEED=<n> replays a run.
chaos: $(STAMP)
	$(BIN)/python -m tests.chaos.harness $(if $(SEED),--seed $(SEED))

# A first sync of 100,000 documents into a Redis capped at 64 MB, the producer killed three times during the
# snapshot (tests/chaos/big_sync.py); `make test` runs a small one. ARGS="--documents 5000 --backend torch" varies it.
big-sync: $(STAMP)
	$(BIN)/python -m tests.chaos.big_sync $(ARGS)

# A benchmark, not a test: backends in-process and over HTTP, concurrent clients with batching on and off.
# Sizes: BENCH_TEXTS, BENCH_SECONDS, BENCH_BACKENDS, BENCH_CLIENTS; results in bench/results/.
bench-embed: $(STAMP)
	$(BIN)/python bench/embed.py

# A benchmark, not a test: the pipeline end to end on the embedded default, B1-B6 of docs/performance.md.
# Sizes: BENCH_DOCS, BENCH_HASH_DOCS, BENCH_PER_DOC_DOCS, BENCH_LOAD_SECONDS, BENCH_B2_BACKENDS.
bench: $(STAMP)
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/snapshot.py

# A benchmark of the first sync's snapshot alone (bench/snapshot.py): projection, bytes per entry, parallel reads.
# Sizes: BENCH_SNAPSHOT_DOCS, BENCH_SNAPSHOT_ROUNDS, BENCH_SNAPSHOT_PARTS.
bench-snapshot: $(STAMP)
	$(BIN)/python bench/snapshot.py

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache

# Docker Compose (docs/deployment.md). `make scale STAGE=upserter N=2` scales another stage.
COMPOSE ?= docker compose
GPU_FILES := -f compose.yaml -f compose.gpu.yaml
STAGE ?= embedder-worker
N ?= 3

up:
	$(COMPOSE) up -d

up-gpu:
	$(COMPOSE) $(GPU_FILES) up -d

down:
	$(COMPOSE) down

logs:
	$(COMPOSE) logs -f

scale:
	$(COMPOSE) up -d --scale $(STAGE)=$(N)

config:
	$(COMPOSE) config --quiet
	$(COMPOSE) $(GPU_FILES) config --quiet
