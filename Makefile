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

# The whole suite twice: on the embedded default, then on PostgreSQL + Redis + S3 (moto) when they answer.
# In CI (CI=true) the production suite is never skipped.
test: install
	$(PY) -m pytest -m "not production"
	@if $(PY) -m tests.stacks; then \
		echo "== production suite: PostgreSQL 127.0.0.1:5432, Redis 127.0.0.1:6379, S3 (moto) =="; \
		FINETUNE_TEST_STACK=production $(PY) -m pytest; \
	elif [ "$${CI:-}" = "true" ]; then \
		echo "CI: PostgreSQL or Redis is not reachable; the production suite must run in CI" >&2; exit 1; \
	else \
		echo "SKIPPED the production suite: PostgreSQL (127.0.0.1:5432) or Redis (127.0.0.1:6379) not reachable"; \
	fi

run: install
	$(PY) -m app.cli up

lint: install
	$(VENV)/bin/ruff check app worker tests
	$(VENV)/bin/ruff format --check app worker tests

clean:
	rm -rf var .pytest_cache
