#!/usr/bin/env bash
# Install MCP Inspector (a client we did not write) into tests/.inspector/ for
# tests/integration/test_inspector_cli.py. Idempotent: exits 0 at once when the pinned
# version is already there. Needs npm. The package declares node >= 22.19; its CLI's stdio
# path, all the test uses, runs on node 20 too (npm only warns EBADENGINE).
set -euo pipefail

VERSION="2.12.0"
PREFIX="$(cd "$(dirname "$0")" && pwd)/.inspector"
MANIFEST="$PREFIX/node_modules/@modelcontextprotocol/inspector/package.json"
BIN="$PREFIX/node_modules/.bin/mcp-inspector"

installed_version() {
    node -p "require(process.argv[1]).version" "$MANIFEST" 2>/dev/null || true
}

if [[ -x "$BIN" && "$(installed_version)" == "$VERSION" ]]; then
    echo "MCP Inspector $VERSION already in $PREFIX"
    exit 0
fi

# The package's only install script sets up a source checkout and is a no-op under
# node_modules, so skipping scripts loses nothing.
npm install --prefix "$PREFIX" --ignore-scripts --no-audit --no-fund --save-exact \
    "@modelcontextprotocol/inspector@$VERSION"

if [[ ! -x "$BIN" || "$(installed_version)" != "$VERSION" ]]; then
    echo "install-inspector: $BIN missing or not $VERSION after npm install" >&2
    exit 1
fi
echo "MCP Inspector $VERSION installed in $PREFIX"
