#!/usr/bin/env bash
# The whole test suite on a fresh machine: set up (cached), lint, then pytest against
# real API servers, PostgreSQL and the CloudQuery CLI (lint: ruff, the import
# contracts, mypy; see scripts/check.sh). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export CQ_TELEMETRY_LEVEL=none
.venv/bin/ruff check watcher testbed tests bench
.venv/bin/ruff format --check watcher testbed tests bench
.venv/bin/lint-imports
.venv/bin/mypy
# Three workers on the 2-core machine: the tests wait on API servers, PostgreSQL and
# the CLI about half their time; a file's tests stay in one worker (its fixtures).
.venv/bin/python -m pytest -n "${K8S_WATCHER_TEST_WORKERS:-3}" --dist loadfile "$@"
