// The shopper's orders, newest first, a page at a time.

import { OrderStatus } from "../../../gen/shop/orders/v1/orders_pb.js";
import { gateway, humanize, money, problem, when } from "../api.js";
import { h, replace } from "../../common/dom.js";
import { errorBox } from "./errors.js";

export function statusBadge(status: OrderStatus): HTMLElement {
  const name = OrderStatus[status] ?? "UNSPECIFIED";
  return h("span", { class: `badge ${name.toLowerCase()}`, "data-status": name }, humanize(name, ""));
}

export async function orders(root: HTMLElement): Promise<void> {
  const body = h("tbody");
  const more = h("div", { class: "more" });
  const errors = h("div");
  replace(
    root,
    h("h1", {}, "Your orders"),
    errors,
    h(
      "table",
      { class: "orders" },
      h("thead", {}, h("tr", {}, h("th", {}, "Order"), h("th", {}, "Placed"), h("th", {}, "Total"), h("th", {}, "Status"))),
      body,
    ),
    more,
  );
  const load = async (pageToken: string) => {
    try {
      const res = await gateway.listOrders({ pageSize: 20, pageToken });
      for (const o of res.orders) {
        body.append(
          h(
            "tr",
            { "data-order": o.orderId },
            h("td", {}, h("a", { href: `#/orders/${o.orderId}` }, o.orderId.slice(0, 8))),
            h("td", {}, when(o.createTime)),
            h("td", {}, money(o.total)),
            h("td", {}, statusBadge(o.status)),
          ),
        );
      }
      if (res.orders.length === 0 && !pageToken) {
        body.append(h("tr", {}, h("td", { colspan: 4 }, "No orders yet.")));
      }
      replace(more, res.nextPageToken ? h("button", { type: "button", onclick: () => load(res.nextPageToken) }, "Older orders") : null);
    } catch (e) {
      replace(errors, errorBox(problem(e)));
    }
  };
  await load("");
}
