# Every target runs inside .venv; `make install` creates it.
SHELL := /bin/bash
comma := ,
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ARGS ?=
EXTRAS ?= dev
# Two locks, for the Python and platform CI runs, each pinning every extra it names (cuda in
# neither). The ray extra caps cloudpickle and joblib (RAY_CAPS), so installs without it use
# LOCK, where those two are current and every other package is pinned as in LOCK_RAY.
LOCK := requirements-lock.txt
LOCK_EXTRAS := dev,postgres,optuna
LOCK_RAY := requirements-lock-ray.txt
LOCK_RAY_EXTRAS := $(LOCK_EXTRAS),ray
RAY_CAPS := cloudpickle joblib
INSTALL_LOCK = $(if $(filter ray,$(subst $(comma), ,$(EXTRAS))),$(LOCK_RAY),$(LOCK))
UV_COMPILE := $(BIN)/uv pip compile pyproject.toml --python-version 3.11 \
	--python-platform x86_64-unknown-linux-gnu --custom-compile-command 'make lock' --quiet
export TF_CPP_MIN_LOG_LEVEL ?= 2

.DEFAULT_GOAL := help
.PHONY: help install lock train resume sweep evidence tune baseline compare register evaluate predict bench gpu-check ui server postgres browser test test-fast test-rest lint format clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# make install: every package at the version its lock pins (-c: only those the chosen extras
# need are installed), requirements-lock-ray.txt when EXTRAS names ray, requirements-lock.txt
# otherwise; `make lock` refreshes both after pyproject.toml changes.
install: $(BIN)/python ## Create .venv with the project and dev tools at the locked versions (EXTRAS=dev,ray adds engines)
	$(BIN)/pip install --quiet -c $(INSTALL_LOCK) -e '.[$(EXTRAS)]'

# make lock: LOCK_RAY from its own pins, then LOCK from LOCK_RAY's, RAY_CAPS set free (their
# newest release); ray's own packages drop out.
lock: ## Pin both locks to pyproject.toml (keeps pins that still fit; UPGRADE=1: the newest)
	@[ -x $(BIN)/uv ] || { echo "make lock: uv is not installed; run: make install" >&2; exit 2; }
	@[ -f $(LOCK_RAY) ] || cp $(LOCK) $(LOCK_RAY)
	$(UV_COMPILE) $(foreach e,$(subst $(comma), ,$(LOCK_RAY_EXTRAS)),--extra $(e)) \
		$(if $(UPGRADE),--upgrade) -o $(LOCK_RAY)
	cp $(LOCK_RAY) $(LOCK)
	$(UV_COMPILE) $(foreach e,$(subst $(comma), ,$(LOCK_EXTRAS)),--extra $(e)) \
		$(foreach p,$(RAY_CAPS),--upgrade-package $(p)) -o $(LOCK)

# On a fresh clone every command target makes .venv first (make install, EXTRAS=dev by default).
$(BIN)/textclf:
	@echo "no $(VENV) yet: make install EXTRAS=$(EXTRAS) first"
	@$(MAKE) --no-print-directory install

train: | $(BIN)/textclf ## Train and evaluate once; Hydra overrides via ARGS="model.units=128 train.epochs=3"
	$(BIN)/textclf train $(ARGS)

resume: | $(BIN)/textclf ## Continue an interrupted run (RUN=<folder>, default: newest) or sweep (SWEEP=outputs/sweeps/<folder>)
	$(BIN)/textclf resume $(or $(SWEEP),$(RUN)) $(ARGS)

sweep: | $(BIN)/textclf ## Run the padding/masking comparison as one Hydra multirun (ARGS pass through)
	$(BIN)/textclf train --multirun $(if $(findstring experiment=,$(ARGS)),,experiment=compare_padding) $(ARGS)

# make evidence: the padding evidence in docs/results.md, 6 variants x 3 seeds: the five batching
# strategies masked, and per_batch unmasked (the LSTM alone), then the table, its CSV, a per-run
# CSV and figures in EVIDENCE_DIR. Full IMDB by default (~2.5 h on 2 cores); any data source:
#   make evidence NAME=banking77 FIXED=32 DATA="data=csv data.path=train.csv data.test_path=test.csv"
# NAME names the MLflow experiment (evidence_<NAME>) and the docs folder; FIXED is the length
# `fixed` pads and cuts to (IMDB: 500, about its 90th percentile). TRACKING=tracking.uri=<store>
# another store; ARGS go to training. The bow baseline on the same split: experiment=compare_bow.
NAME ?= imdb
DATA ?= data=aclimdb data.path=$(CURDIR)/../shared/data/aclImdb_labeled.tar.gz
FIXED ?= 500
TRACKING ?=
EVIDENCE_DIR ?= $(CURDIR)/docs/evidence_$(NAME)
EVIDENCE := experiment=compare_strategies $(DATA) tracking.experiment=evidence_$(NAME) $(TRACKING)
evidence: | $(BIN)/textclf ## Regenerate the padding evidence (3 seeds; NAME=, DATA=, FIXED= for other data) into docs/evidence_<NAME>/
	@echo "make evidence: part 1 of 3, fixed (each job logs 'sweep job n of N' and the time left)"
	$(BIN)/textclf train --multirun $(EVIDENCE) batching=fixed batching.max_length=$(FIXED) $(ARGS)
	@echo "make evidence: part 2 of 3, per_batch, bucket, exact, pooled"
	$(BIN)/textclf train --multirun $(EVIDENCE) batching=per_batch,bucket,exact,pooled $(ARGS)
	@echo "make evidence: part 3 of 3, per_batch unmasked"
	$(BIN)/textclf train --multirun $(EVIDENCE) batching=per_batch model.masking=none $(ARGS)
	$(BIN)/textclf compare tracking.experiment=evidence_$(NAME) sweep=all out_dir=$(EVIDENCE_DIR) $(TRACKING)

tune: | $(BIN)/textclf ## Optuna search (conf/hparams_search/), pruned per epoch; again, it continues the study
	$(BIN)/textclf tune $(ARGS)

baseline: | $(BIN)/textclf ## The reference (TF-IDF + logistic regression) on a run's split: ARGS="<its data overrides> tracking.experiment=<its>"
	$(BIN)/textclf baseline $(ARGS)

compare: | $(BIN)/textclf ## Table and plots comparing the runs of an experiment or sweep, from MLflow
	$(BIN)/textclf compare $(ARGS)

# make register: NAME is read from the command line only (the evidence target's NAME has a
# default); without RUN, the newest finished run of tracking.experiment.
register: | $(BIN)/textclf ## Register a run's model with an alias: RUN=<run id> NAME=<model> ALIAS=champion (then model_uri=models:/<model>@champion)
	$(BIN)/textclf register $(if $(RUN),run_id=$(RUN)) $(if $(filter command line,$(origin NAME)),name=$(NAME)) $(if $(ALIAS),alias=$(ALIAS)) $(ARGS)

evaluate: | $(BIN)/textclf ## Score a saved model on labelled data: ARGS="data=csv data.path=x.csv split=all model_path=..."
	$(BIN)/textclf evaluate $(ARGS)

predict: | $(BIN)/textclf ## Classify with the newest run's model: ARGS='text="a fine film"' (or file=, out=, model_uri=models:/<name>@<alias>)
	$(BIN)/textclf predict $(ARGS)

bench: | $(BIN)/textclf ## Benchmark the batching strategies, input pipeline and inference (ARGS="--quick" for a smoke test)
	$(BIN)/textclf bench $(ARGS)

gpu-check: ## On a GPU: train post/pre masked LSTMs, say if cuDNN ran, compare saved models' GPU/CPU answers
	$(BIN)/python -m textclf.studies.gpu_check

ui: | $(BIN)/textclf ## Open the MLflow UI on http://127.0.0.1:5000 over the project's store
	@echo "make ui: on http://127.0.0.1:$${PORT:-5000}, click 'Model training' (top left) once for the training runs"
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/outputs/mlflow.db --host 127.0.0.1 --port $${PORT:-5000}

# make server: its store and artifacts live in SERVER_DIR. HOST=<address> on the command line
# (only there: a HOST from the environment is ignored) listens beyond 127.0.0.1; ARGS pass
# through to `mlflow server` (e.g. ARGS="--allowed-hosts mlflow.example.org --workers 2").
# AUTH=1 runs MLflow's basic-auth app: the admin password, needed on the first start only, comes
# from MLFLOW_AUTH_ADMIN_PASSWORD or the file named by MLFLOW_AUTH_ADMIN_PASSWORD_FILE and is
# never written to disk here; users' logins live in SERVER_DIR/basic_auth.db; AUTH_PERMISSION is
# what a signed-in user may do on experiments nobody granted them (READ or NO_PERMISSIONS).
# DB=postgresql://<user>@<host>:<port>/<database> on the command line puts the store on
# PostgreSQL (driver: pip install -e '.[postgres]'); pass the password in PGPASSWORD or
# ~/.pgpass, not in the URI, which `ps` shows. ARTIFACTS=<folder or s3://...> moves the
# artifacts out of SERVER_DIR.
SERVER_DIR ?= outputs/server
SERVER_STORE = $(if $(filter command line,$(origin DB)),$(DB),sqlite:///$(abspath $(SERVER_DIR))/mlflow.db)
ARTIFACTS ?= $(abspath $(SERVER_DIR))/artifacts
SERVER_HOST = $(if $(filter command line,$(origin HOST)),$(HOST),127.0.0.1)
AUTH_PERMISSION ?= READ
AUTH_ENV = MLFLOW_AUTH_CONFIG_PATH=$(abspath $(SERVER_DIR))/basic_auth.ini \
	MLFLOW_FLASK_SERVER_SECRET_KEY="$${MLFLOW_FLASK_SERVER_SECRET_KEY:-$$(cat $(SERVER_DIR)/flask_secret_key)}" \
	MLFLOW_AUTH_ADMIN_PASSWORD="$${MLFLOW_AUTH_ADMIN_PASSWORD:-$$(cat "$${MLFLOW_AUTH_ADMIN_PASSWORD_FILE:-/dev/null}")}"

server: ## Team tracking server on 127.0.0.1 (SQLite or DB=postgresql://..., artifacts in outputs/server/); AUTH=1: logins
	mkdir -p $(SERVER_DIR)
	@case "$(SERVER_STORE)" in postgresql://*|postgresql+psycopg://*) $(BIN)/python -c 'import psycopg' 2>/dev/null || { \
		echo "make server DB=...: the PostgreSQL driver is not installed; run: $(BIN)/pip install -e '.[postgres]'" >&2; exit 2; };; esac
ifeq ($(AUTH),1)
	@[ -z "$$MLFLOW_AUTH_ADMIN_PASSWORD_FILE" ] || [ -r "$$MLFLOW_AUTH_ADMIN_PASSWORD_FILE" ] || { \
		echo "make server AUTH=1: cannot read MLFLOW_AUTH_ADMIN_PASSWORD_FILE=$$MLFLOW_AUTH_ADMIN_PASSWORD_FILE" >&2; exit 2; }
	@[ -n "$$MLFLOW_AUTH_ADMIN_PASSWORD$$MLFLOW_AUTH_ADMIN_PASSWORD_FILE" ] || [ -s $(SERVER_DIR)/basic_auth.db ] || { \
		echo "make server AUTH=1: the first start creates the admin user; set MLFLOW_AUTH_ADMIN_PASSWORD=<password> or MLFLOW_AUTH_ADMIN_PASSWORD_FILE=<file holding it>" >&2; exit 2; }
	@printf '%s\n' '[mlflow]' 'default_permission = $(AUTH_PERMISSION)' \
		'database_uri = sqlite:///$(abspath $(SERVER_DIR))/basic_auth.db' 'admin_username = admin' \
		'authorization_function = mlflow.server.auth:authenticate_request_basic_auth' \
		> $(SERVER_DIR)/basic_auth.ini
	@[ -s $(SERVER_DIR)/flask_secret_key ] || (umask 077; $(BIN)/python -c \
		'import secrets; print(secrets.token_hex(32))' > $(SERVER_DIR)/flask_secret_key)
endif
	$(if $(filter 1,$(AUTH)),$(AUTH_ENV)) $(BIN)/mlflow server --host $(SERVER_HOST) --port $${PORT:-5000} \
		$(if $(filter 1,$(AUTH)),--app-name basic-auth) \
		--backend-store-uri '$(SERVER_STORE)' --artifacts-destination '$(ARTIFACTS)' $(ARGS)

postgres: ## Install Debian's PostgreSQL server for the PostgreSQL test when missing (root or sudo)
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql; }

browser: ## Install Debian's chromium for the browser test when missing (root or sudo)
	@command -v chromium >/dev/null || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; }

test: lint test-fast test-rest ## The whole suite as CI runs it: lint, the fast tier, then the rest

test-fast: | $(BIN)/textclf ## The inner loop: unit, property and in-process pipeline tests on tiny data
	$(BIN)/pytest -m "not slow and not e2e" -n 2 --dist loadfile

# Workers: the fast tier keeps both cores busy (3 workers: no faster); the rest waits on servers
# and subprocess start-ups, so 4 workers fill the cores (same hour, 2-core Xeon: 2 workers 14:39,
# 3 12:31, 4 11:56).
test-rest: | $(BIN)/textclf ## What test-fast leaves out: end-to-end CLI, servers, clusters, browser, real data
	$(BIN)/pytest -m "slow or e2e" -n 4 --dist loadfile

lint: | $(BIN)/textclf ## ruff (lint, format) and mypy on src/; make format applies ruff's, pre-commit install runs them on commit
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy

format: | $(BIN)/textclf ## Apply ruff's formatting and its safe lint fixes
	$(BIN)/ruff format src tests
	$(BIN)/ruff check --fix src tests

clean: ## Remove run outputs (keeps the MLflow store)
	find outputs -mindepth 1 -maxdepth 1 ! -name .gitkeep ! -name 'mlflow.db' ! -name mlartifacts -exec rm -rf {} +
