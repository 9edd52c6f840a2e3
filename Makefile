# One command each: `make serve` (set up and serve on SQLite), `make test`; `make run` decides
# two worked examples on the command line.
#
# `make serve` and `make run` install the package alone (its runtime dependencies, no extras);
# `make test` adds the dev tools and the integration extras to the same virtualenv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
RUNTIME_STAMP := $(VENV)/.installed-runtime
DEV_STAMP     := $(VENV)/.installed-dev

.PHONY: setup dev serve run test test-prereqs lint bench assets docs-images clean

$(RUNTIME_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# the distribution was called `stage0` before 0.1.0 (a name taken on the package index)
	$(BIN)/python -m pip uninstall --quiet --yes stage0 2>/dev/null || true
	$(BIN)/python -m pip install --quiet -e .
	touch $(RUNTIME_STAMP)

$(DEV_STAMP): $(RUNTIME_STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,mcp,openai-agents,langgraph,nats,otel]'
	touch $(DEV_STAMP)

setup: $(RUNTIME_STAMP)

dev: $(DEV_STAMP)

serve: setup
	$(BIN)/stage0 serve

run: setup
	$(BIN)/stage0 policy show
	@echo
	$(BIN)/stage0 check examples/fintech-payout.json --format text
	@echo
	$(BIN)/stage0 check examples/deferred-deployment.json --format text || [ $$? -eq 10 ]

lint: dev
	$(BIN)/ruff check src tests bench examples
	$(BIN)/mypy

# What the tests need beside the virtualenv: a PostgreSQL server (started here when it is
# installed locally and down) and Debian's chromium (installed here when run as root with apt).
test-prereqs:
	@scripts/test-prereqs

test: lint test-prereqs
	$(BIN)/python -m pytest

bench: dev
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/engine.py
	$(BIN)/python bench/http_check.py
	$(BIN)/python bench/rules.py

# Re-vendor the console's browser assets (htmx) from the npm registry, checked against
# src/stage0/console/assets.lock.json; the result is committed, so nothing is fetched at run time.
assets: dev
	$(BIN)/python -m stage0.console.assets

# Regenerate the console screenshots in docs/img (the browser test writes them to a temporary
# folder otherwise).
docs-images: dev
	STAGE0_DOCS_IMAGES=docs/img $(BIN)/python -m pytest -q tests/service/test_console_browser.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
