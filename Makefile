# Development entry points: `make bench` (benchmark on an embedded default) and `make test` (the whole suite).
# Both create .venv first; torch==2.13.0 resolves to the CPU wheel, and stable-diffusion-sdkit (the ldm code the
# WebUI runs) goes in with --no-deps because its own pins would pull a CUDA torch.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test bench lint

setup: $(STAMP)

$(STAMP): requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-test.txt
	$(PY) -m pip install -q --no-deps stable-diffusion-sdkit==2.1.5
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m ruff check todo_ext scripts tests install.py
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m todo_ext.bench
