#!/usr/bin/env bash
# Builds the real control-plane binaries the tests use (kube-apiserver, etcd) from the
# Go module proxy, through the wrapper module in testbed/kube, the benchmark's etcd
# load generator (testbed/kube/etcdload), the live test bed's parts (testbed/live.py:
# kube-controller-manager and kube-scheduler from the same wrapper, kwok and its default
# Stages from testbed/kwok, a module of its own), and (build-cloudquery.sh) the real CloudQuery
# PostgreSQL destination and the official k8s source. Output goes to a cache directory
# outside the work tree, stamped with the hash of the inputs, so a second run (or a
# fresh clone on the same machine) rebuilds nothing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${K8S_WATCHER_TESTBED_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/k8s-watcher/testbed/bin}
kube_version=v1.37.2
mkdir -p "$out"
# One build at a time: tests, the demo and a setup may ask at once; the others wait
# here and then find the binaries up to date.
exec 9>"$out/.build.lock"
flock 9

stamp=$( (cat "$here/kube/go.mod" "$here/kube/go.sum" "$here/kube/etcdload/main.go" "$here/kwok/go.mod" "$here/kwok/go.sum" "$0"; echo "$kube_version") | sha256sum | cut -c1-16)
built=(kube-apiserver etcd etcdload kube-controller-manager kube-scheduler kwok kwok-stages.yaml)
up_to_date=true
for f in "${built[@]}"; do [[ -e "$out/$f" ]] || up_to_date=false; done
if [[ $up_to_date == true && -f "$out/.stamp" && "$(cat "$out/.stamp")" == "$stamp" ]]; then
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
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$kube_version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
echo "building kube-apiserver $kube_version -> $out/kube-apiserver (several minutes on 2 cores)"
go build -pgo=off -trimpath -o "$out/kube-apiserver" -ldflags "$ldflags" k8s.io/kubernetes/cmd/kube-apiserver
# The live test bed's controllers and scheduler share most packages with kube-apiserver
# (same module, same build cache): each adds a few minutes on a cold cache.
for cmd in kube-controller-manager kube-scheduler; do
  echo "building $cmd $kube_version -> $out/$cmd"
  go build -pgo=off -trimpath -o "$out/$cmd" -ldflags "$ldflags" "k8s.io/kubernetes/cmd/$cmd"
done
cd "$here/kwok"
kwok_version=$(go list -m -f '{{.Version}}' sigs.k8s.io/kwok)
echo "building kwok $kwok_version -> $out/kwok"
go build -pgo=off -trimpath -o "$out/kwok" -ldflags "-s -w" sigs.k8s.io/kwok/cmd/kwok
# kwok reads its Stages (what a simulated kubelet does to nodes and pods) from a config
# file; these are the defaults kwokctl writes: nodes become Ready and renew their Lease,
# pods become Running with container statuses, and go away when deleted.
stages=$(go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)/kustomize/stage
for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
  pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
  echo "---"; cat "$stages/$f"
done > "$out/kwok-stages.yaml"
echo "$stamp" > "$out/.stamp"
"$out/kube-apiserver" --version
"$out/kwok" --version
exec "$here/build-cloudquery.sh"
