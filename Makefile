# From a fresh clone on Debian/Ubuntu:
#   make test   install Prometheus/Alertmanager if missing, set up .venv, run ruff, mypy and pytest
#   make demo   set up .venv and run the exporter on its built-in synthetic data
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test
.DELETE_ON_ERROR:
# system-deps may install python3-venv, which venv needs: keep the order.
.NOTPARALLEL:

VENV := .venv
VPY := $(VENV)/bin/python
# Touched after a successful pip install; pip reruns whenever pyproject.toml is newer.
STAMP := $(VENV)/.installed

# First Python >= 3.11 on PATH, unless given: make test PYTHON=/usr/bin/python3.12
ifndef PYTHON
PYTHON := $(firstword $(foreach p,python3 python3.13 python3.12 python3.11,\
	$(shell $(p) -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 && echo $(p))))
endif

# Binaries the integration tests start, and the Debian packages that ship them.
SERVER_BINARIES := prometheus promtool prometheus-alertmanager
SERVER_PACKAGES := prometheus prometheus-alertmanager
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
APT_GET := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get

.PHONY: test demo venv system-deps clean

test: system-deps venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VPY) -m pytest

demo: venv
	$(VENV)/bin/anomaly-exporter demo $(DEMO_ARGS)

venv: $(STAMP)

$(STAMP): pyproject.toml
	@if [ -z "$(PYTHON)" ]; then echo "error: no python3 >= 3.11 on PATH (set PYTHON=...)" >&2; exit 1; fi
	@if [ ! -x $(VPY) ] && ! $(PYTHON) -c 'import ensurepip' 2>/dev/null; then \
		echo "error: $(PYTHON) cannot create venvs; install python3-venv (make test does)" >&2; exit 1; fi
	[ -x $(VPY) ] || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --disable-pip-version-check --no-input -e '.[test]'
	touch $@

# apt only when something is missing, so the target is a no-op (and needs no root) on a ready machine.
system-deps:
	@missing=""; \
	for b in $(SERVER_BINARIES); do command -v $$b >/dev/null || missing="$$missing $$b"; done; \
	packages=""; \
	if [ -n "$$missing" ]; then packages="$(SERVER_PACKAGES)"; fi; \
	if [ -n "$(PYTHON)" ] && ! $(PYTHON) -c 'import ensurepip' 2>/dev/null; then \
		packages="$$packages python3-venv"; missing="$$missing ensurepip"; fi; \
	if [ -n "$$packages" ]; then \
		echo "missing:$$missing -> apt-get install $${packages# }"; \
		$(APT_GET) update; \
		$(APT_GET) install -y --no-install-recommends $$packages; \
	fi

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
