# Stillroom: `make serve` runs the service, `make test` runs every check.
# Both install what they need (Debian packages included) and are safe to run again.

SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_GET := $(SUDO) apt-get -o DPkg::Lock::Timeout=600
export PYTHONSAFEPATH := 1

SERVE_DEBS := python3-venv tor
TEST_DEBS := $(SERVE_DEBS) firefox-esr e2fsprogs mount faketime

.PHONY: serve test install install-test debs debs-test catalogs lint axe FORCE

serve: install
	$(BIN)/stillroom serve

test: install-test axe
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

# Debian packages, installed only when one is missing.
debs:
	@dpkg -s $(SERVE_DEBS) >/dev/null 2>&1 || { $(APT_GET) update -qq && $(APT_GET) install -y -qq $(SERVE_DEBS); }

debs-test:
	@dpkg -s $(TEST_DEBS) >/dev/null 2>&1 || { $(APT_GET) update -qq && $(APT_GET) install -y -qq $(TEST_DEBS); }

$(BIN)/python:
	python3 -m venv $(VENV)

# Stamp files in the virtual environment make a repeat run install nothing when nothing changed.
BABEL_STAMP := $(VENV)/.babel-installed
SERVE_STAMP := $(VENV)/.serve-installed
TEST_STAMP := $(VENV)/.test-installed
CATALOGS := $(patsubst %.po,%.mo,$(wildcard locale/*/LC_MESSAGES/messages.po))
# The strict editable install links every file of the package, so it is redone when the set
# of files changes (a new module, template or catalog), not when a file's contents change.
PACKAGE_FILES := $(VENV)/.package-files

$(BABEL_STAMP): | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip "babel~=2.17"
	touch $@

locale/%/LC_MESSAGES/messages.mo: locale/%/LC_MESSAGES/messages.po $(BABEL_STAMP)
	$(BIN)/pybabel compile -i $< -o $@ --statistics

# The catalogs are compiled before the install so the strict editable install links them.
catalogs: $(CATALOGS)

$(PACKAGE_FILES): FORCE | $(BIN)/python $(CATALOGS)
	@find crypto onion webapp static_nojs locale -type f -not -path '*/__pycache__/*' | sort > $@.new
	@if cmp -s $@.new $@; then rm $@.new; else mv $@.new $@; fi

$(SERVE_STAMP): pyproject.toml $(PACKAGE_FILES)
	$(BIN)/python -m pip install -q --config-settings editable_mode=strict -e ".[assist]"
	touch $@

$(TEST_STAMP): pyproject.toml $(PACKAGE_FILES)
	$(BIN)/python -m pip install -q --config-settings editable_mode=strict -e ".[test]"
	touch $@ $(SERVE_STAMP)

install: debs $(SERVE_STAMP)

install-test: debs-test $(TEST_STAMP)

# axe-core, the accessibility engine that tests/test_a11y.py puts into each page. It comes
# from the npm registry as a pinned tarball, checked against the integrity the registry
# publishes for that version, and is fetched once: a repeat run downloads nothing. No npm
# is needed, only Python (the download and the check) and tar.
AXE_VERSION := 4.14.1
AXE_INTEGRITY := sha512-FHfa+lmNjQZfJz1q8wKqIDwC6DExcHt/pkjNQb09a3NPjCKg2rhu5qb2S4r76ASyFNNtuFooJpZe37OgudVGtQ==
AXE_DIR := $(VENV)/axe-core
AXE_TGZ := $(AXE_DIR)/axe-core-$(AXE_VERSION).tgz
AXE_JS := $(AXE_DIR)/axe.min.js

$(AXE_TGZ): | $(BIN)/python
	mkdir -p $(AXE_DIR)
	$(BIN)/python -c 'import sys, urllib.request; urllib.request.urlretrieve(*sys.argv[1:])' \
		https://registry.npmjs.org/axe-core/-/axe-core-$(AXE_VERSION).tgz $@.part
	@got=$$($(BIN)/python -c 'import base64, hashlib, sys; \
		print("sha512-" + base64.b64encode(hashlib.sha512(open(sys.argv[1], "rb").read()).digest()).decode())' $@.part); \
	if [ "$$got" != "$(AXE_INTEGRITY)" ]; then \
		echo "axe-core $(AXE_VERSION): integrity $$got, expected $(AXE_INTEGRITY)" >&2; rm -f $@.part; exit 1; fi
	mv $@.part $@

$(AXE_JS): $(AXE_TGZ)
	tar -xzf $< -C $(AXE_DIR) --strip-components=1 package/axe.min.js
	touch $@

axe: $(AXE_JS)

FORCE:
