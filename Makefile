# prodcat — the two first commands:  `make run`  (set up + main job on the embedded sample)  and  `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
DVC_VENV := .venv-dvc
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup browser run test test-slow ui dvc-repro clean-work

$(BIN)/.installed: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch/torchvision come from this machine's local wheel store; the lock pins every other package
	$(BIN)/pip install -q -c requirements.lock -e '.[test]'
	# dagster-dask 0.29.28 (the release matching dagster 1.13.28) is not on PyPI; 0.29.27 pins dagster==1.13.27
	# exactly but runs on 1.13.28 (tests/test_distributed.py runs the executor), so it goes in without its pins
	$(BIN)/pip install -q --no-deps dagster-dask==0.29.27
	mkdir -p $(DAGSTER_HOME) && cp -n orchestration/dagster.yaml $(DAGSTER_HOME)/dagster.yaml || true
	touch $@

$(DVC_VENV)/.installed:
	test -x $(DVC_VENV)/bin/python || $(PY) -m venv $(DVC_VENV)
	# DVC in its own venv: its hydra pins antlr 4.9, Dagster's selection parser needs 4.13 (dagster#27487)
	$(DVC_VENV)/bin/pip install -q dvc==3.67.1
	touch $@

setup: $(BIN)/.installed

run: setup
	$(BIN)/prodcat run

# Debian's chromium for tests/test_browser.py (apt-get; a no-op when /usr/bin/chromium exists)
browser:
	bash scripts/install_browser.sh

test: setup browser
	$(BIN)/python -m pytest -q

test-slow: setup $(DVC_VENV)/.installed
	$(BIN)/python -m pytest -q -m slow

# Dagster UI http://127.0.0.1:3000 (run history in DAGSTER_HOME) + MLflow UI http://127.0.0.1:5000 (registry of
# UI_WORK, e.g. `make ui UI_WORK=work/benchmark`); Ctrl-C stops both.
UI_WORK ?= work/sample
ui: setup
	mkdir -p $(UI_WORK)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui -h 127.0.0.1 -p 5000 --workers 1 \
		--backend-store-uri sqlite:///$(abspath $(UI_WORK))/mlruns.db & MLFLOW=$$!; \
	trap 'kill $$MLFLOW 2>/dev/null' EXIT INT TERM; \
	$(BIN)/dagster dev -m orchestration.definitions -h 127.0.0.1 -p 3000

dvc-repro: setup $(DVC_VENV)/.installed
	PATH=$(CURDIR)/$(BIN):$$PATH $(DVC_VENV)/bin/dvc repro
