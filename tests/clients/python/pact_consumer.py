#!/usr/bin/env python3
"""The REST interactions a shop client relies on, written down as a Pact (the consumer's side).

Each interaction below is what shop_rest.ShopRest sends and what it needs back from the
gateway's HTTP face: sign up, log in, browse, one product, place an order (Idempotency-Key),
the order, its details, the account, and the refusals it handles (401 without a token, 404
for an order that is not there, 400 naming the fields of a bad sign-up). The client is run
against a Pact mock server (pact-python 4, the Pact FFI's mock server, in process) that
answers with the examples; what it checks of each answer is asserted here, and the mock server
fails the run if a request did not match. Then the pact file, `shop-rest-client-shop-gateway.json`,
is written to --out.

The live gateway is verified against that file by tests/http_pact.rs, with the Pact CLI's
verifier (pact-python-cli). So that a running gateway can satisfy it:
- answers are matched by type or pattern (ids are UUIDs, timestamps RFC 3339, int64 decimal
  strings), not by the examples' values, where the value is the provider's to choose;
- what only the provider can know before a request (a product's id, a user's email and
  token, an order's id) comes from a provider state: the verifier asks the state set-up URL
  for the state and puts the values it returns where the interaction says
  (`generate.provider_state("${productId}")`); here the examples stand in for them;
- the Idempotency-Key is a fresh UUID at each verification (a UUID generator).

    .tools/venv/bin/python tests/clients/python/pact_consumer.py --out target/pacts

Provider states (their values): "an email nobody has signed up with" (email), "an account
with a known password" (email; the password is `correct horse battery`), "a product in stock"
(productId), "a logged-in user" (token), "a logged-in user with a confirmed order" (token,
orderId).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable

# The Pact libraries report anonymous usage to a remote host unless told not to; a test here
# talks to 127.0.0.1 only.
os.environ.setdefault("PACT_DO_NOT_TRACK", "true")
os.environ.setdefault("PACT_LOG_LEVEL", "error")

from pact import Pact, generate, match  # noqa: E402
from pact.match.matcher import GenericMatcher  # noqa: E402

from shop_rest import BAD_REQUEST, ApiError, ShopRest  # noqa: E402

CONSUMER = "shop-rest-client"
PROVIDER = "shop-gateway"
PASSWORD = "correct horse battery"

UUID = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
TIMESTAMP = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$"
INT64 = r"^-?\d+$"  # proto3 JSON prints 64-bit integers as decimal strings
JWT = r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$"

# Examples: what the mock server answers and the client sends in the consumer test.
PRODUCT_ID = "01a247ba-fd10-73f3-989b-d964ad232e1a"
USER_ID = "01a247bb-5db2-7724-9beb-ebec480cb811"
ORDER_ID = "01a247bb-7074-745f-8e26-0b51ab8dc91e"
TOKEN = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJraW0ifQ.c2lnbmF0dXJl"
EMAIL = "kim@example.com"
WHEN = "2026-12-05T19:43:16.084986Z"
NO_SUCH_ORDER = "00000000-0000-4000-8000-000000000000"


# --------------------------------------------------------------------------- matchers
def uuid(example: str) -> object:
    return match.regex(example, regex=UUID)


def timestamp(example: str = WHEN) -> object:
    return match.regex(example, regex=TIMESTAMP)


def int64(example: str) -> object:
    return match.regex(example, regex=INT64)


def enum(example: str, prefix: str) -> object:
    return match.regex(example, regex=r"^%s[A-Z_]+$" % prefix)


def money(minor: str = "1999") -> dict:
    return {"amountMinor": int64(minor), "currencyCode": match.regex("EUR", regex=r"^[A-Z]{3}$")}


def from_state(expression: str, example: str, regex: str | None = None) -> object:
    """A value the verifier takes from the provider state (`${name}` in `expression`); the
    example, matched by type or by `regex`, in the consumer test."""
    generator = generate.provider_state(expression)
    if regex is None:
        return GenericMatcher("type", example, generator=generator)
    return GenericMatcher("regex", example, regex=regex, generator=generator)


def bearer() -> object:
    return from_state("Bearer ${token}", "Bearer " + TOKEN, regex=r"^Bearer \S+$")


def fresh_uuid(example: str) -> object:
    """A UUID the verifier makes anew each time (an Idempotency-Key)."""
    return GenericMatcher("regex", example, regex=UUID, generator=generate.uuid())


def user() -> dict:
    return {
        "userId": uuid(USER_ID),
        "email": match.str(EMAIL),
        "displayName": match.str("Kim"),
        "status": "USER_STATUS_ACTIVE",
        "createTime": timestamp(),
        "updateTime": timestamp(),
    }


def product() -> dict:
    return {
        "productId": uuid(PRODUCT_ID),
        "sku": match.str("SKU-LAMP"),
        "name": match.str("Desk lamp"),
        "description": match.str(""),
        "category": match.str("test"),
        "price": money(),
        "createTime": timestamp(),
        "updateTime": timestamp(),
    }


def order_line() -> dict:
    return {
        "productId": uuid(PRODUCT_ID),
        "quantity": int64("1"),
        "unitPrice": money(),
        "lineTotal": money(),
        "sku": match.str("SKU-LAMP"),
        "productName": match.str("Desk lamp"),
    }


def order(status: object) -> dict:
    return {
        "orderId": uuid(ORDER_ID),
        "userId": uuid(USER_ID),
        "status": status,
        "lines": match.each_like(order_line()),
        "total": money(),
        "idempotencyKey": uuid("4a2ff641-cb02-4c19-82bc-72823414fab6"),
        "createTime": timestamp(),
        "updateTime": timestamp(),
    }


def rpc_status(code: int, message: str) -> dict:
    """A google.rpc.Status body: the gRPC code and a message meant for people."""
    return {"code": code, "message": match.str(message)}


JSON = "application/json"


# --------------------------------------------------------------------------- interactions
# One function per interaction: it describes the interaction on `pact` and returns what the
# client does with it, run against the mock server. Each is served on a mock server of its
# own, so two interactions with alike requests (an order, an unknown order) never compete.
Case = Callable[[Pact], Callable[[str], None]]
CASES: list[Case] = []


def case(fn: Case) -> Case:
    CASES.append(fn)
    return fn


@case
def signing_up(pact: Pact) -> Callable[[str], None]:
    (pact.upon_receiving("a sign-up")
     .given("an email nobody has signed up with")
     .with_request("POST", "/api/users")
     .with_body({"email": from_state("${email}", EMAIL), "password": PASSWORD,
                 "displayName": "Kim"}, JSON)
     .will_respond_with(200)
     .with_body({"user": user() | {"displayName": "Kim"}}, JSON))

    def run(url: str) -> None:
        answer = ShopRest(url).sign_up(EMAIL, PASSWORD, "Kim")
        assert answer["user"]["status"] == "USER_STATUS_ACTIVE", answer
        assert answer["user"]["userId"], answer
    return run


@case
def logging_in(pact: Pact) -> Callable[[str], None]:
    (pact.upon_receiving("a log-in")
     .given("an account with a known password")
     .with_request("POST", "/api/sessions")
     .with_body({"email": from_state("${email}", EMAIL), "password": PASSWORD}, JSON)
     .will_respond_with(200)
     .with_body({"accessToken": match.regex(TOKEN, regex=JWT), "expireTime": timestamp(),
                 "userId": uuid(USER_ID), "tokenType": "Bearer"}, JSON))

    def run(url: str) -> None:
        rest = ShopRest(url)
        answer = rest.log_in(EMAIL, PASSWORD)
        assert rest.token == TOKEN and answer["tokenType"] == "Bearer", answer
    return run


@case
def browsing(pact: Pact) -> Callable[[str], None]:
    (pact.upon_receiving("a page of products")
     .given("a product in stock")
     .with_request("GET", "/api/products")
     .with_query_parameter("pageSize", "10")
     .will_respond_with(200)
     .with_body({"items": match.each_like({"product": product(),
                                           "availableQuantity": int64("50")}),
                 "nextPageToken": match.str(""),
                 "missing": []}, JSON))

    def run(url: str) -> None:
        page = ShopRest(url).list_products(page_size=10)
        item = page["items"][0]
        assert item["product"]["productId"] == PRODUCT_ID, page
        assert int(item["availableQuantity"]) > 0 and page["missing"] == [], page
    return run


@case
def one_product(pact: Pact) -> Callable[[str], None]:
    (pact.upon_receiving("a product by its id")
     .given("a product in stock")
     .with_request("GET", from_state("/api/products/${productId}", "/api/products/" + PRODUCT_ID,
                                     regex=r"^/api/products/[0-9a-f-]{36}$"))
     .will_respond_with(200)
     .with_body({"item": {"product": product(), "availableQuantity": int64("50")},
                 "missing": []}, JSON))

    def run(url: str) -> None:
        answer = ShopRest(url).get_product(PRODUCT_ID)
        assert answer["item"]["product"]["price"]["currencyCode"] == "EUR", answer
        assert int(answer["item"]["product"]["price"]["amountMinor"]) > 0, answer
    return run


@case
def placing_an_order(pact: Pact) -> Callable[[str], None]:
    key = "5f1d7c9e-2b1a-4c3d-9e8f-7a6b5c4d3e2f"
    (pact.upon_receiving("an order placed with an idempotency key")
     .given("a logged-in user")
     .given("a product in stock")
     .with_request("POST", "/api/orders")
     .with_header("Authorization", bearer())
     .with_header("Idempotency-Key", fresh_uuid(key))
     .with_body({"lines": [{"productId": from_state("${productId}", PRODUCT_ID, regex=UUID),
                            "quantity": 1}],
                 "paymentToken": "tok_approve"}, JSON)
     .will_respond_with(200)
     .with_body({"order": order(enum("ORDER_STATUS_PENDING", "ORDER_STATUS_"))
                 | {"idempotencyKey": uuid(key)}}, JSON))

    def run(url: str) -> None:
        rest = ShopRest(url, token=TOKEN)
        placed = rest.place_order([(PRODUCT_ID, 1)], "tok_approve", key)["order"]
        assert placed["orderId"] == ORDER_ID and placed["idempotencyKey"] == key, placed
        assert placed["lines"][0]["quantity"] == "1", placed
    return run


@case
def one_order(pact: Pact) -> Callable[[str], None]:
    (pact.upon_receiving("an order by its id")
     .given("a logged-in user with a confirmed order")
     .with_request("GET", from_state("/api/orders/${orderId}", "/api/orders/" + ORDER_ID,
                                     regex=r"^/api/orders/[0-9a-f-]{36}$"))
     .with_header("Authorization", bearer())
     .will_respond_with(200)
     .with_body({"order": order("ORDER_STATUS_CONFIRMED") | {
         "timeline": match.each_like({"step": enum("SAGA_STEP_TYPE_PLACE_ORDER",
                                                   "SAGA_STEP_TYPE_"),
                                      "status": enum("SAGA_STEP_STATUS_SUCCEEDED",
                                                     "SAGA_STEP_STATUS_"),
                                      "occurTime": timestamp()})}}, JSON))

    def run(url: str) -> None:
        got = ShopRest(url, token=TOKEN).get_order(ORDER_ID)["order"]
        assert got["status"] == "ORDER_STATUS_CONFIRMED" and got["timeline"], got
    return run


@case
def order_details(pact: Pact) -> Callable[[str], None]:
    (pact.upon_receiving("an order's details")
     .given("a logged-in user with a confirmed order")
     .with_request("GET", from_state("/api/orders/${orderId}/details",
                                     "/api/orders/%s/details" % ORDER_ID,
                                     regex=r"^/api/orders/[0-9a-f-]{36}/details$"))
     .with_header("Authorization", bearer())
     .will_respond_with(200)
     .with_body({
         "order": order("ORDER_STATUS_CONFIRMED"),
         "user": user(),
         "lines": match.each_like({"line": order_line(), "product": product(),
                                   "availableQuantity": int64("49")}),
         "payments": match.each_like({"paymentId": uuid("01a247bb-7084-7655-ad13-9ef1c0bbcb20"),
                                      "orderId": uuid(ORDER_ID),
                                      "amount": money(),
                                      "status": "PAYMENT_STATUS_CAPTURED"}),
         "missing": [],
     }, JSON))

    def run(url: str) -> None:
        details = ShopRest(url, token=TOKEN).order_details(ORDER_ID)
        assert details["payments"][0]["status"] == "PAYMENT_STATUS_CAPTURED", details
        assert details["lines"][0]["product"]["name"] and details["missing"] == [], details
    return run


@case
def my_account(pact: Pact) -> Callable[[str], None]:
    (pact.upon_receiving("the caller's account")
     .given("a logged-in user")
     .with_request("GET", "/api/users/me")
     .with_header("Authorization", bearer())
     .will_respond_with(200)
     .with_body({"user": user()}, JSON))

    def run(url: str) -> None:
        assert ShopRest(url, token=TOKEN).account()["user"]["email"] == EMAIL
    return run


@case
def no_token(pact: Pact) -> Callable[[str], None]:
    (pact.upon_receiving("a list of orders asked for without a token")
     .with_request("GET", "/api/orders")
     .with_query_parameter("pageSize", "10")
     .will_respond_with(401)
     .with_header("WWW-Authenticate", match.regex('Bearer realm="shop"', regex=r"^Bearer( .*)?$"))
     .with_body(rpc_status(16, "this call needs an access token"), JSON))

    def run(url: str) -> None:
        try:
            ShopRest(url).list_orders()
        except ApiError as e:
            assert e.status == 401 and e.code == 16, e
        else:
            raise AssertionError("listing orders without a token was not refused")
    return run


@case
def unknown_order(pact: Pact) -> Callable[[str], None]:
    (pact.upon_receiving("an order that does not exist")
     .given("a logged-in user")
     .with_request("GET", "/api/orders/" + NO_SUCH_ORDER)
     .with_header("Authorization", bearer())
     .will_respond_with(404)
     .with_body(rpc_status(5, "order %s not found" % NO_SUCH_ORDER), JSON))

    def run(url: str) -> None:
        try:
            ShopRest(url, token=TOKEN).get_order(NO_SUCH_ORDER)
        except ApiError as e:
            assert e.status == 404 and e.code == 5, e
        else:
            raise AssertionError("an unknown order was found")
    return run


@case
def bad_sign_up(pact: Pact) -> Callable[[str], None]:
    (pact.upon_receiving("a sign-up with a malformed email and a short password")
     .with_request("POST", "/api/users")
     .with_body({"email": "nope", "password": "short", "displayName": "Kim"}, JSON)
     .will_respond_with(400)
     .with_body(rpc_status(3, "email: must contain an @; password: must be at least 8 characters")
                | {"details": match.each_like({
                    "@type": BAD_REQUEST,
                    # The fields the client shows an error beside, in any order, among others.
                    "fieldViolations": match.array_containing([
                        {"field": "email", "description": match.str("must contain an @")},
                        {"field": "password",
                         "description": match.str("must be at least 8 characters")},
                    ]),
                })}, JSON))

    def run(url: str) -> None:
        try:
            ShopRest(url).sign_up("nope", "short", "Kim")
        except ApiError as e:
            fields = [f for f, _ in e.field_violations()]
            assert e.status == 400 and e.code == 3 and fields == ["email", "password"], e.body
        else:
            raise AssertionError("a malformed sign-up was accepted")
    return run


# --------------------------------------------------------------------------- main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path,
                        help="directory the pact file is written to (made if missing)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / ("%s-%s.json" % (CONSUMER, PROVIDER))
    if target.exists():
        target.unlink()  # a stale file would be merged into

    for fn in CASES:
        pact = Pact(CONSUMER, PROVIDER).with_specification("V4")
        run = fn(pact)
        # The mock server fails the `with` if a described request was not made or did not match.
        with pact.serve(addr="127.0.0.1") as server:
            run(str(server.url))
        pact.write_file(args.out)
        print("ok %s" % fn.__name__, flush=True)
    print("wrote %s (%d interactions)" % (target, len(CASES)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
