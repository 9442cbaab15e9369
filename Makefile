# Every target runs inside .venv; `make install` creates it.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ARGS ?=
export TF_CPP_MIN_LOG_LEVEL ?= 2

.DEFAULT_GOAL := help
.PHONY: help install train resume sweep compare evaluate predict bench ui server browser test test-fast lint clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python ## Create .venv and install the project with its dev tools (idempotent)
	$(BIN)/pip install --quiet -e '.[dev]'

train: ## Train and evaluate once; Hydra overrides via ARGS="model.units=128 train.epochs=3"
	$(BIN)/textclf train $(ARGS)

resume: ## Continue an interrupted run from its last epoch: RUN=outputs/runs/<folder> (default: newest)
	$(BIN)/textclf resume $(RUN) $(ARGS)

sweep: ## Run the padding/masking comparison as one Hydra multirun (ARGS pass through)
	$(BIN)/textclf train --multirun $(if $(findstring experiment=,$(ARGS)),,experiment=compare_padding) $(ARGS)

compare: ## Table and plots comparing the runs of an experiment or sweep, from MLflow
	$(BIN)/textclf compare $(ARGS)

evaluate: ## Score a saved model on labelled data: ARGS="data=csv data.path=x.csv split=all model_path=..."
	$(BIN)/textclf evaluate $(ARGS)

predict: ## Classify with the newest run's model: ARGS='text="a fine film"' (or file=, out=, model_name=)
	$(BIN)/textclf predict $(ARGS)

bench: ## Benchmark the batching strategies, input pipeline and inference (ARGS="--quick" for a smoke test)
	$(BIN)/textclf bench $(ARGS)

ui: ## Open the MLflow UI on http://127.0.0.1:5000 over the project's store
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/outputs/mlflow.db --host 127.0.0.1 --port $${PORT:-5000}

server: ## Team tracking server on 127.0.0.1 (SQLite backend, artifacts under outputs/server/)
	mkdir -p outputs/server
	$(BIN)/mlflow server --host 127.0.0.1 --port $${PORT:-5000} \
		--backend-store-uri sqlite:///$(CURDIR)/outputs/server/mlflow.db \
		--artifacts-destination $(CURDIR)/outputs/server/artifacts

browser: ## Install Debian's chromium for the browser test when missing (root or sudo)
	@command -v chromium >/dev/null || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; }

test: ## The whole test suite, as CI runs it
	$(BIN)/pytest

test-fast: ## The inner loop: unit, property and in-process pipeline tests on tiny data
	$(BIN)/pytest -m "not slow and not e2e"

lint: ## ruff
	$(BIN)/ruff check src tests

clean: ## Remove run outputs (keeps the MLflow store)
	find outputs -mindepth 1 -maxdepth 1 ! -name .gitkeep ! -name 'mlflow.db' ! -name mlartifacts -exec rm -rf {} +
