#!/usr/bin/env bash
# The code image's install steps (deploy/docker/Dockerfile runs this in its builder stage; `make image-check`
# and the suite run it in a clean folder, since no image can be built on the development machines).
#
#   deploy/docker/install.sh PREFIX [--s3] [--no-check]
#
# PREFIX/venv     a virtualenv with the project and its Spark extra (not editable)
# PREFIX/cache    INGEST_CACHE_DIR: the Spark connectors (and with --s3 hadoop-aws + the AWS SDK bundle),
#                 resolved from Maven Central by starting the engine's own Spark session once
# PREFIX/deploy   the files the processes read at run time (Spark profiles, rules for the record)
# PREFIX/catalog  the catalog (CATALOG_DIR, default: the package's demo catalogs)
# PREFIX/env.sh   the environment the image sets (INGEST_CACHE_DIR, INGEST_SPARK_PROFILES_DIR, ...)
#
# Then, unless --no-check: the Spark session is started again with the network cut off (a new network
# namespace, `unshare --net`): a jar that would be fetched at pod start fails the install here.
# Speed: pip reuses its cache (PIP_CACHE_DIR); IVY_SEED_DIR, if set, seeds the Ivy cache (the suite passes the
# developer's cache, so only the resolution is checked, not Maven Central's bandwidth).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source_dir="$(cd "$here/../.." && pwd)"
prefix="${1:?usage: install.sh PREFIX [--s3] [--no-check]}"
shift
s3="" check=1
for arg in "$@"; do
  case "$arg" in
    --s3) s3="--s3" ;;
    --no-check) check="" ;;
    *) echo "install.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done
python="${PYTHON:-python3}"
java_major="$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)"
if [ "${java_major:-0}" -lt 17 ]; then
  echo "install.sh: Java 17+ is needed for Spark (found: ${java_major:-none})" >&2
  exit 1
fi
mkdir -p "$prefix"
prefix="$(cd "$prefix" && pwd)"

echo "== venv with the project and its Spark extra"
"$python" -m venv "$prefix/venv"
"$prefix/venv/bin/python" -m pip install -q -U pip
# A copy of the source, so the build's artefacts never land in the working tree.
build="$(mktemp -d)"
trap 'rm -rf "$build"' EXIT
tar -C "$source_dir" --exclude=__pycache__ --exclude='*.egg-info' \
    -cf - pyproject.toml README.md ingest_platform | tar -C "$build" -xf -
"$prefix/venv/bin/python" -m pip install -q "$build[spark]"

echo "== run-time files"
mkdir -p "$prefix/deploy" "$prefix/catalog"
cp -r "$source_dir/deploy/spark" "$source_dir/deploy/prometheus" "$prefix/deploy/"
cp -r "${CATALOG_DIR:-$source_dir/ingest_platform/catalogs}/." "$prefix/catalog/"
cat > "$prefix/env.sh" <<ENV
export INGEST_CACHE_DIR="$prefix/cache"
export INGEST_SPARK_PROFILES_DIR="$prefix/deploy/spark/profiles"
export INGEST_DEPLOY_DIR="$prefix/deploy"
export INGEST_CATALOG="$prefix/catalog"
export PATH="$prefix/venv/bin:\$PATH"
ENV

echo "== Spark connectors into $prefix/cache"
mkdir -p "$prefix/cache"
if [ -n "${IVY_SEED_DIR:-}" ] && [ -d "$IVY_SEED_DIR" ]; then
  cp -a "$IVY_SEED_DIR" "$prefix/cache/ivy"
fi
# shellcheck disable=SC1091
( . "$prefix/env.sh" && cd "$prefix" && python -m ingest_platform.deployment.connectors resolve $s3 )

if [ -n "$check" ]; then
  echo "== offline check: the session starts with no network"
  ( . "$prefix/env.sh" && cd "$prefix" && unshare --net sh -c \
      "ip link set lo up 2>/dev/null || true; exec python -m ingest_platform.deployment.connectors check $s3" )
fi
echo "installed into $prefix"
