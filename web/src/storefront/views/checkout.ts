// The cart and checkout: quantities, a test payment token, and the order placed with an
// idempotency key chosen once per checkout (a retried click places one order).

import { current, gateway, money, problem } from "../api.js";
import * as cart from "../cart.js";
import { h, replace } from "../../common/dom.js";
import { errorBox } from "./errors.js";

/** The test payment tokens of PaymentService (proto/shop/payments/v1/payments.proto). */
const CARDS: Array<[string, string]> = [
  ["tok_approve", "Test card: approved"],
  ["tok_decline", "Test card: declined"],
  ["tok_approve_slow", "Test card: approved slowly"],
];

export function checkout(root: HTMLElement): void {
  const lines = cart.contents();
  if (lines.length === 0) {
    replace(root, h("h1", {}, "Cart"), h("p", {}, "Your cart is empty. ", h("a", { href: "#/" }, "Browse the catalog")));
    return;
  }
  const rows = lines.map((line) =>
    h(
      "tr",
      { "data-product": line.product.productId },
      h("td", {}, line.product.name),
      h("td", {}, money(line.product.price)),
      h(
        "td",
        {},
        h("input", {
          type: "number",
          min: 0,
          max: 100,
          value: line.quantity,
          "aria-label": `Quantity of ${line.product.name}`,
          onchange: (e: Event) => {
            // Whole units, 0 (removed) to 100, whatever was typed.
            const typed = Math.round(Number((e.target as HTMLInputElement).value));
            cart.setQuantity(line.product.productId, Number.isFinite(typed) ? Math.min(100, Math.max(0, typed)) : line.quantity);
            checkout(root);
          },
        }),
      ),
      h(
        "td",
        {},
        h("button", { type: "button", class: "link", onclick: () => (cart.setQuantity(line.product.productId, 0), checkout(root)) }, "Remove"),
      ),
    ),
  );
  const card = h(
    "select",
    { id: "card", name: "card" },
    ...CARDS.map(([token, label]) => h("option", { value: token }, label)),
  );
  const errors = h("div");
  const idempotencyKey = crypto.randomUUID();
  const place = h("button", { type: "submit", id: "place-order" }, "Place order");
  const form = h(
    "form",
    {
      class: "checkout",
      onsubmit: async (e: Event) => {
        e.preventDefault();
        if (!current()) {
          location.hash = `#/login?next=${encodeURIComponent("#/cart")}`;
          return;
        }
        place.setAttribute("disabled", "");
        try {
          const res = await gateway.placeOrder({
            lines: cart.contents().map((l) => ({ productId: l.product.productId, quantity: BigInt(l.quantity) })),
            paymentToken: card.value,
            idempotencyKey,
          });
          cart.clear();
          location.hash = `#/orders/${res.order!.orderId}`;
        } catch (err) {
          place.removeAttribute("disabled");
          replace(errors, errorBox(problem(err)));
        }
      },
    },
    h("label", { for: "card" }, "Payment"),
    card,
    place,
  );
  replace(
    root,
    h("h1", {}, "Cart"),
    h(
      "table",
      { class: "lines" },
      h("thead", {}, h("tr", {}, h("th", {}, "Product"), h("th", {}, "Price"), h("th", {}, "Quantity"), h("th", {}, h("span", { class: "visually-hidden" }, "Actions")))),
      h("tbody", {}, ...rows),
    ),
    errors,
    current() ? null : h("p", {}, "You will be asked to log in to place the order."),
    form,
  );
}
