# The known-good torch pair is installed first (served from this machine's disk); pyproject keeps ranges open.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: install test demo run lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PINS)
	$(PIP) install -q -e '.[dev,prod]'
	touch $@

test: install
	$(PY) -m pytest

run: install
	$(PY) -m app.cli up

lint: install
	$(VENV)/bin/ruff check app worker tests
	$(VENV)/bin/ruff format --check app worker tests

clean:
	rm -rf var .pytest_cache
