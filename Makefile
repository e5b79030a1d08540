# The README's two commands. Both set everything up first (idempotent, see scripts/setup.sh).
VENV ?= .venv
# The real-host environment (EasyEdit pins transformers==5.5.4): scripts/setup_hosts.sh, tests/hosts.
VENV_HOSTS ?= .venv-hosts
PYTEST_ARGS ?=
# make bench LIMIT=5: the quick run (item counts capped at 5, small speed settings).
LIMIT ?=

.PHONY: setup setup-hosts demo test test-hosts test-fast bench clean

setup:
	bash scripts/setup.sh

setup-hosts:
	VENV_HOSTS=$(VENV_HOSTS) bash scripts/setup_hosts.sh

## The main job: detoxify the embedded model with DINM on one shipped case, show before/after.
demo: setup
	$(VENV)/bin/detox demo

## Every test (unit tests on tiny random models + integration tests on the embedded model), then the
## real-host tests (EasyEdit's SafetyEditor and BaseEditor) in their own environment. Either failing fails.
test: setup setup-hosts
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-hosts

test-hosts: setup-hosts
	$(VENV_HOSTS)/bin/python -m pytest -p no:cacheprovider tests/hosts $(PYTEST_ARGS)

## Unit tests only (seconds).
test-fast: setup
	$(VENV)/bin/python -m pytest -m "not integration" $(PYTEST_ARGS)

## Every benchmark (about 85 minutes on a 2-core CPU; LIMIT=5 for the quick run), results in benchmarks/results/.
bench: setup
	@$(VENV)/bin/python -c "import matplotlib" 2>/dev/null || $(VENV)/bin/python -m pip install -q -e ".[bench]"
	$(VENV)/bin/python benchmarks/run_all.py $(if $(LIMIT),--limit $(LIMIT))

clean:
	rm -rf build dist *.egg-info .pytest_cache
