#!/usr/bin/env bash
# Installs the pinned kustomize (the manifests' renderer, docs/DEPLOY.md "How the files are checked") from the Go
# module proxy into the project's cache, and prints the binary's path. Idempotent: an installed binary is
# reused. Needs Go >= 1.22 (`go install`); Debian's kubernetes-client (kubectl 1.20) is too old for the
# manifests, and no release binary is downloadable here. Usage: deploy/local/kustomize/install.sh
set -euo pipefail
version="v5.5.0"  # the kustomize of kubectl 1.32: the same renderer as `kubectl apply -k` there
cache="${INGEST_CACHE_DIR:-$HOME/.cache/ingest_platform}"
bin="$cache/kustomize/$version"
if [ -x "$bin/kustomize" ]; then
  echo "$bin/kustomize"
  exit 0
fi
go_bin="$(command -v go || true)"
[ -z "$go_bin" ] && [ -x /usr/local/go/bin/go ] && go_bin=/usr/local/go/bin/go
if [ -z "$go_bin" ]; then
  echo "kustomize $version: Go is not installed; install Go >= 1.22 (https://go.dev/dl/), then run $0" >&2
  exit 1
fi
mkdir -p "$bin"
tmp="$(mktemp -d "$bin.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
# GOFLAGS: no VCS stamping (the build runs outside any repository); the module cache is Go's own.
if ! GOBIN="$tmp" GOFLAGS=-buildvcs=false timeout 900 "$go_bin" install "sigs.k8s.io/kustomize/kustomize/v5@$version" >&2; then
  echo "kustomize $version: 'go install sigs.k8s.io/kustomize/kustomize/v5@$version' failed (above); the Go" \
       "module proxy ($("$go_bin" env GOPROXY)) must be reachable and Go >= 1.22" >&2
  exit 1
fi
mv "$tmp/kustomize" "$bin/kustomize"
echo "$bin/kustomize"
