#!/usr/bin/env bash
# Builds the real control-plane binaries the tests use (kube-apiserver, etcd) from the
# Go module proxy, through the wrapper module in testbed/kube, the benchmark's etcd
# load generator (testbed/kube/etcdload), and (build-cloudquery.sh) the real CloudQuery
# PostgreSQL destination and the official k8s source. Output goes to a cache directory
# outside the work tree, stamped with the hash of the inputs, so a second run (or a
# fresh clone on the same machine) rebuilds nothing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${K8S_WATCHER_TESTBED_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/k8s-watcher/testbed/bin}
kube_version=v1.37.2
mkdir -p "$out"

stamp=$( (cat "$here/kube/go.mod" "$here/kube/go.sum" "$here/kube/etcdload/main.go" "$0"; echo "$kube_version") | sha256sum | cut -c1-16)
if [[ -f "$out/.stamp" && "$(cat "$out/.stamp")" == "$stamp" && -x "$out/kube-apiserver" && -x "$out/etcd" && -x "$out/etcdload" ]]; then
  echo "testbed binaries up to date in $out"
  exec "$here/build-cloudquery.sh"
fi

export CGO_ENABLED=0
cd "$here/kube"
echo "building etcd -> $out/etcd"
go build -pgo=off -trimpath -o "$out/etcd" go.etcd.io/etcd/server/v3
echo "building etcdload -> $out/etcdload"
go build -pgo=off -trimpath -o "$out/etcdload" ./etcdload
minor=$(echo "$kube_version" | cut -d. -f2)
echo "building kube-apiserver $kube_version -> $out/kube-apiserver (several minutes on 2 cores)"
go build -pgo=off -trimpath -o "$out/kube-apiserver" \
  -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$kube_version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean" \
  k8s.io/kubernetes/cmd/kube-apiserver
echo "$stamp" > "$out/.stamp"
"$out/kube-apiserver" --version
exec "$here/build-cloudquery.sh"
