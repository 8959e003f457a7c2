#!/usr/bin/env bash
# Builds the real CloudQuery PostgreSQL destination (v8.16.0) and the official CloudQuery
# Kubernetes source (v6.2.4, the peer the benchmark measures) as cq-postgresql and
# cq-source-k8s, version stamped, into the same cache directory as kube-apiserver.
#
# Source: the pinned tarball in ../shared/third_party/cloudquery/ (the Go module proxy here
# refuses github.com/cloudquery/* modules). Each plugin's go.mod is pointed at the exact
# CloudQuery SDK modules the tarball carries; everything else comes from the module proxy.
# Without the tarball (a machine that reaches the proxy for CloudQuery modules) the same
# tags are downloaded from the proxy instead; that path cannot run in this sandbox.
#
# K8S_WATCHER_CQ_PLUGINS=destination (scripts/demo.sh) builds the destination only; the
# official source, minutes of compiling, is for the tests and the benchmark.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${K8S_WATCHER_TESTBED_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/k8s-watcher/testbed/bin}
work=$(dirname "$out")/cloudquery-build
tarball=${CLOUDQUERY_SRC_TARBALL:-$here/../../shared/third_party/cloudquery/cloudquery-src.tar.gz}
dest_version=v8.16.0
k8s_version=v6.2.4
mkdir -p "$out" "$work"
# One build at a time: tests, the demo and a setup may ask at once; the others wait
# here and then find the binaries up to date.
exec 9>"$out/.cq-build.lock"
flock 9

if [[ -f "$tarball" ]]; then
  source_id=$(sha256sum "$tarball" | cut -c1-16)
else
  source_id=proxy
fi
stamp=$( (cat "$0"; echo "$source_id $dest_version $k8s_version") | sha256sum | cut -c1-16)
case "${K8S_WATCHER_CQ_PLUGINS:-all}" in
  all) wanted=(cq-postgresql cq-source-k8s) ;;
  destination) wanted=(cq-postgresql) ;;
  *) echo "K8S_WATCHER_CQ_PLUGINS: all or destination, not ${K8S_WATCHER_CQ_PLUGINS}" >&2; exit 2 ;;
esac
if [[ ! -f "$out/.cq-stamp" || "$(cat "$out/.cq-stamp")" != "$stamp" ]]; then
  # Built from other inputs: none of them may pass for up to date below.
  rm -f "$out/cq-postgresql" "$out/cq-source-k8s"
fi
todo=()
for binary in "${wanted[@]}"; do [[ -x "$out/$binary" ]] || todo+=("$binary"); done
if [[ ${#todo[@]} -eq 0 ]]; then
  echo "cloudquery plugins up to date in $out (${wanted[*]}: postgresql $dest_version, k8s $k8s_version)"
  exit 0
fi

export CGO_ENABLED=0 GOFLAGS=-mod=mod
rm -rf "$work/src"
mkdir -p "$work/src"
if [[ "$source_id" != proxy ]]; then
  echo "cloudquery: extracting $tarball"
  tar -xzf "$tarball" -C "$work/src" --strip-components=1
  src=$work/src
  dest_dir=$src/cloudquery-pg-destination-$dest_version/plugins/destination/postgresql
  k8s_dir=$src/cloudquery-k8s-source-$k8s_version/plugins/source/k8s
  # The destination pins a jsonschema fork commit that is not in the tarball; upstream
  # invopop/jsonschema only changes the spec's JSON-schema text, not the data path.
  (cd "$dest_dir" && go mod edit \
    -replace "github.com/cloudquery/plugin-sdk/v4=$src/plugin-sdk-v4.96.1" \
    -replace "github.com/cloudquery/plugin-sdk/v2=$src/plugin-sdk-v2.7.0" \
    -replace "github.com/cloudquery/plugin-pb-go=$src/plugin-pb-go-v1.27.15" \
    -replace "github.com/cloudquery/cloudquery-api-go=$src/cloudquery-api-go-v1.14.12" \
    -replace "github.com/cloudquery/codegen=$src/codegen-v0.4.1" \
    -dropreplace github.com/invopop/jsonschema)
  (cd "$k8s_dir" && go mod edit \
    -replace "github.com/cloudquery/plugin-sdk/v4=$src/plugin-sdk-v4.58.1" \
    -replace "github.com/cloudquery/plugin-sdk/v2=$src/plugin-sdk-v2.7.0" \
    -replace "github.com/cloudquery/plugin-pb-go=$src/plugin-pb-go-v1.21.5" \
    -replace "github.com/cloudquery/cloudquery-api-go=$src/cloudquery-api-go-v1.12.6" \
    -replace "github.com/cloudquery/codegen=$src/codegen-v0.3.19" \
    -replace "github.com/invopop/jsonschema=$src/jsonschema-cq-92878faa")
else
  echo "cloudquery: no tarball at $tarball; downloading the pinned tags from the module proxy"
  fetch() { cp -r "$(go mod download -json "$1@$2" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')" "$work/src/$3" && chmod -R u+w "$work/src/$3"; }
  fetch github.com/cloudquery/cloudquery/plugins/destination/postgresql/v8 "$dest_version" postgresql
  fetch github.com/cloudquery/cloudquery/plugins/source/k8s "$k8s_version" k8s
  dest_dir=$work/src/postgresql
  k8s_dir=$work/src/k8s
fi

build() { # dir, binary, module path of the plugin package, version
  [[ " ${todo[*]} " == *" $2 "* ]] || return 0
  echo "cloudquery: building $2 $4 (a few minutes on 2 cores)"
  (cd "$1" && go mod download && go build -pgo=off -trimpath -ldflags "-s -w -X $3.Version=$4" -o "$out/$2" .)
}
build "$dest_dir" cq-postgresql github.com/cloudquery/cloudquery/plugins/destination/postgresql/v8/resources/plugin "$dest_version"
build "$k8s_dir" cq-source-k8s github.com/cloudquery/cloudquery/plugins/source/k8s/resources/plugin "$k8s_version"
echo "$stamp" > "$out/.cq-stamp"
rm -rf "$work/src"
echo "cloudquery plugins built in $out (${todo[*]}: postgresql $dest_version, k8s $k8s_version)"
