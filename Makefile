# Stillroom: `make serve` runs the service, `make test` runs every check.
# Both install what they need (Debian packages included) and are safe to run again.

SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_GET := $(SUDO) apt-get -o DPkg::Lock::Timeout=600
export PYTHONSAFEPATH := 1

SERVE_DEBS := python3-venv tor
TEST_DEBS := $(SERVE_DEBS) firefox-esr e2fsprogs mount

.PHONY: serve test install install-test debs debs-test catalogs lint

serve: install
	$(BIN)/stillroom serve

test: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

# Debian packages, installed only when one is missing.
debs:
	dpkg -s $(SERVE_DEBS) >/dev/null 2>&1 || { $(APT_GET) update -qq && $(APT_GET) install -y -qq $(SERVE_DEBS); }

debs-test:
	dpkg -s $(TEST_DEBS) >/dev/null 2>&1 || { $(APT_GET) update -qq && $(APT_GET) install -y -qq $(TEST_DEBS); }

$(BIN)/python:
	python3 -m venv $(VENV)

# The catalogs are compiled before the install so the strict editable install links them.
catalogs: $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip "babel~=2.17"
	$(BIN)/pybabel compile -d locale --statistics

install: debs catalogs
	$(BIN)/python -m pip install -q --config-settings editable_mode=strict -e .

install-test: debs-test catalogs
	$(BIN)/python -m pip install -q --config-settings editable_mode=strict -e ".[test]"
