# The two commands of the README: `make run` and `make test`. Each sets itself up first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 5000
WORKERS ?= 2
THREADS ?= 8
PIP := $(BIN)/python -m pip --disable-pip-version-check
# The PostgreSQL server for the second test pass; the suite only uses this URL's database
# (the maintenance database `postgres`) to create and drop a database of its own per run.
export COLLECTOR_TEST_POSTGRES_URL ?= postgresql+psycopg://root@127.0.0.1:5432/postgres

.PHONY: run test test-sqlite test-postgresql lint flask migration bench clean

$(VENV)/.run-deps: requirements.txt
	@test -x $(BIN)/python || { echo "Creating $(VENV) with $(PYTHON)..."; $(PYTHON) -m venv $(VENV); }
	@echo "Installing dependencies (the first run takes ~2 minutes; pip builds pdqhash with the C++ compiler)..."
	$(PIP) install --progress-bar on --upgrade pip
	$(PIP) install --progress-bar on -r requirements.txt
	@touch $@

$(VENV)/.dev-deps: $(VENV)/.run-deps requirements-dev.txt
	@echo "Installing test dependencies..."
	$(PIP) install --progress-bar on -r requirements-dev.txt
	@touch $@

## Serve on http://$(HOST):$(PORT) (HOST=0.0.0.0 for phones on the same wifi)
run: $(VENV)/.run-deps
	$(BIN)/flask --app app db upgrade
	@echo "Plate Collector on http://$(HOST):$(PORT)/"
	nice $(BIN)/flask --app app plates run --stop-with $$PPID &  # the plate worker, off the upload path; ends with make
	$(BIN)/gunicorn --config gunicorn.conf.py --bind $(HOST):$(PORT) --workers $(WORKERS) --threads $(THREADS) \
		--access-logfile - 'app:create_app()'

## The whole suite on SQLite, then on PostgreSQL when one is reachable
test: test-sqlite test-postgresql

test-sqlite: $(VENV)/.dev-deps
	$(BIN)/python -m ruff check collector tests bench tools app.py
	$(BIN)/python -m pytest --db=sqlite $(ARGS)

test-postgresql: $(VENV)/.dev-deps
	@if $(BIN)/python tests/pg_available.py; then \
		$(BIN)/python -m pytest --db=postgresql $(ARGS); \
	elif [ -n "$$COLLECTOR_REQUIRE_POSTGRES" ]; then \
		echo "PostgreSQL is required (COLLECTOR_REQUIRE_POSTGRES) but not reachable at $$COLLECTOR_TEST_POSTGRES_URL"; exit 1; \
	else \
		echo "SKIPPED the PostgreSQL pass: no server at $$COLLECTOR_TEST_POSTGRES_URL (set COLLECTOR_TEST_POSTGRES_URL to use another)"; \
	fi

lint: $(VENV)/.dev-deps
	$(BIN)/python -m ruff check collector tests bench tools app.py

## The command line with the same settings as the server: make flask ARGS="users create ..."
flask: $(VENV)/.run-deps
	$(BIN)/flask --app app $(ARGS)

## A new database migration from the models: make migration MSG="add a note to photos"
migration: $(VENV)/.dev-deps
	$(BIN)/python tools/new_migration.py "$(MSG)"

bench: $(VENV)/.dev-deps
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) .pytest_cache
