"""Shared by the Python client programs: finds the generated code, formats messages and errors.

The generated modules live in <repo>/target/clients/python (made by `just clients`); they are
put on sys.path here, so the programs run as plain scripts:

    .tools/venv/bin/python tests/clients/python/shop_client.py --target 127.0.0.1:PORT
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
GENERATED = os.path.join(REPO, "target", "clients", "python")

# gRPC core logs (e.g. absl's "All log messages before absl::InitializeLog()") go to stderr
# before our own message would; only errors are interesting to a user of these programs.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def die(msg: str, code: int = 1) -> NoReturn:
    print("error: " + msg, file=sys.stderr, flush=True)
    sys.exit(code)


def _setup_imports() -> None:
    if not os.path.isfile(os.path.join(GENERATED, "shop", "gateway", "v1", "gateway_pb2.py")):
        die("generated Python code not found in %s; run `just clients` in %s" % (GENERATED, REPO), 2)
    sys.path.insert(0, GENERATED)
    try:
        import grpc  # noqa: F401
    except ImportError:
        pylib = os.path.join(REPO, ".tools", "pylib")  # bootstrap's pip --target fallback
        if os.path.isdir(pylib):
            sys.path.insert(0, pylib)
        try:
            import grpc  # noqa: F401,F811
        except ImportError:
            die("the grpc package is not importable by %s; run the program with %s "
                "(python3 libs/testkit/bootstrap.py installs it)"
                % (sys.executable, os.path.join(REPO, ".tools", "venv", "bin", "python")), 2)


_setup_imports()

import grpc  # noqa: E402
from google.protobuf import timestamp_pb2  # noqa: E402

from shop.common.v1 import money_pb2  # noqa: E402
from shop.gateway.v1 import gateway_pb2, gateway_pb2_grpc  # noqa: E402

__all__ = ["grpc", "gateway_pb2", "gateway_pb2_grpc", "REPO"]

# Currencies whose minor unit is not a hundredth (ISO 4217); every other one has 2 decimals.
_DECIMALS = {
    "BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "ISK": 0, "JPY": 0, "KMF": 0, "KRW": 0, "PYG": 0,
    "RWF": 0, "UGX": 0, "UYI": 0, "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0, "XPF": 0,
    "BHD": 3, "IQD": 3, "JOD": 3, "KWD": 3, "LYD": 3, "OMR": 3, "TND": 3,
}
_CODE_NAMES = {c.value[0]: c.name for c in grpc.StatusCode}


class RpcFailed(Exception):
    """An RPC ended with a non-OK status; str() is 'Method failed: CODE: message'."""

    def __init__(self, method: str, err: grpc.RpcError):
        self.method = method
        self.code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
        self.details = (err.details() if hasattr(err, "details") else str(err)) or ""
        super().__init__("%s failed: %s: %s" % (method, self.code.name, self.details))


def parse_args(description: str, extra=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--target", required=True, metavar="HOST:PORT",
                   help="address of the shop gateway, e.g. 127.0.0.1:7100")
    p.add_argument("--ca", metavar="FILE",
                   help="CA certificate (PEM) the gateway's TLS certificate chains to, e.g. .stack/pki/ca.crt;"
                        " without it, plaintext gRPC (a gateway without TLS)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                   help="deadline of each RPC (default 10)")
    if extra:
        extra(p)
    args = p.parse_args()
    for prefix in ("http://", "dns:///"):
        if args.target.startswith(prefix):
            args.target = args.target[len(prefix):]
    return args


def channel(args) -> grpc.Channel:
    """A channel to the gateway: TLS trusting --ca (no client certificate: end users
    authenticate with tokens), or plaintext without it."""
    if args.ca is None:
        return grpc.insecure_channel(args.target)
    with open(args.ca, "rb") as f:
        credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
    return grpc.secure_channel(args.target, credentials)


def code_name(code: int) -> str:
    """google.rpc.Code number -> its name (14 -> UNAVAILABLE)."""
    return _CODE_NAMES.get(code, str(code))


def enum_name(enum, value: int, prefix: str) -> str:
    """ORDER_STATUS_CONFIRMED -> CONFIRMED; an unknown number is printed as a number."""
    try:
        name = enum.Name(value)
    except ValueError:
        return str(value)
    return name[len(prefix):] if name.startswith(prefix) else name


def money(m: money_pb2.Money) -> str:
    digits = _DECIMALS.get(m.currency_code, 2)
    n = m.amount_minor
    if digits == 0:
        text = str(n)
    else:
        sign = "-" if n < 0 else ""
        whole, frac = divmod(abs(n), 10 ** digits)
        text = "%s%d.%0*d" % (sign, whole, digits, frac)
    return ("%s %s" % (text, m.currency_code)).strip()


def ts(t: timestamp_pb2.Timestamp) -> str:
    return t.ToJsonString() if (t.seconds or t.nanos) else "-"


def missing_text(parts) -> str:
    """'PART_STOCK (UNAVAILABLE: inventory did not answer), ...' or 'none'."""
    if not parts:
        return "none"
    return ", ".join(
        "%s (%s: %s)" % (enum_name(gateway_pb2.Part, m.part, ""), code_name(m.code), m.message)
        for m in parts)
