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

# dvc runs stage commands (`ebmrl ...`) through the shell: put the venv first on PATH.
export PATH := $(BIN):$(PATH)

.PHONY: install demo test lint format clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/ebmrl check-params
	$(BIN)/dvc repro
	$(BIN)/ebmrl outputs

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf .pytest_cache .ruff_cache .hypothesis
