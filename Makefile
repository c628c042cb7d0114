# The two commands of the README: `make run` and `make test`. Each sets itself up first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 5000
WORKERS ?= 2
THREADS ?= 8
export COLLECTOR_TEST_POSTGRES_URL ?= postgresql+psycopg://root@127.0.0.1:5432/test

.PHONY: run test test-sqlite test-postgresql lint bench clean

$(VENV)/.run-deps: requirements.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $@

$(VENV)/.dev-deps: $(VENV)/.run-deps requirements-dev.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $@

## Serve on http://$(HOST):$(PORT) (HOST=0.0.0.0 for phones on the same wifi)
run: $(VENV)/.run-deps
	$(BIN)/flask --app app db upgrade
	@echo "Plate Collector on http://$(HOST):$(PORT)/"
	nice $(BIN)/flask --app app plates run --stop-with $$PPID &  # the plate worker, off the upload path; ends with make
	$(BIN)/gunicorn --bind $(HOST):$(PORT) --workers $(WORKERS) --worker-class gthread --threads $(THREADS) \
		--timeout 120 --access-logfile - 'app:create_app()'

## The whole suite on SQLite, then on PostgreSQL when one is reachable
test: test-sqlite test-postgresql

test-sqlite: $(VENV)/.dev-deps
	$(BIN)/python -m ruff check collector tests bench app.py
	$(BIN)/python -m pytest --db=sqlite

test-postgresql: $(VENV)/.dev-deps
	@if $(BIN)/python tests/pg_available.py; then \
		$(BIN)/python -m pytest --db=postgresql; \
	elif [ -n "$$COLLECTOR_REQUIRE_POSTGRES" ]; then \
		echo "PostgreSQL is required (COLLECTOR_REQUIRE_POSTGRES) but not reachable at $$COLLECTOR_TEST_POSTGRES_URL"; exit 1; \
	else \
		echo "SKIPPED the PostgreSQL pass: no server at $$COLLECTOR_TEST_POSTGRES_URL (set COLLECTOR_TEST_POSTGRES_URL to use another)"; \
	fi

lint: $(VENV)/.dev-deps
	$(BIN)/python -m ruff check collector tests bench app.py

bench: $(VENV)/.dev-deps
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) .pytest_cache
