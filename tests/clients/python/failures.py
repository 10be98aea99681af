#!/usr/bin/env python3
"""Checks how the shop gateway refuses bad calls, with the generated Python client.

Prints one line per check, `ok <name>` or `FAIL <name>: <why>`, and exits 0 only when every
check is ok:

  no_token      ListOrders without authorization metadata is UNAUTHENTICATED
  forged_token  ListOrders with made-up tokens (alg "none", HS256 with a random key, garbage)
                is UNAUTHENTICATED
  bad_request   SignUp with a malformed email, a short password and no display name is
                INVALID_ARGUMENT with a google.rpc.BadRequest detail naming email and password
                (each violation is printed as `violation <field>: <description>`)

    .tools/venv/bin/python tests/clients/python/failures.py --target 127.0.0.1:PORT
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import sys
import time
import uuid

import shop_common as c
from shop_common import gateway_pb2, gateway_pb2_grpc, grpc

from google.rpc import error_details_pb2
from grpc_status import rpc_status


class Fail(Exception):
    pass


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def made_up_jwt(alg: str) -> str:
    now = int(time.time())
    header = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    payload = b64url(json.dumps({"sub": str(uuid.uuid4()), "iat": now, "nbf": now,
                                 "exp": now + 3600}).encode())
    signing_input = header + "." + payload
    if alg == "none":
        return signing_input + "."
    sig = hmac.new(secrets.token_bytes(32), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(sig)


def describe(e: grpc.RpcError) -> str:
    return "%s: %s" % (e.code().name, e.details())


def expect_code(what: str, want: grpc.StatusCode, fn) -> grpc.RpcError:
    try:
        fn()
    except grpc.RpcError as e:
        if e.code() != want:
            raise Fail("%s: want %s, got %s" % (what, want.name, describe(e))) from None
        return e
    raise Fail("%s: want %s, but the call succeeded" % (what, want.name))


def check_no_token(stub, timeout):
    expect_code("ListOrders without authorization", grpc.StatusCode.UNAUTHENTICATED,
                lambda: stub.ListOrders(gateway_pb2.ListOrdersRequest(), timeout=timeout))


def check_forged_token(stub, timeout):
    tokens = [
        ('an alg "none" JWT', made_up_jwt("none")),
        ("an HS256 JWT signed with a random key", made_up_jwt("HS256")),
        ("a garbage token", "garbage-" + secrets.token_hex(8)),
    ]
    problems = []
    for label, tok in tokens:
        md = (("authorization", "Bearer " + tok),)
        try:
            expect_code("ListOrders with " + label, grpc.StatusCode.UNAUTHENTICATED,
                        lambda: stub.ListOrders(gateway_pb2.ListOrdersRequest(), timeout=timeout,
                                                metadata=md))
        except Fail as f:
            problems.append(str(f))
    if problems:
        raise Fail("; ".join(problems))


def check_bad_request(stub, timeout):
    e = expect_code("SignUp with invalid fields", grpc.StatusCode.INVALID_ARGUMENT,
                    lambda: stub.SignUp(gateway_pb2.SignUpRequest(
                        email="nope", password="short", display_name=""), timeout=timeout))
    try:
        status = rpc_status.from_call(e)
    except ValueError as err:  # code or message of the details differ from the call's
        raise Fail("grpc-status-details-bin does not match the status: %s" % err) from None
    if status is None:
        raise Fail("INVALID_ARGUMENT (%s) carries no google.rpc.Status details" % e.details())
    fields = []
    for any_detail in status.details:
        if any_detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            any_detail.Unpack(br)
            for v in br.field_violations:
                print("violation %s: %s" % (v.field, v.description))
                fields.append(v.field)
    if not fields:
        raise Fail("no google.rpc.BadRequest field violations in the details (types: %s)"
                   % (", ".join(d.type_url for d in status.details) or "none"))
    absent = [f for f in ("email", "password") if f not in fields]
    if absent:
        raise Fail("no violation for %s (got %s)" % (", ".join(absent), ", ".join(fields)))


CHECKS = [
    ("no_token", check_no_token),
    ("forged_token", check_forged_token),
    ("bad_request", check_bad_request),
]


def main() -> int:
    args = c.parse_args("Check that the gateway refuses unauthenticated and invalid calls.")
    failed = []
    try:
        with c.channel(args) as channel:
            stub = gateway_pb2_grpc.ShopGatewayServiceStub(channel)
            for name, check in CHECKS:
                try:
                    check(stub, args.timeout)
                    print("ok " + name, flush=True)
                except Fail as f:
                    print("FAIL %s: %s" % (name, f), flush=True)
                    failed.append(name)
    except KeyboardInterrupt:
        c.die("interrupted", 130)
    if failed:
        c.die("%d of %d checks failed: %s" % (len(failed), len(CHECKS), ", ".join(failed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
