#!/usr/bin/env bash
# Builds the storefront (`just web`): npm ci from the lockfile (when it changed), the client
# generated from proto/ by buf and protoc-gen-es, a type check, and the esbuild bundle in
# web/dist/storefront/ (served by the gateway at `/`). Needs `just clients` first (it stages
# google/rpc/error_details.proto) and Node >= 20 with npm. Nothing it writes is committed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT/web"
export PATH="$ROOT/.tools/bin:$PATH"

[[ -f ../target/clients/googleapis/google/rpc/error_details.proto ]] ||
    { echo "web: run \`just clients\` first (google/rpc/error_details.proto)" >&2; exit 1; }
key="$(cat package.json package-lock.json | sha256sum | cut -d' ' -f1) $(node --version)"
if [[ ! -f node_modules/.shop-stamp || "$(cat node_modules/.shop-stamp)" != "$key" ]]; then
    echo "web: npm ci"
    npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
    echo "$key" >node_modules/.shop-stamp
fi
buf generate
node_modules/.bin/tsc -p tsconfig.json
node build.mjs
