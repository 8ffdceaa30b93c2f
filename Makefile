# Two commands do everything on a fresh machine:
#   make demo   install into .venv, build tiny models + demo data, run the DVC pipeline
#   make test   install into .venv, run the test suite
# Re-running either is fast: the install step reruns only when pyproject.toml or
# constraints.txt change.

PYTHON ?= python3
VENV   := .venv
BIN    := $(abspath $(VENV))/bin
STAMP  := $(VENV)/.ebmrl-installed
PYTEST_ARGS ?=
# Test worker processes (pytest-xdist): most tests run one torch thread, so one worker
# per core; whole test files go to a worker, so a module's fixtures are built once, in
# the order tests/conftest.py gives them (longest first; xdist would reorder them by
# test count). TEST_WORKERS=0 runs the suite in this one process.
TEST_WORKERS ?= 2
PYTEST_PARALLEL = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

# dvc runs stage commands (`ebmrl ...`) through the shell: put the venv first on PATH.
export PATH := $(BIN):$(PATH)

.PHONY: install demo test test-fast test-learning lint format clean browser
.PHONY: mlflow-ui services-up services-down services-status deploy pipeline dvc-remote-local
.PHONY: gpu-worker

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[pipeline,dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/ebmrl check-params
	$(BIN)/dvc repro
	$(BIN)/ebmrl outputs
	@echo "Report:    $(CURDIR)/reports/eval/index.html"
	@echo "MLflow UI: make mlflow-ui, then open http://127.0.0.1:5000 (runs in $(CURDIR)/mlflow.db)"

test: $(STAMP) browser
	$(BIN)/python -m pytest $(PYTEST_PARALLEL) $(PYTEST_ARGS)

# The fast tier while you change code (under 3 minutes on 2 cores): pure and tiny-model
# unit tests; no training runs, servers, DVC pipelines or browser. `make test` runs all.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not integration" $(PYTEST_PARALLEL) $(PYTEST_ARGS)

# Only the learning-signal checks (also part of make test, with GRPO seed 0), printing their
# numbers, with GRPO seeds 0, 1 and 2 (EBMRL_LEARNING_SEEDS=... to choose).
test-learning: $(STAMP)
	EBMRL_LEARNING_SEEDS=$${EBMRL_LEARNING_SEEDS:-0,1,2} $(BIN)/python -m pytest -s -k "teaches_the_format or raises_the_total_reward" tests/test_training.py

# Headless Chromium (Debian package) for the report and plot screenshot tests: installed
# once, where apt-get may run; elsewhere those tests skip (and fail under CI=true).
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
		|| echo "warning: chromium could not be installed: screenshot tests will be skipped"

lint: $(STAMP)
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf .pytest_cache .ruff_cache .hypothesis .cache

# ---- Orchestration (prefect.yaml, flows/): local servers, deployments, the pipeline as a
# service. Every server binds 127.0.0.1; PIDs, ports and logs live in $(SERVICES_DIR).
# services-up needs AWS credentials in the environment or AWS config (any values for
# the local S3 server: they become its identity).
SERVICES_DIR ?= .services
SERVICES = $(BIN)/python -m flows.services --run-dir $(SERVICES_DIR)
# PREFECT_API_URL, MLFLOW_TRACKING_URI, AWS_ENDPOINT_URL of the running servers.
WITH_SERVICES = eval "$$($(SERVICES) env)" &&

mlflow-ui: $(STAMP)
	$(BIN)/mlflow ui --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///$(CURDIR)/mlflow.db

services-up: $(STAMP)
	$(SERVICES) up

services-down:
	@if test -x $(BIN)/python; then $(SERVICES) down; else echo "nothing to stop"; fi

services-status: $(STAMP)
	$(SERVICES) status

deploy: $(STAMP)
	$(WITH_SERVICES) env -u EBMRL_CODE_DIR $(BIN)/prefect --no-prompt deploy --all

# The local services' workers clone the pipeline's commit from this checkout (with a DVC
# remote, GPU stages run in workspaces of their own): no push to `origin` needed.
pipeline: $(STAMP)
	$(WITH_SERVICES) $(BIN)/prefect deployment run ebmrl-pipeline/default \
		--param "git_url=$(CURDIR)" --watch

# One GPU machine's worker (deploy/README.md): work pool `gpu`, one stage at a time, each
# in a workspace of its own under GPU_SCRATCH; PREFECT_API_URL, MLFLOW_TRACKING_URI and
# the DVC remote's credentials (AWS_*) come from the environment.
GPU_SCRATCH ?= $(HOME)/.cache/ebmrl/workspaces
gpu-worker: $(STAMP)
	mkdir -p $(GPU_SCRATCH)
	EBMRL_SCRATCH=$(abspath $(GPU_SCRATCH)) EBMRL_CODE_DIR=$(CURDIR) PATH=$(BIN):$$PATH \
		$(BIN)/prefect worker start --pool gpu --type process --limit 1 \
		--name gpu-$$(hostname)-$$$$

# The DVC remote on the local S3 server, in .dvc/config.local (never committed).
dvc-remote-local: $(STAMP)
	$(WITH_SERVICES) $(BIN)/dvc remote add --local -d -f local-s3 s3://ebmrl-dvc/cache && \
		$(BIN)/dvc remote modify --local local-s3 endpointurl "$$AWS_ENDPOINT_URL"
