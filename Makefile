# Two commands do all the set-up on a fresh machine: `make search` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: search test test-fast install browser clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## The main job: a search of search_spaces/lstm.yaml on the built-in demo export.
search: $(STAMP)
	$(PY) -m lobsearch.tune search_spaces/lstm.yaml

## Headless Chromium for the report's browser test (Debian's package, installed when root).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	  || echo "chromium is not installed: the report's browser test will be skipped"

## Every test tier a CPU machine can run (fast, ray and slow; not gpu).
test: $(STAMP) browser
	$(PY) -m pytest -m 'not gpu' -q

## The default, fast tier only.
test-fast: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache
