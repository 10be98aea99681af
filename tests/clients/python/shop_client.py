#!/usr/bin/env python3
"""A customer session against the shop gateway, with the generated Python client.

Signs up a fresh account, logs in, browses the catalog, orders one unit of the first product
in stock, waits for the order saga to finish and prints the order's details. The last line is
`order <order_id> <CONFIRMED|CANCELLED>`; the exit status is 0 when the order reached one of
those, 1 otherwise (any failed RPC included: its gRPC code and message go to stderr).

    .tools/venv/bin/python tests/clients/python/shop_client.py --target 127.0.0.1:PORT
"""
from __future__ import annotations

import secrets
import sys
import time
import uuid

import shop_common as c
from shop_common import gateway_pb2, gateway_pb2_grpc, grpc

from shop.orders.v1 import orders_pb2
from shop.payments.v1 import payments_pb2
from shop.common.v1 import reasons_pb2
from shop.users.v1 import users_pb2

POLL_INTERVAL_S = 0.25
POLL_LIMIT_S = 60.0
PAGE_SIZE = 10
MAX_PAGES = 10  # pages browsed at most while looking for a product in stock


def status_name(status: int) -> str:
    return c.enum_name(orders_pb2.OrderStatus, status, "ORDER_STATUS_")


class Session:
    def __init__(self, channel: grpc.Channel, timeout: float):
        self.stub = gateway_pb2_grpc.ShopGatewayServiceStub(channel)
        self.timeout = timeout
        self.token = ""

    def call(self, method: str, request):
        metadata = (("authorization", "Bearer " + self.token),) if self.token else None
        try:
            return getattr(self.stub, method)(request, timeout=self.timeout, metadata=metadata)
        except grpc.RpcError as e:
            raise c.RpcFailed(method, e) from None


def print_products(page_no: int, resp: gateway_pb2.ListProductsResponse) -> None:
    print("products, page %d (%d):" % (page_no, len(resp.items)))
    stock_missing = [m for m in resp.missing if m.part == gateway_pb2.PART_STOCK]
    for item in resp.items:
        p = item.product
        if item.HasField("available_quantity"):
            avail = str(item.available_quantity)
        elif stock_missing:
            avail = "unknown (missing: %s)" % c.missing_text(stock_missing)
        else:
            avail = "unknown (no stock record)"
        print("  %s  %-12s %-30s %12s  available: %s"
              % (p.product_id, p.sku, p.name, c.money(p.price), avail))
    if resp.missing:
        print("  missing parts: %s" % c.missing_text(resp.missing))


def print_order_details(d: gateway_pb2.GetOrderDetailsResponse) -> None:
    o = d.order
    print("order details:")
    print("  order %s  status %s  total %s  placed %s  updated %s"
          % (o.order_id, status_name(o.status), c.money(o.total), c.ts(o.create_time),
             c.ts(o.update_time)))
    if o.status == orders_pb2.ORDER_STATUS_CANCELLED:
        print("  cancelled: %s%s" % (
            c.enum_name(reasons_pb2.CancellationReason, o.cancellation_reason,
                        "CANCELLATION_REASON_"),
            (" (%s)" % o.cancellation_detail) if o.cancellation_detail else ""))
    print("  timeline:")
    for s in o.timeline:
        line = "    %s  %-16s %-9s %s" % (
            c.ts(s.occur_time), c.enum_name(orders_pb2.SagaStepType, s.step, "SAGA_STEP_TYPE_"),
            c.enum_name(orders_pb2.SagaStepStatus, s.status, "SAGA_STEP_STATUS_"), s.reason)
        print(line.rstrip())
    if d.HasField("user"):
        u = d.user
        print("  user: %s  %s  %r  %s" % (
            u.user_id, u.email, u.display_name,
            c.enum_name(users_pb2.UserStatus, u.status, "USER_STATUS_")))
    else:
        print("  user: unknown")
    print("  lines (%d):" % len(d.lines))
    for ld in d.lines:
        ln = ld.line
        now = []
        if ld.HasField("product"):
            now.append("catalog now: %r at %s" % (ld.product.name, c.money(ld.product.price)))
        else:
            now.append("catalog now: unknown")
        now.append("available: %s" % (ld.available_quantity if ld.HasField("available_quantity")
                                      else "unknown"))
        print("    %d x %s %r at %s = %s; %s" % (
            ln.quantity, ln.sku, ln.product_name, c.money(ln.unit_price), c.money(ln.line_total),
            ", ".join(now)))
    payments_missing = any(m.part == gateway_pb2.PART_PAYMENTS for m in d.missing)
    print("  payments (%s):" % ("unknown" if payments_missing else len(d.payments)))
    for p in d.payments:
        extra = ""
        if p.status == payments_pb2.PAYMENT_STATUS_DECLINED:
            extra = "  declined: %s %s" % (
                c.enum_name(reasons_pb2.PaymentDeclineReason, p.decline_reason,
                            "PAYMENT_DECLINE_REASON_"), p.decline_detail)
        print("    %s  %-9s %s  attempts %d  refunded %s%s" % (
            p.payment_id, c.enum_name(payments_pb2.PaymentStatus, p.status, "PAYMENT_STATUS_"),
            c.money(p.amount), p.attempt_count, c.money(p.refunded_amount), extra))
        for r in p.refunds:
            print("      refund %s  %s  %s  %s" % (r.refund_id, c.money(r.amount),
                                                   c.ts(r.create_time), r.reason))
    print("  missing parts: %s" % c.missing_text(d.missing))


def run(args) -> int:
    with c.channel(args) as channel:
        s = Session(channel, args.timeout)

        email = "client-%s@example.com" % uuid.uuid4().hex[:16]
        password = secrets.token_urlsafe(18)  # 24 characters
        user = s.call("SignUp", gateway_pb2.SignUpRequest(
            email=email, password=password, display_name="Python client")).user
        print("signed up %s as user %s" % (user.email, user.user_id))

        login = s.call("LogIn", gateway_pb2.LogInRequest(email=email, password=password))
        s.token = login.access_token
        print("logged in as user %s (%s token, expires %s)"
              % (login.user_id, login.token_type or "Bearer", c.ts(login.expire_time)))

        chosen = None
        page_token = ""
        for page_no in range(1, MAX_PAGES + 1):
            resp = s.call("ListProducts", gateway_pb2.ListProductsRequest(
                page_size=PAGE_SIZE, page_token=page_token))
            print_products(page_no, resp)
            chosen = next((i.product for i in resp.items
                           if i.HasField("available_quantity") and i.available_quantity >= 1), None)
            page_token = resp.next_page_token
            if chosen is not None or not page_token:
                break
        if chosen is None:
            c.die("no product with an available quantity of 1 or more was found")

        key = str(uuid.uuid4())
        print("ordering 1 x %s %r (%s), payment token %s, idempotency key %s"
              % (chosen.sku, chosen.name, chosen.product_id, args.payment_token, key))
        order = s.call("PlaceOrder", gateway_pb2.PlaceOrderRequest(
            lines=[orders_pb2.NewOrderLine(product_id=chosen.product_id, quantity=1)],
            payment_token=args.payment_token, idempotency_key=key)).order
        print("placed order %s: %s, total %s" % (order.order_id, status_name(order.status),
                                                 c.money(order.total)))

        start = time.monotonic()
        while order.status == orders_pb2.ORDER_STATUS_PENDING:
            if time.monotonic() - start >= POLL_LIMIT_S:
                c.die("order %s is still PENDING after %.0f s" % (order.order_id, POLL_LIMIT_S))
            time.sleep(POLL_INTERVAL_S)
            order = s.call("GetOrder", gateway_pb2.GetOrderRequest(order_id=order.order_id)).order
        print("order %s is %s after %.1f s" % (order.order_id, status_name(order.status),
                                              time.monotonic() - start))

        details = s.call("GetOrderDetails",
                         gateway_pb2.GetOrderDetailsRequest(order_id=order.order_id))
        print_order_details(details)

        final = status_name(order.status)
        if order.status not in (orders_pb2.ORDER_STATUS_CONFIRMED,
                                orders_pb2.ORDER_STATUS_CANCELLED):
            c.die("order %s ended in unexpected status %s" % (order.order_id, final))
        print("order %s %s" % (order.order_id, final), flush=True)
        return 0


def main() -> int:
    args = c.parse_args(
        "Sign up, log in, browse, order one product and follow the order to its end.",
        lambda p: p.add_argument("--payment-token", default="tok_approve", metavar="TOKEN",
                                 help="payment token of the order (default tok_approve)"))
    try:
        return run(args)
    except c.RpcFailed as e:
        c.die(str(e))
    except KeyboardInterrupt:
        c.die("interrupted", 130)


if __name__ == "__main__":
    sys.exit(main())
