#!/usr/bin/env bash
# Installs and builds what the tests (default) or only the demo (--demo) need, caching
# what it can:
#   - Debian's postgresql server binaries (apt, only when missing)
#   - tests only: Debian's chromium (the report test opens the HTML report in headless
#     chromium), buildah, podman, runc and debootstrap (the image test builds the
#     Dockerfile and runs it read-only, see testbed/image.py)
#   - a virtualenv in .venv with the package and its test extras (skipped when
#     pyproject.toml is unchanged since the last install)
#   - kube-apiserver, etcd and the CloudQuery PostgreSQL destination from source
#     (testbed/build.sh; cached under ~/.cache/k8s-watcher, a second run rebuilds
#     nothing); tests only: the official CloudQuery k8s source the benchmark measures
set -euo pipefail
cd "$(dirname "$0")/.."

demo=false
case "${1:-}" in
  --demo) demo=true ;;
  "") ;;
  *) echo "usage: scripts/setup.sh [--demo]" >&2; exit 2 ;;
esac

missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
if ! $demo; then
  command -v chromium >/dev/null || missing+=(chromium)
  for tool in buildah podman runc debootstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian's ${missing[*]}"
  sudo_=""; [ "$(id -u)" = 0 ] || sudo_="sudo"
  $sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq "${missing[@]}" >/dev/null
fi

command -v go >/dev/null || { echo "setup: Go >= 1.26 is required to build the test control plane" >&2; exit 1; }

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$python" -m venv .venv
fi
stamp=$(sha256sum pyproject.toml | cut -c1-16)
if [ "$(cat .venv/.k8s-watcher-stamp 2>/dev/null)" != "$stamp" ]; then
  echo "setup: installing k8s-watcher and its test dependencies into .venv"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e ".[test]"
  echo "$stamp" > .venv/.k8s-watcher-stamp
fi

# The demo syncs into the destination only: the official k8s source (minutes of
# compiling) is for the tests and the benchmark (testbed/build-cloudquery.sh reads this).
if $demo; then export K8S_WATCHER_CQ_PLUGINS=destination; fi
testbed/build.sh
