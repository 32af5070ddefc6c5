# Every target sets up .venv first (about 2.5 min and 6 GB on a fresh machine).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1

.PHONY: install chromium run demo test test-full bench bench-penalty bench-data format

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,cluster,wandb,bench]"
	touch $@

install: $(VENV)/.installed

# Headless Chromium for the report's browser test (Debian package; as root; no-op if present).
chromium:
	command -v chromium >/dev/null 2>&1 || { apt-get update && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; }

run: install
	$(PY) train.py

demo: install
	$(PY) -m spec_align.demo

test: install
	$(PY) -m pytest -m "not slow"

test-full: install
	$(PY) -m pytest

bench: install
	$(PY) scripts/bench_spec.py

bench-penalty: install
	$(PY) scripts/bench_penalty.py

bench-data: install
	$(PY) scripts/bench_data.py

format: install
	$(PY) -m ruff format . && $(PY) -m ruff check --fix .
