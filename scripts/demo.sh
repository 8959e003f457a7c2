#!/usr/bin/env bash
# The main job without a cluster of your own: start two local control planes and a
# PostgreSQL server, run the k8s-watcher daemon on them, and `cloudquery sync` the
# inventory into PostgreSQL through registry: grpc. Prints what landed.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export CQ_TELEMETRY_LEVEL=none
exec .venv/bin/python -m testbed.demo "$@"
