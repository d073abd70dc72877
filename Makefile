# Phoenix: the two commands are `make up` and `make test`. Both create .venv on first use.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
UP_ARGS ?=
PYTEST_ARGS ?=

.PHONY: up status test install install-dev protos check-protos lint typecheck pytest clean help \
	system-deps

help:
	@echo "make up      start Phoenix locally (NATS, etcd, a local CA, all five services)"
	@echo "make status  show each replica of the running stack (STATUS_ARGS='-o json')"
	@echo "make test    run the whole test suite (installs what it needs)"
	@echo "make protos  regenerate the Python stubs from protos/"
	@echo "make lint    ruff and mypy"

$(VENV)/bin/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Phoenix needs Python 3.11; set PYTHON=/path/to/python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Reinstall when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

up: install
	$(VENV)/bin/phoenixctl up $(UP_ARGS)

status: install
	$(VENV)/bin/phoenixctl status $(STATUS_ARGS)

protos: install-dev
	$(PY) scripts/gen_protos.py

check-protos: install-dev
	PYTHON=$(PY) BUF=$(VENV)/bin/buf bash scripts/check_protos.sh

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy libs/phoenixcp services

pytest: install-dev system-deps
	$(PY) -m pytest $(PYTEST_ARGS)

# System programs the tests start (Debian's victoria-metrics; wrk for bench/): installed with
# apt-get when missing and running as root (CI), else it says how. Silent when present.
system-deps:
	@bash scripts/ensure_system_deps.sh

test: check-protos lint pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
