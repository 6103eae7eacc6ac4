#!/usr/bin/env bash
# Build Docker's compose CLI plugin from source with Go, for machines whose
# docker client lacks `docker compose`. Only `docker compose config` is used
# (it parses and validates docker-compose.yml without a Docker engine).
#
#   build-compose-plugin.sh VERSION OUTPUT
set -euo pipefail
version=$1
output=$(realpath -m "$2")

if ! command -v go >/dev/null 2>&1; then
    echo "error: 'docker compose' is missing and Go is not installed to build it" >&2
    exit 1
fi
workdir=$(mktemp -d)
trap 'rm -rf "$workdir"' EXIT
# `go install pkg@version` refuses modules whose go.mod has replace directives,
# so fetch the module source and build inside it.
src=$(go mod download -json "github.com/docker/compose/v2@${version}" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
cp -r "$src" "$workdir/compose"
chmod -R u+w "$workdir/compose"
mkdir -p "$(dirname "$output")"
(cd "$workdir/compose" && CGO_ENABLED=0 go build -trimpath -o "$output.tmp" ./cmd)
mv "$output.tmp" "$output"
"$output" version
