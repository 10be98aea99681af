#!/usr/bin/env bash
# Generates the shop's client code from proto/ (`just clients`); nothing it writes is committed.
#
#   target/clients/python/      Python messages, stubs and .pyi (grpc_tools.protoc from .tools/venv)
#   target/clients/googleapis/  google/rpc/error_details.proto, copied from the installed
#                               googleapis-common-protos wheel (input of the TypeScript generation)
#   tests/clients/ts/node_modules/  `npm ci` from tests/clients/ts/package-lock.json
#   tests/clients/ts/gen/       TypeScript messages and service descriptors (buf + protoc-gen-es)
#   tests/clients/ts/dist/      the compiled TypeScript programs (tsc)
#
# Each step records a hash of its inputs and is skipped when they have not changed, so a
# second run takes about a second. Needs `python3 libs/testkit/bootstrap.py` first (buf and
# the Python packages) and Node >= 20 with npm.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
export PATH="$ROOT/.tools/bin:$PATH"

OUT=target/clients
PY_OUT="$OUT/python"
GAPI="$OUT/googleapis"
TS=tests/clients/ts
SELF=tests/clients/generate.sh

die() {
    echo "clients: error: $*" >&2
    exit 1
}

# sha256 over the names and contents of the given files (in the given order).
sum_files() { sha256sum -- "$@" | sha256sum | cut -d' ' -f1; }
sum_text() { printf '%s\n' "$@" | sha256sum | cut -d' ' -f1; }
# up_to_date STAMPFILE KEY: true when STAMPFILE holds KEY.
up_to_date() { [[ -f "$1" && "$(cat "$1")" == "$2" ]]; }

mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock 9 # one generation at a time

# ------------------------------------------------------------------ tools
if [[ -x .tools/venv/bin/python ]]; then
    PY=("$ROOT/.tools/venv/bin/python")
elif [[ -d .tools/pylib ]]; then # bootstrap's pip --target fallback
    PY=(env "PYTHONPATH=$ROOT/.tools/pylib" python3)
else
    die "no Python environment in .tools; run: python3 libs/testkit/bootstrap.py"
fi
[[ -f .tools/bootstrap-stamp.json ]] || die ".tools is incomplete; run: python3 libs/testkit/bootstrap.py"
command -v buf >/dev/null || die "buf not found in .tools/bin; run: python3 libs/testkit/bootstrap.py"
command -v node >/dev/null || die "node not found on PATH (Node >= 20 is needed)"
command -v npm >/dev/null || die "npm not found on PATH"
NODE_VERSION="$(node --version)"
NODE_MAJOR="${NODE_VERSION#v}"
NODE_MAJOR="${NODE_MAJOR%%.*}"
((NODE_MAJOR >= 20)) || die "Node >= 20 is needed, found $NODE_VERSION"

mapfile -t PROTOS < <(cd proto && find shop -name '*.proto' | LC_ALL=C sort)
((${#PROTOS[@]} > 0)) || die "no .proto files under proto/shop"
PROTO_SUM="$(cd proto && sum_files "${PROTOS[@]}")"
SELF_SUM="$(sum_files "$SELF")"
TOOLS_SUM="$(sum_files .tools/bootstrap-stamp.json)" # changes with the pinned packages

# ------------------------------------------------------------------ Python
key="$(sum_text "$PROTO_SUM" "$TOOLS_SUM" "$SELF_SUM")"
if up_to_date "$PY_OUT/.stamp" "$key"; then
    echo "clients: python up to date ($PY_OUT)"
else
    echo "clients: python: generating ${#PROTOS[@]} files into $PY_OUT"
    tmp="$PY_OUT.tmp"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    (cd proto && "${PY[@]}" -m grpc_tools.protoc -I. \
        --python_out="$ROOT/$tmp" --pyi_out="$ROOT/$tmp" --grpc_python_out="$ROOT/$tmp" \
        "${PROTOS[@]}") || die "grpc_tools.protoc failed"
    # Every generated module must import (catches a protobuf runtime older than the gencode).
    "${PY[@]}" - "$tmp" <<'EOF' || die "a generated Python module does not import"
import importlib, os, sys
root = sys.argv[1]
sys.path.insert(0, root)
import grpc_status.rpc_status, google.rpc.error_details_pb2  # noqa: F401  (rich errors)
n = 0
for d, _, files in os.walk(root):
    for f in sorted(files):
        if f.endswith(".py"):
            rel = os.path.relpath(os.path.join(d, f[:-3]), root)
            importlib.import_module(rel.replace(os.sep, "."))
            n += 1
print("clients: python: %d modules import" % n)
EOF
    find "$tmp" -name __pycache__ -type d -prune -exec rm -rf {} +
    rm -rf "$PY_OUT"
    mv "$tmp" "$PY_OUT"
    echo "$key" >"$PY_OUT/.stamp"
fi

# ------------------------------------------------------------------ TypeScript: npm ci
key="$(sum_text "$(sum_files "$TS/package.json" "$TS/package-lock.json")" "$NODE_VERSION")"
if up_to_date "$TS/node_modules/.shop-stamp" "$key"; then
    echo "clients: ts node_modules up to date"
else
    echo "clients: ts: npm ci"
    (cd "$TS" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error) || die "npm ci failed"
    echo "$key" >"$TS/node_modules/.shop-stamp"
fi
NPM_SUM="$key"

# ------------------------------------------------------------------ google/rpc/error_details.proto
# Taken from the googleapis-common-protos wheel (the same definitions the Python client uses).
src_dir="$("${PY[@]}" -c 'import importlib.util, os
spec = importlib.util.find_spec("google.rpc.error_details_pb2")
print(os.path.dirname(spec.origin) if spec and spec.origin else "")')"
src="$src_dir/error_details.proto"
[[ -n "$src_dir" && -f "$src" ]] ||
    die "google/rpc/error_details.proto not found in the installed googleapis-common-protos; run: python3 libs/testkit/bootstrap.py"
dst="$GAPI/google/rpc/error_details.proto"
if ! cmp -s "$src" "$dst"; then
    rm -rf "$GAPI"
    mkdir -p "$(dirname "$dst")"
    cp "$src" "$dst"
fi

# ------------------------------------------------------------------ TypeScript: buf generate
key="$(sum_text "$PROTO_SUM" "$(sum_files "$dst" "$TS/buf.gen.yaml" proto/buf.yaml)" "$NPM_SUM" "$SELF_SUM")"
GEN_SUM="$key"
if up_to_date "$TS/gen/.stamp" "$key"; then
    echo "clients: ts gen up to date ($TS/gen)"
else
    echo "clients: ts: buf generate into $TS/gen"
    (cd "$TS" && buf generate) || die "buf generate failed"
    echo "$key" >"$TS/gen/.stamp"
fi

# ------------------------------------------------------------------ TypeScript: tsc
mapfile -t SRCS < <(find "$TS/src" -name '*.ts' | LC_ALL=C sort)
key="$(sum_text "$GEN_SUM" "$(sum_files "$TS/tsconfig.json" "${SRCS[@]}")")"
if up_to_date "$TS/dist/.stamp" "$key"; then
    echo "clients: ts dist up to date ($TS/dist)"
else
    echo "clients: ts: tsc into $TS/dist"
    rm -rf "$TS/dist"
    (cd "$TS" && node_modules/.bin/tsc -p tsconfig.json) || die "tsc failed"
    echo "$key" >"$TS/dist/.stamp"
fi
