#!/usr/bin/env bash
# The main job without a cluster of your own: start two local control planes and a
# PostgreSQL server, run the k8s-watcher daemon on them, and `cloudquery sync` the
# inventory into PostgreSQL through registry: grpc. Prints what landed. Sets up only
# what the demo needs (scripts/setup.sh --demo): scripts/test.sh installs the rest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --demo
export CQ_TELEMETRY_LEVEL=none
# The test bed checks its binaries before it starts: the destination is all it syncs to.
export K8S_WATCHER_CQ_PLUGINS=destination
exec .venv/bin/python -m testbed.demo "$@"
