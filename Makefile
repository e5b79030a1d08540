# The README's two commands. Both set everything up first (idempotent, see scripts/setup.sh).
VENV ?= .venv
PYTEST_ARGS ?=
# make bench LIMIT=5: the quick run (item counts capped at 5, small speed settings).
LIMIT ?=

.PHONY: setup demo test test-fast bench clean

setup:
	bash scripts/setup.sh

## The main job: detoxify the embedded model with DINM on one shipped case, show before/after.
demo: setup
	$(VENV)/bin/detox demo

## Every test (unit tests on tiny random models + integration tests on the embedded model).
test: setup
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

## Unit tests only (seconds).
test-fast: setup
	$(VENV)/bin/python -m pytest -m "not integration" $(PYTEST_ARGS)

## Every benchmark (about 60 minutes on a 2-core CPU; LIMIT=5 for the quick run), results in benchmarks/results/.
bench: setup
	@$(VENV)/bin/python -c "import matplotlib" 2>/dev/null || $(VENV)/bin/python -m pip install -q -e ".[bench]"
	$(VENV)/bin/python benchmarks/run_all.py $(if $(LIMIT),--limit $(LIMIT))

clean:
	rm -rf build dist *.egg-info .pytest_cache
