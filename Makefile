# The README's two commands. Both set everything up first (idempotent, see scripts/setup.sh).
VENV ?= .venv
PYTEST_ARGS ?=

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

clean:
	rm -rf build dist *.egg-info .pytest_cache
