// The storefront: a page with a header and one view at a time, chosen by the URL's fragment
// (`#/products/{id}`, `#/orders/{id}`...), so the gateway serves one document at `/`.

import { current, onSessionChange } from "./api.js";
import * as cart from "./cart.js";
import { h, replace } from "../common/dom.js";
import { login, logout, signup } from "./views/account.js";
import { catalog } from "./views/catalog.js";
import { checkout } from "./views/checkout.js";
import { order } from "./views/order.js";
import { orders } from "./views/orders.js";
import { product } from "./views/product.js";

const main = document.getElementById("main")!;
const nav = document.getElementById("nav")!;
let shown = 0; // bumped at every navigation: a view still polling stops when it changes

function header(): void {
  const s = current();
  replace(
    nav,
    h("a", { href: "#/" }, "Catalog"),
    h("a", { href: "#/cart", id: "cart-link" }, "Cart ", h("span", { class: "count", id: "cart-count" }, String(cart.count()))),
    s ? h("a", { href: "#/orders" }, "Orders") : null,
    s
      ? h("span", { class: "who", id: "who" }, s.email)
      : h("a", { href: "#/login" }, "Log in"),
    s ? h("button", { type: "button", class: "link", id: "logout", onclick: logout }, "Log out") : h("a", { href: "#/signup" }, "Sign up"),
  );
}

function requireLogin(path: string): boolean {
  if (current()) return true;
  location.hash = `#/login?next=${encodeURIComponent(path)}`;
  return false;
}

async function route(): Promise<void> {
  const generation = ++shown;
  const still = () => generation === shown;
  const hash = location.hash || "#/";
  const [path, rawQuery] = hash.slice(1).split("?", 2) as [string, string | undefined];
  const query = new URLSearchParams(rawQuery ?? "");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  header();
  main.focus({ preventScroll: true });
  switch (parts[0]) {
    case undefined:
      return catalog(main, query);
    case "products":
      return parts[1] ? product(main, parts[1]) : catalog(main, query);
    case "login":
      return login(main, query.get("next") ?? "#/");
    case "signup":
      return signup(main, query.get("next") ?? "#/");
    case "cart":
      return checkout(main);
    case "orders":
      if (!requireLogin(hash)) return;
      return parts[1] ? order(main, parts[1], still) : orders(main);
    default:
      replace(main, h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/" }, "Back to the catalog")));
  }
}

onSessionChange(header);
cart.onCartChange(header);
window.addEventListener("hashchange", () => void route());
void route();
