# Set-up and entry points. `make demo` runs the full demo, `make test` runs the lint, builds the docs and runs
# the test suite, `make docs` builds the documentation site into build/site; all create the virtualenv if missing and
# install torch==2.13.0 (CPU) before the project, and beside it the DuckDB that wrote the old single-file homes
# (`workbench migrate` reads them with it).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test docs system-deps lint

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[test]"
	$(BIN)/pip install -q --no-deps --target $(VENV)/legacy-duckdb duckdb==2.0.1
	touch $(STAMP)

install: $(STAMP)

# Debian's chromium for the browser tests (Playwright's own browser download does not work offline), and
# Debian's postgresql for the tests that run a throwaway PostgreSQL server as the lake's catalog.
system-deps:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	@{ command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; } || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }

demo: install
	$(BIN)/workbench demo

# The documentation site (mkdocs.yml) into build/site: --strict fails on a broken link, a missing page or an
# undocumented command. Quiet on success, the whole log on failure: mkdocs' own --quiet would drop the
# warnings that --strict counts, so a broken site would pass. NO_MKDOCS_2_WARNING: no end-of-life banner.
docs: install
	@out=$$(NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict 2>&1) || { printf '%s\n' "$$out" >&2; exit 1; }

# Lint and types (settings in pyproject.toml): ruff's rules and its formatter's check, then mypy.
LINT_PATHS := workbench pages pipelines benchmarks tests app.py docs/hooks
lint: install
	$(BIN)/ruff check -q $(LINT_PATHS)
	$(BIN)/ruff format -q --check $(LINT_PATHS)
	$(BIN)/mypy workbench pages pipelines benchmarks

# The suite on TEST_WORKERS processes (pytest-xdist; 0: in this process; default one per core, 2 to 4: each
# worker runs its own MLflow server beside the servers its tests start), a test file per worker at a time
# (--dist loadfile: a file's module fixtures are built once), handed out in collection order
# (--no-loadscope-reorder: tests/conftest.py collects the longest files first); the first worker that needs the
# session demo home builds it and the others copy it; each worker starts its own MLflow server.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); echo $$(( n < 2 ? 2 : n > 4 ? 4 : n )))
test: install system-deps lint docs
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc
