// A customer session against the shop gateway, with the generated TypeScript client.
//
// Signs up a fresh account, logs in, browses the catalog, orders one unit of the first product
// in stock, waits for the order saga to finish and prints the order's details. The last line is
// `order <order_id> <CONFIRMED|CANCELLED>`; the exit status is 0 when the order reached one of
// those, 1 otherwise (any failed RPC included: its gRPC code and message go to stderr).
//
//   node tests/clients/ts/dist/src/client.js --target 127.0.0.1:PORT

import { randomBytes, randomUUID } from "node:crypto";
import type { CallOptions } from "@connectrpc/connect";
import {
  Part,
  type GetOrderDetailsResponse,
  type ListProductsResponse,
} from "../gen/shop/gateway/v1/gateway_pb.js";
import type { Product } from "../gen/shop/catalog/v1/catalog_pb.js";
import { OrderStatus, SagaStepStatus, SagaStepType } from "../gen/shop/orders/v1/orders_pb.js";
import { PaymentStatus } from "../gen/shop/payments/v1/payments_pb.js";
import { CancellationReason, PaymentDeclineReason } from "../gen/shop/common/v1/reasons_pb.js";
import { UserStatus } from "../gen/shop/users/v1/users_pb.js";
import {
  connect,
  enumName,
  missingText,
  money,
  parseOptions,
  rpc,
  runMain,
  sleep,
  ts,
  Failure,
  type Options,
} from "./common.js";

const POLL_INTERVAL_MS = 250;
const POLL_LIMIT_MS = 60_000;
const PAGE_SIZE = 10;
const MAX_PAGES = 10; // pages browsed at most while looking for a product in stock

const statusName = (s: OrderStatus) => enumName(OrderStatus, s);

function printProducts(pageNo: number, resp: ListProductsResponse): void {
  console.log(`products, page ${pageNo} (${resp.items.length}):`);
  const stockMissing = resp.missing.filter((m) => m.part === Part.STOCK);
  for (const item of resp.items) {
    const p = item.product;
    let avail: string;
    if (item.availableQuantity !== undefined) {
      avail = item.availableQuantity.toString();
    } else if (stockMissing.length > 0) {
      avail = `unknown (missing: ${missingText(stockMissing)})`;
    } else {
      avail = "unknown (no stock record)";
    }
    console.log(
      `  ${p?.productId ?? "-"}  ${(p?.sku ?? "").padEnd(12)} ${(p?.name ?? "").padEnd(30)} ` +
        `${money(p?.price).padStart(12)}  available: ${avail}`,
    );
  }
  if (resp.missing.length > 0) {
    console.log(`  missing parts: ${missingText(resp.missing)}`);
  }
}

function printOrderDetails(d: GetOrderDetailsResponse): void {
  const o = d.order;
  console.log("order details:");
  if (o === undefined) {
    console.log("  order: absent");
  } else {
    console.log(
      `  order ${o.orderId}  status ${statusName(o.status)}  total ${money(o.total)}  ` +
        `placed ${ts(o.createTime)}  updated ${ts(o.updateTime)}`,
    );
    if (o.status === OrderStatus.CANCELLED) {
      const detail = o.cancellationDetail ? ` (${o.cancellationDetail})` : "";
      console.log(`  cancelled: ${enumName(CancellationReason, o.cancellationReason)}${detail}`);
    }
    console.log("  timeline:");
    for (const s of o.timeline) {
      console.log(
        `    ${ts(s.occurTime)}  ${enumName(SagaStepType, s.step).padEnd(16)} ` +
          `${enumName(SagaStepStatus, s.status).padEnd(9)} ${s.reason}`.trimEnd(),
      );
    }
  }
  const u = d.user;
  console.log(
    u === undefined
      ? "  user: unknown"
      : `  user: ${u.userId}  ${u.email}  '${u.displayName}'  ${enumName(UserStatus, u.status)}`,
  );
  console.log(`  lines (${d.lines.length}):`);
  for (const ld of d.lines) {
    const ln = ld.line;
    const now =
      (ld.product === undefined
        ? "catalog now: unknown"
        : `catalog now: '${ld.product.name}' at ${money(ld.product.price)}`) +
      `, available: ${ld.availableQuantity === undefined ? "unknown" : ld.availableQuantity.toString()}`;
    console.log(
      `    ${ln?.quantity ?? 0n} x ${ln?.sku ?? ""} '${ln?.productName ?? ""}' at ` +
        `${money(ln?.unitPrice)} = ${money(ln?.lineTotal)}; ${now}`,
    );
  }
  const paymentsMissing = d.missing.some((m) => m.part === Part.PAYMENTS);
  console.log(`  payments (${paymentsMissing ? "unknown" : d.payments.length}):`);
  for (const p of d.payments) {
    const extra =
      p.status === PaymentStatus.DECLINED
        ? `  declined: ${enumName(PaymentDeclineReason, p.declineReason)} ${p.declineDetail}`
        : "";
    console.log(
      `    ${p.paymentId}  ${enumName(PaymentStatus, p.status).padEnd(9)} ${money(p.amount)}  ` +
        `attempts ${p.attemptCount}  refunded ${money(p.refundedAmount)}${extra}`,
    );
    for (const r of p.refunds) {
      console.log(`      refund ${r.refundId}  ${money(r.amount)}  ${ts(r.createTime)}  ${r.reason}`);
    }
  }
  console.log(`  missing parts: ${missingText(d.missing)}`);
}

async function run(opts: Options): Promise<number> {
  const { client, close } = connect(opts.target, opts.ca, opts.transport);
  try {
    const call: CallOptions = { timeoutMs: opts.timeoutMs };

    const email = `client-${randomUUID().replaceAll("-", "").slice(0, 16)}@example.com`;
    const password = randomBytes(18).toString("base64url"); // 24 characters
    const signUp = await rpc("SignUp", () =>
      client.signUp({ email, password, displayName: "TypeScript client" }, call),
    );
    console.log(`signed up ${signUp.user?.email ?? email} as user ${signUp.user?.userId ?? "?"}`);

    const login = await rpc("LogIn", () => client.logIn({ email, password }, call));
    const auth: CallOptions = { ...call, headers: { authorization: `Bearer ${login.accessToken}` } };
    console.log(
      `logged in as user ${login.userId} (${login.tokenType || "Bearer"} token, ` +
        `expires ${ts(login.expireTime)})`,
    );

    let chosen: Product | undefined;
    let pageToken = "";
    for (let pageNo = 1; pageNo <= MAX_PAGES; pageNo++) {
      const resp = await rpc("ListProducts", () =>
        client.listProducts({ pageSize: PAGE_SIZE, pageToken }, call),
      );
      printProducts(pageNo, resp);
      chosen = resp.items.find(
        (i) => i.product !== undefined && i.availableQuantity !== undefined && i.availableQuantity >= 1n,
      )?.product;
      pageToken = resp.nextPageToken;
      if (chosen !== undefined || pageToken === "") {
        break;
      }
    }
    if (chosen === undefined) {
      throw new Failure("no product with an available quantity of 1 or more was found");
    }
    const product = chosen;

    const idempotencyKey = randomUUID();
    console.log(
      `ordering 1 x ${chosen.sku} '${chosen.name}' (${chosen.productId}), ` +
        `payment token ${opts.paymentToken}, idempotency key ${idempotencyKey}`,
    );
    const placed = await rpc("PlaceOrder", () =>
      client.placeOrder(
        {
          lines: [{ productId: product.productId, quantity: 1n }],
          paymentToken: opts.paymentToken,
          idempotencyKey,
        },
        auth,
      ),
    );
    let order = placed.order;
    if (order === undefined) {
      throw new Failure("PlaceOrder answered without an order");
    }
    const orderId = order.orderId;
    console.log(`placed order ${orderId}: ${statusName(order.status)}, total ${money(order.total)}`);

    const start = Date.now();
    while (order.status === OrderStatus.PENDING) {
      if (Date.now() - start >= POLL_LIMIT_MS) {
        throw new Failure(`order ${orderId} is still PENDING after ${POLL_LIMIT_MS / 1000} s`);
      }
      await sleep(POLL_INTERVAL_MS);
      const got = await rpc("GetOrder", () => client.getOrder({ orderId }, auth));
      if (got.order === undefined) {
        throw new Failure("GetOrder answered without an order");
      }
      order = got.order;
    }
    console.log(
      `order ${orderId} is ${statusName(order.status)} after ${((Date.now() - start) / 1000).toFixed(1)} s`,
    );

    const details = await rpc("GetOrderDetails", () => client.getOrderDetails({ orderId }, auth));
    printOrderDetails(details);

    const final = statusName(order.status);
    if (order.status !== OrderStatus.CONFIRMED && order.status !== OrderStatus.CANCELLED) {
      throw new Failure(`order ${orderId} ended in unexpected status ${final}`);
    }
    console.log(`order ${orderId} ${final}`);
    return 0;
  } finally {
    close();
  }
}

runMain(() => run(parseOptions("tests/clients/ts/dist/src/client.js", true)));
