# Two commands: `make run` (set up and serve https://localhost:8443/) and `make test`.
# Everything else here is a step those two take, except `make bench` (docs/benchmarks.md).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# sslyze pins cryptography<47, the project cryptography 50: it gets a virtualenv of its own.
SSLYZE_VENV := $(VENV)/sslyze
PORT ?= 8443

.PHONY: run test setup certs migrate static lint daphne clean bench lock superuser

run: setup static
	DJANGO_DEBUG=1 $(PY) manage.py runserver --tls 127.0.0.1:$(PORT)

# The whole suite twice: on SQLite, then on the PostgreSQL server at TEST_POSTGRES (each run
# creates its own databases there and drops them at the end). The fresh-machine walkthrough and
# the multi-host test run once: each starts a PostgreSQL of its own, whatever TEST_POSTGRES says.
TEST_POSTGRES ?= postgres://postgres@127.0.0.1:5432/postgres

test: setup $(SSLYZE_VENV)/.installed tests/js/node_modules/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	node tests/js/test_page.mjs
	node tests/js/test_realtime_module.mjs
	node tests/js/test_live_html.mjs
	$(PY) -m pytest
	TEST_DATABASE_URL=$(TEST_POSTGRES) $(PY) -m pytest --ignore=tests/test_walkthrough.py \
		--ignore=tests/test_hosts.py

# What `make run` needs; the sslyze virtualenv is for the tests only.
setup: $(VENV)/.installed certs migrate

# requirements-dev.lock: requirements-dev.txt (and requirements.txt) with every transitive
# dependency pinned and hashed; `make lock` makes every .lock file again after a .txt changes
# (also requirements-sslyze.lock and requirements-bench.lock).
$(VENV)/.installed: requirements-dev.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --require-hashes -r requirements-dev.lock
	touch $@

PIP_TOOLS := $(VENV)/pip-tools

lock:
	$(PYTHON) -m venv $(PIP_TOOLS)
	$(PIP_TOOLS)/bin/python -m pip install --quiet pip-tools==7.6.2
	for name in requirements requirements-dev requirements-sslyze requirements-bench; do \
		$(PIP_TOOLS)/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
			--no-emit-index-url --no-emit-find-links --output-file $$name.lock $$name.txt; \
	done

$(SSLYZE_VENV)/.installed: requirements-sslyze.lock $(VENV)/.installed
	$(PYTHON) -m venv $(SSLYZE_VENV)
	$(SSLYZE_VENV)/bin/python -m pip install --quiet --require-hashes -r requirements-sslyze.lock
	touch $@

certs: $(VENV)/.installed
	DJANGO_DEBUG=1 $(PY) manage.py devcert

migrate: $(VENV)/.installed
	DJANGO_DEBUG=1 $(PY) manage.py migrate --noinput

# A staff user for the admin, in the development database.
superuser: setup
	DJANGO_DEBUG=1 $(PY) manage.py createsuperuser

static: $(VENV)/.installed
	DJANGO_DEBUG=1 $(PY) manage.py collectstatic --noinput --verbosity 0

# The production command from the README (needs DJANGO_SECRET_KEY; debug off): realtime-daphne
# (daphne's command line with realtime's Server) on the realtime: endpoint, Mozilla's intermediate TLS profile (REALTIME_TLS_PROFILE does not apply here).
daphne: setup static
	$(PY) -m realtime.server -e realtime:$(PORT):privateKey=certs/localhost-key.pem:certKey=certs/localhost.pem \
		project.asgi:application

# Benchmarks against the peers (docs/benchmarks.md): BENCH=quick (default, a few minutes) or
# BENCH=full (about 20). Writes bench/results/latest.{json,md} and fanout.png.
BENCH ?= quick

bench: $(VENV)/.installed-bench bench/node/node_modules/.installed
	$(PY) -m bench.run --mode $(BENCH)

$(VENV)/.installed-bench: requirements-bench.lock $(VENV)/.installed
	$(PY) -m pip install --quiet --require-hashes -r requirements-bench.lock
	touch $@

# axe-core, injected into Chromium by the accessibility tests (tests/test_page_ui.py).
tests/js/node_modules/.installed: tests/js/package.json tests/js/package-lock.json
	cd tests/js && npm ci --no-audit --no-fund
	touch $@

bench/node/node_modules/.installed: bench/node/package.json bench/node/package-lock.json
	cd bench/node && npm ci --no-audit --no-fund
	touch $@

clean:
	rm -rf $(VENV) staticfiles .pytest_cache .ruff_cache
