# The two commands a newcomer runs: `make test` and `make demo`. Both build .venv from nothing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: test demo clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

$(VENV)/.installed-base: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -e '.[torch,test]'
	touch $@

test: $(VENV)/.installed-test
	$(PY) -m pytest

demo: $(VENV)/.installed-base
	$(PY) -m rsclip_jax.demo

clean:
	rm -rf $(VENV)
