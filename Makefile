# Two commands for a new user: `make demo` (the main job end to end) and `make test` (the test suite).
# Each creates and fills the local virtual environment .venv when it is missing or out of date.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export WANDB_MODE ?= offline

.PHONY: install demo test test-all lint docs bench figures clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## Per-Sample IBA heatmaps of the built-in default model on the built-in shapes data.
demo: $(STAMP)
	$(PY) evaluate.py

## The default test suite (slow tests excluded); `make test-all` runs everything.
## lint-imports checks the layering contract in pyproject.toml (no import cycles between packages).
## The docs are built strictly (a broken link, a page missing from the nav or a bad docstring fails).
test: $(STAMP)
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -m "not slow" -n 2 --durations=15
	tmp=$$(mktemp -d) && NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir $$tmp; \
	  rc=$$?; rm -rf $$tmp; exit $$rc

test-all: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports

## The documentation site (docs/, mkdocs.yml) into site/; `$(VENV)/bin/mkdocs serve` previews it live.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

## Every benchmark, one after another, each printing its ratios (tens of minutes on two CPU cores; the first
## run of bench_precision_bounds.py also trains the ResNet-18 on 128 px shapes, about 20 minutes).
bench: $(STAMP)
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

## Every figure and table the docs quote (demo, Table 1, layer-wise SID, grids, benchmarks), into figures/
## with figures/README.md naming the command behind each (tens of minutes on two CPU cores); the six
## _shapes studies: .venv/bin/python experiments/figures.py --only studies (about an hour more).
figures: $(STAMP)
	$(PY) experiments/figures.py --out figures

clean:
	rm -rf outputs multirun site .pytest_cache .ruff_cache
