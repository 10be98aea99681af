#!/usr/bin/env bash
# Runs the shell examples of Markdown files exactly as written: every shell
# block between readme-examples markers of a file, in order, in one shell (a
# later block uses what an earlier one set); each file in a shell of its own,
# the files in the order given.
#
#   tests/readme_examples.sh           the walkthrough: the files of WALKTHROUGH below
#   tests/readme_examples.sh FILE...   those files (a runbook: services/<svc>/RUNBOOK.md)
#   tests/readme_examples.sh --list    the walkthrough's files, one a line
#
# Against a running `just up` by default; <SERVICE>_ADDR variables
# (USERS_ADDR, CATALOG_ADDR, ...), PKI_DIR (its CA and operator identity) and
# FLAGS_FILE (the flags file it watches) point it at another stack, as the
# end-to-end tests do.
set -euo pipefail
cd "$(dirname "$0")/.."

# The walkthrough, in the order it runs. README.md: the end user's calls
# through the gateway. docs/walkthrough.md: the operator's calls on each
# service, then one order through its saga (its blocks share one shell; the
# saga's uses the PATH the operator's sets). docs/mesh.md: MeshAdmin, read
# only. docs/flags.md: edits the flags file and puts the shipped flags back,
# so it runs last. No file uses a variable another file set.
# tests/walkthrough.rs runs these files in this order, and fails when a page
# of README.md or docs/ has marked blocks and is not listed here.
WALKTHROUGH=(README.md docs/http.md docs/walkthrough.md docs/mesh.md docs/flags.md)

if [ "${1:-}" = --list ]; then
  printf '%s\n' "${WALKTHROUGH[@]}"
  exit 0
fi
[ $# -gt 0 ] || set -- "${WALKTHROUGH[@]}"

for file in "$@"; do
  [ $# -gt 1 ] && echo "# $file" >&2
  script=$(SHOP_EXAMPLES_FILE="$file" python3 - <<'PY'
import os, re
text = open(os.environ["SHOP_EXAMPLES_FILE"]).read()
ports = {"7100": "GATEWAY", "7101": "USERS", "7102": "CATALOG", "7103": "INVENTORY", "7104": "ORDERS",
         "7105": "PAYMENTS", "7106": "NOTIFICATIONS", "7107": "ANALYTICS"}
blocks = re.findall(r"<!-- readme-examples:start -->\s*```sh\n(.*?)```\s*<!-- readme-examples:end -->",
                    text, re.S)
if len(blocks) != text.count("<!-- readme-examples:start -->"):
    raise SystemExit(os.environ["SHOP_EXAMPLES_FILE"]
                     + ": a readme-examples:start marker not followed by one ```sh block and its end marker")
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
done
