# `make run` and `make test` do all set-up themselves: a .venv with requirements.txt.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
# Local development defaults; production sets DEBUG=0 and a SECRET_KEY.
export DEBUG ?= 1
SAMPLE_USERS ?= 2000

CHAOS_SECONDS ?= 600

.PHONY: run test lint bench chaos clean

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

# Migrate, load sample users, serve the admin on :8000 with a task cluster, run a job, keep serving.
run: $(VENV)/.installed
	$(PY) manage.py migrate --noinput
	$(PY) manage.py generate_sample_data --users $(SAMPLE_USERS)
	$(PY) manage.py runall

# The suite in parallel (pytest-xdist): its time goes mostly to waiting on real clusters and
# servers, not to the CPU, so more workers than cores pay. Each worker has its own test database
# (pytest-django suffixes its name with the worker's id), free ports and temporary folders.
# Compiled modules are kept even where PYTHONDONTWRITEBYTECODE is set (as in some CI images): else
# each worker, and each cluster and server the tests start, compiles (and pytest rewrites) them anew.
TEST_WORKERS ?= 4
test: $(VENV)/.installed
	PYTHONDONTWRITEBYTECODE= $(PY) -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: $(VENV)/.installed
	$(PY) -m tests.bench.foundation
	$(PY) -m tests.bench.engine
	$(PY) -m tests.bench.api
	$(PY) -m tests.bench.llm
	$(PY) -m tests.bench.recovery
	$(PY) -m tests.bench.scale
	$(PY) -m tests.bench.fairness

# Real clusters under random faults (restarts, outages, partitions, hostile LLM answers) on a
# PostgreSQL and a Redis server of its own, then every invariant checked (tests/chaos.py).
# Partitions need root and iproute2; without them the run says so and injects the rest
# (REQUIRE_NETNS=1, as in CI, makes it fail instead).
chaos: $(VENV)/.installed
	$(PY) -m tests.chaos --seconds $(CHAOS_SECONDS)

clean:
	rm -rf $(VENV) db.sqlite3* test_db.sqlite3*
