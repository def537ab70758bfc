# The two commands of README.md: `make demo` and `make test`. Everything else is a helper.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck scenarios bench install clean

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

## demo: runs the programme scenarios on the embedded default and prints their outcome table
demo: $(STAMP)
	$(BIN)/mynapoint parameters show
	$(BIN)/mynapoint scenarios run tests/scenarios

## test: lint, types, layer contracts, scenarios and the test suite (what CI runs)
test: $(STAMP) lint typecheck
	$(BIN)/mynapoint scenarios run tests/scenarios > /dev/null
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

scenarios: $(STAMP)
	$(BIN)/mynapoint scenarios run tests/scenarios

bench: $(STAMP)
	$(BIN)/mynapoint bench rules

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
