#!/usr/bin/env bash
# Runs the grpcurl walkthrough of README.md (or of the Markdown file given,
# a runbook: services/<svc>/RUNBOOK.md) exactly as written: every shell
# block between readme-examples markers, in order, in one shell. Against a
# running `just up` by default; <SERVICE>_ADDR variables (USERS_ADDR,
# CATALOG_ADDR, ...), PKI_DIR (its CA and operator identity) and FLAGS_FILE
# (the flags file it watches) point it at another stack, as the end-to-end
# tests do.
set -euo pipefail
cd "$(dirname "$0")/.."
export SHOP_EXAMPLES_FILE="${1:-README.md}"
script=$(python3 - <<'PY'
import os, re
text = open(os.environ["SHOP_EXAMPLES_FILE"]).read()
ports = {"7100": "GATEWAY", "7101": "USERS", "7102": "CATALOG", "7103": "INVENTORY", "7104": "ORDERS",
         "7105": "PAYMENTS", "7106": "NOTIFICATIONS", "7107": "ANALYTICS"}
blocks = re.findall(r"<!-- readme-examples:start -->\s*```sh\n(.*?)```\s*<!-- readme-examples:end -->",
                    text, re.S)
script = "\n".join(blocks)
# the CA and operator identity `just up` copies to .stack/pki (PKI_DIR for another stack)
script = script.replace(".stack/pki", os.environ.get("PKI_DIR", ".stack/pki"))
# the flags file `just up` watches (FLAGS_FILE for another stack)
script = script.replace(".stack/flags/flags.json", os.environ.get("FLAGS_FILE", ".stack/flags/flags.json"))
for port, name in ports.items():
    script = script.replace("127.0.0.1:" + port,
                            os.environ.get(name + "_ADDR", "127.0.0.1:" + port))
if not blocks:
    raise SystemExit(os.environ["SHOP_EXAMPLES_FILE"] + ": no readme-examples blocks")
print(script)
PY
)
bash -euo pipefail -c "$script"
