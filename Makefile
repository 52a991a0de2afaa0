# The two set-up commands: `make demo` and `make test`. Both create what they need on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
LS_VENV := .venv-ls
LABEL_STUDIO_VERSION := 1.23.2

.PHONY: demo test install install-ls test-fast clean migration chromium

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# Label Studio pins its own Django stack, so it lives in a venv of its own.
$(LS_VENV)/.installed:
	test -x $(LS_VENV)/bin/python || $(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install -q --upgrade pip
	$(LS_VENV)/bin/python -m pip install -q 'label-studio==$(LABEL_STUDIO_VERSION)'
	touch $@

install: $(VENV)/.installed

install-ls: $(LS_VENV)/.installed

demo: install
	$(VENV)/bin/geocurate demo

# Headless browser for the threshold report's rendering test (Debian package; installed only when missing).
chromium:
	command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium)

# In parallel: TEST_WORKERS test processes (pytest-xdist); tests sharing a Label Studio server, Celery workers or one
# module-wide run stay on one process each (xdist_group, tests/conftest.py). TEST_WORKERS=0 runs them in one process.
# Four processes on two cores: much of the suite waits (subprocesses starting, servers, leases running out), so two
# would leave the cores idle (measured on this 2-core machine: 255 s with 2, 199 s with 4).
TEST_WORKERS ?= 4
test: install install-ls chromium
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -ra --timeout=900 -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -ra -x -m 'not labelstudio and not e2e and not slow' $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(LS_VENV) geocurate.db geocurate-data exports adapters

# Until the first release the schema is one migration, regenerated from db/models.py after a model change.
migration: install
	rm -f db/migrations/versions/0001_initial_schema.py /tmp/geocurate-migration.db
	GEOCURATE_DATABASE_URL=sqlite:////tmp/geocurate-migration.db $(VENV)/bin/alembic revision --autogenerate -m "initial schema" --rev-id 0001
	rm -f /tmp/geocurate-migration.db
