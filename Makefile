# Development entry points: `make bench` (benchmark on an embedded default), `make bench-bias` (what carrying the DiT
# bias costs per attention backend: on a CUDA GPU, else its dry mode on CPU) and `make test` (the whole suite).
# Both create .venv first; torch==2.13.0 resolves to the CPU wheel, and stable-diffusion-sdkit (the ldm code the
# WebUI runs) goes in with --no-deps because its own pins would pull a CUDA torch.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FORGE_API := $(VENV)/forge-api
FORGE_API_STAMP := $(FORGE_API)/.installed

.PHONY: setup test bench bench-bias lint

setup: $(STAMP)

$(STAMP): requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-test.txt
	$(PY) -m pip install -q --no-deps stable-diffusion-sdkit==2.1.5
	touch $(STAMP)

# Forge's API stack (FastAPI 0.104 / Starlette 0.27 / pydantic 2) beside the WebUI v1.10.1 one in .venv: installed
# with --target and put first on PYTHONPATH for a second run of the API validation tests (a few seconds).
$(FORGE_API_STAMP): requirements-forge-api.txt $(STAMP)
	rm -rf $(FORGE_API)
	$(PY) -m pip install -q --target $(FORGE_API) -r requirements-forge-api.txt
	touch $(FORGE_API_STAMP)

# Last, javascript/todo.js under Node's own test runner (Node 20+, no packages). The shell expands the file names:
# Node 21 and later take the arguments as globs and no longer search a directory given as `tests/js/`.
test: $(STAMP) $(FORGE_API_STAMP)
	$(PY) -m ruff check todo_ext scripts tests install.py
	$(PY) -m pytest -q
	PYTHONPATH=$(FORGE_API) $(PY) -m pytest -q -p no:cacheprovider tests/webui/test_webui_api_validation.py
	node --test tests/js/*.test.js

bench: $(STAMP)
	$(PY) -m todo_ext.bench

bench-bias: $(STAMP)
	$(PY) -m todo_ext.bench.bias_bench
