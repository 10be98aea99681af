// One order, following its saga live: WatchOrder (a server stream over gRPC-Web) tells the page
// each time the order changes, and the page shows the order's details as of that change,
// adding each timeline step as it is recorded, until the order is CONFIRMED or CANCELLED (with
// the reason) or the shopper leaves the page. A stream that ends while the order is pending
// (its minute is up) is opened again; when none can be had, the page asks for the details
// every POLL_MS instead. `data-following` on the page says which it did.

import { OrderStatus, SagaStepStatus, SagaStepType, type Order } from "../../../gen/shop/orders/v1/orders_pb.js";
import { CancellationReason } from "../../../gen/shop/common/v1/reasons_pb.js";
import { Part, type GetOrderDetailsResponse } from "../../../gen/shop/gateway/v1/gateway_pb.js";
import { gateway, humanize, money, problem, when } from "../api.js";
import { h, replace, type Child } from "../../common/dom.js";
import { errorBox } from "./errors.js";
import { statusBadge } from "./orders.js";
import { availability } from "./catalog.js";

const POLL_MS = 500;

function timeline(o: Order): HTMLElement {
  return h(
    "ol",
    { class: "timeline", "aria-label": "Order timeline" },
    ...o.timeline.map((s) =>
      h(
        "li",
        {
          class: SagaStepStatus[s.status]?.toLowerCase() ?? "",
          "data-step": SagaStepType[s.step] ?? "UNSPECIFIED",
          "data-step-status": SagaStepStatus[s.status] ?? "UNSPECIFIED",
        },
        h("strong", {}, humanize(SagaStepType[s.step], "")),
        " ",
        h("span", { class: "step-status" }, humanize(SagaStepStatus[s.status], "")),
        h("time", {}, when(s.occurTime)),
        s.reason ? h("p", { class: "reason" }, s.reason) : null,
      ),
    ),
  );
}

function view(res: GetOrderDetailsResponse, onCancel: () => void): Child[] {
  const o = res.order!;
  const stockMissing = res.missing.some((m) => m.part === Part.STOCK);
  const cancelled = o.status === OrderStatus.CANCELLED;
  return [
    h("h1", {}, "Order ", h("code", {}, o.orderId.slice(0, 8)), " ", statusBadge(o.status)),
    cancelled
      ? h(
          "p",
          { class: "cancelled", role: "status", "data-reason": CancellationReason[o.cancellationReason] ?? "" },
          `Cancelled: ${humanize(CancellationReason[o.cancellationReason], "")}`,
          o.cancellationDetail ? ` (${o.cancellationDetail})` : "",
        )
      : null,
    // Pending or confirmed: cancelling releases the stock and refunds what was captured.
    o.status !== OrderStatus.CANCELLED
      ? h("button", { type: "button", id: "cancel-order", onclick: onCancel }, "Cancel order")
      : null,
    h("h2", {}, "Timeline"),
    timeline(o),
    h("h2", {}, "Lines"),
    h(
      "table",
      { class: "lines" },
      h("thead", {}, h("tr", {}, h("th", {}, "Product"), h("th", {}, "Quantity"), h("th", {}, "Total"), h("th", {}, "Now"))),
      h(
        "tbody",
        {},
        ...res.lines.map((d) =>
          h(
            "tr",
            {},
            h("td", {}, d.line?.productName ?? ""),
            h("td", {}, String(d.line?.quantity ?? "")),
            h("td", {}, money(d.line?.lineTotal)),
            h("td", {}, availability(d.availableQuantity, stockMissing)),
          ),
        ),
      ),
    ),
    h("p", { class: "total" }, "Total ", h("strong", {}, money(o.total))),
    res.payments.length
      ? h("p", { class: "payments" }, `Payments: ${res.payments.map((p) => money(p.amount)).join(", ")}`)
      : null,
    h("p", { class: "placed" }, `Placed ${when(o.createTime)}`),
  ];
}

export async function order(root: HTMLElement, orderId: string, shown: () => boolean): Promise<void> {
  const errors = h("div");
  const body = h("div", { "aria-live": "polite" });
  replace(root, h("p", {}, h("a", { href: "#/orders" }, "← Your orders")), errors, body);
  const cancel = async () => {
    try {
      await gateway.cancelOrder({ orderId, detail: "cancelled by the shopper in the storefront" });
    } catch (e) {
      replace(errors, errorBox(problem(e)));
    }
    await refresh();
  };
  const refresh = async (): Promise<boolean> => {
    try {
      const res = await gateway.getOrderDetails({ orderId });
      replace(body, ...view(res, cancel));
      replace(errors);
      return res.order?.status === OrderStatus.PENDING;
    } catch (e) {
      const p = problem(e);
      replace(errors, errorBox(p));
      // A transient failure is retried; anything else stops following.
      return p.code === "Unavailable" || p.code === "DeadlineExceeded" || p.code === "ResourceExhausted";
    }
  };
  const following = (how: "stream" | "polling") => body.setAttribute("data-following", how);
  let pending = await refresh();
  while (shown() && pending) {
    const stop = new AbortController();
    const leave = setInterval(() => shown() || stop.abort(), POLL_MS);
    try {
      for await (const change of gateway.watchOrder({ orderId }, { signal: stop.signal, timeoutMs: 75_000 })) {
        if (!change.order) continue;
        pending = await refresh();
        following("stream");
      }
    } catch (e) {
      if (stop.signal.aborted) return;
      // No stream to be had: poll, and try a stream again no sooner than the gateway asks.
      following("polling");
      const wait = Math.max(POLL_MS, (problem(e).retryAfterSeconds ?? 0) * 1000);
      await new Promise((resolve) => setTimeout(resolve, wait));
      pending = await refresh();
    } finally {
      clearInterval(leave);
    }
  }
}
