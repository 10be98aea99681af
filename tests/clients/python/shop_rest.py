"""A small REST/JSON client of the shop gateway, standard library only.

What an app without gRPC would write against the gateway's HTTP face (docs/http.md): JSON bodies
in lowerCamelCase, `Authorization: Bearer <token>` from log-in, `Idempotency-Key` on placing an
order, and errors as HTTP statuses with a google.rpc.Status body. The Pact consumer test
(pact_consumer.py) drives it against a Pact mock server; any gateway serves it the same way:

    rest = ShopRest("https://127.0.0.1:7100", ca_file=".stack/pki/ca.crt")
    rest.log_in("kim@example.com", "correct horse battery")
    print(rest.list_products(page_size=5)["items"])
"""
from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Optional

BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"


class ApiError(Exception):
    """A refusal: the HTTP status and the google.rpc.Status the body carries."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body if isinstance(body, dict) else {}
        self.code = self.body.get("code")
        self.message = self.body.get("message", "")
        super().__init__("HTTP %d: %s" % (status, self.message or body))

    def field_violations(self) -> list[tuple[str, str]]:
        """(field, description) of every google.rpc.BadRequest detail, in order."""
        return [(v.get("field", ""), v.get("description", ""))
                for d in self.body.get("details", []) if d.get("@type") == BAD_REQUEST
                for v in d.get("fieldViolations", [])]


class ShopRest:
    """One end user's view of the gateway at `base_url` (http or https).

    `ca_file` names the CA certificate the gateway's certificate chains to (https only; the
    system's roots when None). `log_in` keeps the access token for the calls that need one.
    """

    def __init__(self, base_url: str, ca_file: Optional[str] = None, timeout: float = 10.0,
                 token: Optional[str] = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.token = token
        self._ssl = (ssl.create_default_context(cafile=ca_file)
                     if base_url.startswith("https") else None)

    # ------------------------------------------------------------------ the operations
    def sign_up(self, email: str, password: str, display_name: str) -> dict:
        return self._call("POST", "/api/users", body={
            "email": email, "password": password, "displayName": display_name})

    def log_in(self, email: str, password: str) -> dict:
        answer = self._call("POST", "/api/sessions", body={"email": email, "password": password})
        self.token = answer["accessToken"]
        return answer

    def list_products(self, page_size: int = 10, page_token: str = "") -> dict:
        query = {"pageSize": page_size}
        if page_token:
            query["pageToken"] = page_token
        return self._call("GET", "/api/products", query=query)

    def get_product(self, product_id: str) -> dict:
        return self._call("GET", "/api/products/" + _segment(product_id))

    def place_order(self, lines: list[tuple[str, int]], payment_token: str,
                    idempotency_key: str) -> dict:
        """`lines` as (product id, quantity); the same key makes a retry safe."""
        return self._call("POST", "/api/orders", auth=True,
                          headers={"Idempotency-Key": idempotency_key},
                          body={"lines": [{"productId": p, "quantity": q} for p, q in lines],
                                "paymentToken": payment_token})

    def list_orders(self, page_size: int = 10) -> dict:
        return self._call("GET", "/api/orders", auth=True, query={"pageSize": page_size})

    def get_order(self, order_id: str) -> dict:
        return self._call("GET", "/api/orders/" + _segment(order_id), auth=True)

    def order_details(self, order_id: str) -> dict:
        return self._call("GET", "/api/orders/%s/details" % _segment(order_id), auth=True)

    def account(self) -> dict:
        return self._call("GET", "/api/users/me", auth=True)

    # ------------------------------------------------------------------ HTTP
    def _call(self, method: str, path: str, *, body: Optional[dict] = None,
              query: Optional[dict] = None, headers: Optional[dict] = None,
              auth: bool = False) -> dict:
        url = self.base_url + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        request = urllib.request.Request(url, method=method)
        request.add_header("Accept", "application/json")
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            request.add_header("Content-Type", "application/json")
        if auth and self.token:
            request.add_header("Authorization", "Bearer " + self.token)
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, data=data, timeout=self.timeout,
                                        context=self._ssl) as response:
                return _json(response.read())
        except urllib.error.HTTPError as e:
            with e:
                raise ApiError(e.code, _json(e.read())) from None


def _segment(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _json(raw: bytes) -> Any:
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")
