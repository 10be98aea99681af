// The catalog: search, product cards with availability, and what is missing when inventory
// does not answer (the gateway's missing parts): the browse still works, availability shows
// as unknown.

import { Part, type CatalogItem, type MissingPart } from "../../../gen/shop/gateway/v1/gateway_pb.js";
import { gateway, money, problem } from "../api.js";
import * as cart from "../cart.js";
import { h, replace } from "../../common/dom.js";
import { errorBox } from "./errors.js";

export function availability(quantity: bigint | undefined, stockMissing: boolean): HTMLElement {
  if (stockMissing || quantity === undefined) {
    return h("span", { class: "stock unknown", "data-stock": "unknown" }, "Availability unknown");
  }
  if (quantity <= 0n) return h("span", { class: "stock out", "data-stock": "0" }, "Out of stock");
  return h("span", { class: "stock in", "data-stock": String(quantity) }, `${quantity} in stock`);
}

export function missingNotice(missing: MissingPart[]): HTMLElement | null {
  const stock = missing.find((m) => m.part === Part.STOCK);
  if (!stock) return null;
  return h(
    "p",
    { class: "notice", role: "status", "data-missing": "stock" },
    "Availability is unknown right now: inventory did not answer. You can still browse and order.",
  );
}

function card(item: CatalogItem, stockMissing: boolean): HTMLElement {
  const p = item.product!;
  return h(
    "li",
    { class: "card", "data-product": p.productId },
    h("a", { href: `#/products/${p.productId}`, class: "title" }, p.name),
    h("p", { class: "category" }, p.category),
    h("p", { class: "price" }, money(p.price)),
    availability(item.availableQuantity, stockMissing),
    h(
      "button",
      {
        type: "button",
        onclick: () => cart.add(p),
        "aria-label": `Add ${p.name} to the cart`,
      },
      "Add to cart",
    ),
  );
}

export async function catalog(root: HTMLElement, query: URLSearchParams): Promise<void> {
  const search = query.get("q") ?? "";
  const input = h("input", { type: "search", name: "q", value: search, id: "search", placeholder: "Search products" });
  const form = h(
    "form",
    {
      class: "search",
      role: "search",
      onsubmit: (e: Event) => {
        e.preventDefault();
        location.hash = input.value ? `#/?q=${encodeURIComponent(input.value)}` : "#/";
      },
    },
    h("label", { for: "search", class: "visually-hidden" }, "Search products"),
    input,
    h("button", { type: "submit" }, "Search"),
  );
  const grid = h("ul", { class: "grid", "aria-live": "polite" });
  const notice = h("div");
  const more = h("div", { class: "more" });
  replace(root, h("h1", {}, "Catalog"), form, notice, grid, more);

  const load = async (pageToken: string) => {
    try {
      const res = await gateway.listProducts({ pageSize: 24, pageToken, nameContains: search });
      const stockMissing = res.missing.some((m) => m.part === Part.STOCK);
      replace(notice, missingNotice(res.missing));
      for (const item of res.items) if (item.product) grid.append(card(item, stockMissing));
      if (res.items.length === 0 && !pageToken) grid.append(h("li", { class: "empty" }, "No products match."));
      replace(
        more,
        res.nextPageToken
          ? h("button", { type: "button", onclick: () => load(res.nextPageToken) }, "More products")
          : null,
      );
    } catch (e) {
      replace(notice, errorBox(problem(e)));
    }
  };
  await load("");
}
