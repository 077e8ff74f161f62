# The fast loop and the full suite, run with the tools installed in $(VENV).
#   make check   format, lint, types, import contracts, tests without Docker (seconds)
#   make test    README's test command: everything, against real Docker (minutes)
#   make format  rewrite formatting and apply ruff's safe fixes
VENV ?= .venv
BIN := $(VENV)/bin
SOURCES := server tests benchmarks

# The package from this checkout: a no-op beside an editable install of it, and needed where
# $(VENV) holds an install of another checkout.
export PYTHONPATH := $(CURDIR)/server$(if $(PYTHONPATH),:$(PYTHONPATH))

.PHONY: check test format

check:
	$(BIN)/ruff format --check $(SOURCES)
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -m "not docker"

test:
	$(BIN)/python -m pytest

format:
	$(BIN)/ruff format $(SOURCES)
	$(BIN)/ruff check --fix $(SOURCES)
