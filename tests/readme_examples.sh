#!/usr/bin/env bash
# Runs the grpcurl walkthrough of README.md exactly as written: the block
# between the readme-examples markers. Against a running `just up` by
# default; USERS_ADDR / CATALOG_ADDR point it at another stack (tests do).
set -euo pipefail
cd "$(dirname "$0")/.."
block=$(sed -n '/<!-- readme-examples:start -->/,/<!-- readme-examples:end -->/p' README.md \
  | sed '1,2d;$d' | sed '$d')
block=${block//127.0.0.1:7101/${USERS_ADDR:-127.0.0.1:7101}}
block=${block//127.0.0.1:7102/${CATALOG_ADDR:-127.0.0.1:7102}}
bash -euo pipefail -c "$block"
