# One command each: `make serve` (set up and serve on SQLite), `make test`; `make run` decides
# two worked examples on the command line.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup serve run test lint bench assets clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,mcp,openai-agents,langgraph]'
	touch $(STAMP)

setup: $(STAMP)

serve: setup
	$(BIN)/stage0 serve

run: setup
	$(BIN)/stage0 policy show
	@echo
	$(BIN)/stage0 check examples/fintech-payout.json --format text
	@echo
	$(BIN)/stage0 check examples/deferred-deployment.json --format text || [ $$? -eq 10 ]

lint: setup
	$(BIN)/ruff check src tests bench examples
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/engine.py
	$(BIN)/python bench/http.py
	$(BIN)/python bench/rules.py

# Re-vendor the console's browser assets (htmx) from the npm registry, checked against
# src/stage0/console/assets.lock.json; the result is committed, so nothing is fetched at run time.
assets: setup
	$(BIN)/python -m stage0.console.assets

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
