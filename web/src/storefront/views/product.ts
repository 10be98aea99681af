// One product: its description, price and availability, and a quantity to add to the cart.

import { Part } from "../../../gen/shop/gateway/v1/gateway_pb.js";
import { gateway, money, problem } from "../api.js";
import * as cart from "../cart.js";
import { h, replace } from "../../common/dom.js";
import { availability, missingNotice } from "./catalog.js";
import { errorBox } from "./errors.js";

export async function product(root: HTMLElement, productId: string): Promise<void> {
  replace(root, h("p", {}, "Loading…"));
  try {
    const res = await gateway.getProduct({ productId });
    const item = res.item;
    const p = item?.product;
    if (!p) throw new Error("the gateway answered without a product");
    const stockMissing = res.missing.some((m) => m.part === Part.STOCK);
    const quantity = h("input", { type: "number", id: "quantity", min: 1, max: 100, value: 1 });
    const added = h("p", { role: "status", class: "added" });
    replace(
      root,
      h("p", {}, h("a", { href: "#/" }, "← Catalog")),
      h("h1", {}, p.name),
      missingNotice(res.missing),
      h("p", { class: "category" }, `${p.category} · SKU ${p.sku}`),
      h("p", { class: "price big" }, money(p.price)),
      availability(item.availableQuantity, stockMissing),
      h("p", { class: "description" }, p.description || "No description."),
      h(
        "form",
        {
          class: "add",
          onsubmit: (e: Event) => {
            e.preventDefault();
            const n = Math.max(1, Math.min(100, Number(quantity.value) || 1));
            cart.add(p, n);
            added.textContent = `Added ${n} to the cart.`;
          },
        },
        h("label", { for: "quantity" }, "Quantity"),
        quantity,
        h("button", { type: "submit" }, "Add to cart"),
      ),
      added,
    );
  } catch (e) {
    replace(root, h("p", {}, h("a", { href: "#/" }, "← Catalog")), errorBox(problem(e)));
  }
}
