#!/usr/bin/env bash
# The fast loop while developing: lint and format check, the import contracts and
# the type check (pyproject.toml), then the unit tests (fakes,
# no API server, no PostgreSQL, no CloudQuery CLI); well under a minute. Needs .venv
# (scripts/setup.sh once). scripts/test.sh runs everything. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check watcher testbed tests bench
.venv/bin/ruff format --check watcher testbed tests bench
.venv/bin/lint-imports
.venv/bin/mypy
.venv/bin/python -m pytest -q -p no:cacheprovider tests/unit "$@"
