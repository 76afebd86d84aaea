# Both targets build .venv from nothing (idempotent: a stamp file records the installed deps).
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: venv test demo bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q torch==2.13.0
	$(VENV)/bin/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

test: venv
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

demo: venv
	$(VENV)/bin/dgt-interp demo

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
