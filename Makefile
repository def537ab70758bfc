# The two commands of README.md: `make demo` and `make test`. Everything else is a helper.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck scenarios migrations test-sqlite test-postgres bench install clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade "pip==25.3"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@# PC/SC support builds only where Debian's swig and libpcsclite-dev are installed (.ci/run installs them)
	@if command -v swig >/dev/null && test -e /usr/include/PCSC/winscard.h; then \
	  $(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,pcsc]'; \
	else echo "note: swig or libpcsclite-dev missing: PC/SC reader support not installed (its test will skip)"; fi
	@touch $(STAMP)

install: $(STAMP)

## demo: migrates the embedded SQLite database, loads the demo data and starts the server (Ctrl-C stops it)
demo: $(STAMP)
	$(BIN)/mynapoint demo

## test: lint, types, layer contracts, scenarios, migrations, the whole test suite on SQLite, then the
## integration tests again on PostgreSQL (what CI runs)
test: $(STAMP) lint typecheck
	$(BIN)/mynapoint scenarios run tests/scenarios > /dev/null
	$(CHECK_MIGRATIONS)
	$(TEST_SQLITE)
	@$(MAKE) --no-print-directory test-postgres

# the settings the tests use; the database URL is unset so that a developer's own does not leak in
CHECK_MIGRATIONS := env -u MYNAPOINT_DATABASE_URL DJANGO_SETTINGS_MODULE=mynapoint.config.test_settings \
	$(BIN)/python -m django makemigrations --check --dry-run
# the tests marked postgres (row and advisory locks, races, COPY) run in the PostgreSQL pass only
TEST_SQLITE := env -u MYNAPOINT_DATABASE_URL $(BIN)/python -m pytest -m 'not postgres'

## migrations: fails if a model change has no migration
migrations: $(STAMP)
	$(CHECK_MIGRATIONS)

## test-sqlite: the whole pytest suite on the embedded default, SQLite
test-sqlite: $(STAMP)
	$(TEST_SQLITE)

## test-postgres: the integration tests on PostgreSQL at MYNAPOINT_DATABASE_URL_FOR_TESTS (.ci/run sets it),
## else at postgres://postgres@127.0.0.1:5432/test if that answers; with neither, CI fails and a local run
## says it skipped the pass
PG_LOCAL := postgres://postgres@127.0.0.1:5432/test
test-postgres: $(STAMP)
	@if [ -n "$$MYNAPOINT_DATABASE_URL_FOR_TESTS" ]; then \
	  url="$$MYNAPOINT_DATABASE_URL_FOR_TESTS"; \
	elif command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h 127.0.0.1 -p 5432; then \
	  url="$(PG_LOCAL)"; \
	elif [ -n "$$CI" ]; then \
	  echo "CI: no PostgreSQL for the integration tests (.ci/run starts one)" >&2; \
	  exit 1; \
	else \
	  echo "PostgreSQL pass skipped: MYNAPOINT_DATABASE_URL_FOR_TESTS is unset" \
	    "and no server answers on 127.0.0.1:5432"; \
	  exit 0; \
	fi; \
	echo "MYNAPOINT_DATABASE_URL=$$url $(BIN)/python -m pytest tests/integration"; \
	MYNAPOINT_DATABASE_URL="$$url" $(BIN)/python -m pytest tests/integration

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

scenarios: $(STAMP)
	$(BIN)/mynapoint scenarios run tests/scenarios

## bench: figures, each against a baseline measured in the same run (provider: needs PostgreSQL)
bench: $(STAMP)
	$(BIN)/mynapoint bench rules
	$(BIN)/mynapoint bench logins
	@if command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h 127.0.0.1 -p 5432; then \
	  $(BIN)/mynapoint bench provider --repeat 3; else echo "provider benchmark skipped: no PostgreSQL on 127.0.0.1:5432"; fi

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
