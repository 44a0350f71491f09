# Two commands do all the set-up on a fresh machine: `make search` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: search test test-fast install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## The main job: a search of search_spaces/lstm.yaml on the built-in demo export.
search: $(STAMP)
	$(PY) -m lobsearch.tune search_spaces/lstm.yaml

## Every test tier a CPU machine can run (fast, ray and slow; not gpu).
test: $(STAMP)
	$(PY) -m pytest -m 'not gpu' -q

## The default, fast tier only.
test-fast: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache
