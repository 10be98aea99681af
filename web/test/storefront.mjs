// The storefront in headless Chromium, driven as a shopper would (tests/storefront.rs starts
// the stack, stocks the products and runs each phase):
//
//   node web/test/storefront.mjs --url https://127.0.0.1:PORT --phase journey --products ID,ID --shots DIR
//       sign up, log in, add two products, check out with tok_approve and watch the order reach
//       CONFIRMED; a second order with tok_decline reaches CANCELLED with the reason; the order
//       list; the confirmed order cancelled by the shopper. Axe, same-origin and console checks
//       on every page.
//   node web/test/storefront.mjs --url ... --phase degraded --shots DIR
//       (inventory stopped) the catalog still shows, availability marked unknown, no error.
//
// Prints one JSON line with what it saw (order ids, pages checked) and exits 0, or prints
// why it failed and exits 1. Bounded: every wait has a limit, the whole run PHASE_LIMIT_MS.

import { parseArgs } from "node:util";
import { accessible, check, quietConsole, sameOrigin, screenshot } from "./checks.mjs";
import { killGroup, launch } from "./webdriver.mjs";

const PHASE_LIMIT_MS = 180_000;
const SAGA_MS = 30_000;

const { values: args } = parseArgs({
  options: {
    url: { type: "string" },
    phase: { type: "string" },
    products: { type: "string", default: "" },
    shots: { type: "string", default: "target/screenshots" },
  },
});
if (!args.url || !["journey", "degraded"].includes(args.phase)) {
  console.error("usage: storefront.mjs --url URL --phase journey|degraded [--products ID,ID] [--shots DIR]");
  process.exit(2);
}

async function textOf(session, css) {
  return (await session.find(css)).text();
}

/** Waits until the order page shows a final status, recording each change it saw. */
async function settle(session, want) {
  const seen = [];
  await session.until(`the order page to show ${want}`, SAGA_MS, async () => {
    const [status, steps] = await session.run(
      `return [document.querySelector("[data-status]")?.dataset.status ?? "",
               [...document.querySelectorAll("[data-step]")].map((e) => e.dataset.step + ":" + e.dataset.stepStatus)];`,
    );
    const shown = `${status} ${steps.join(",")}`;
    if (seen.at(-1) !== shown) seen.push(shown);
    return status === want || (status !== "PENDING" && status !== "" ? Promise.reject(new Error(`the order ended ${status}, not ${want}: ${shown}`)) : false);
  });
  return seen;
}

async function orderId(session) {
  const url = await session.until("an order page", 10_000, async () => {
    const u = await session.url();
    return /#\/orders\/[0-9a-f-]{36}$/.test(u) ? u : false;
  });
  return url.slice(url.lastIndexOf("/") + 1);
}

async function checkout(session, card) {
  await (await session.find('a[href="#/cart"]')).click();
  await session.find("#place-order");
  await session.run(`const s = document.getElementById("card"); s.value = arguments[0]; s.dispatchEvent(new Event("change"));`, card);
  await (await session.find("#place-order")).click();
  return orderId(session);
}

async function journey(session, shots, products) {
  const pages = [];
  check(products.length >= 2, "--products needs two product ids");
  await session.go(`${args.url}/`);
  await session.until("two products in the catalog", 15_000, async () => (await session.all(".card")).length >= 2);
  await screenshot(session, shots, "catalog");
  pages.push(await accessible(session, "catalog"));

  // Sign up (which logs in).
  const email = `browser-${Date.now()}-${Math.floor(Math.random() * 1e6)}@example.com`;
  await (await session.find('a[href="#/signup"]')).click();
  await (await session.find("#display_name")).type("Browser Shopper");
  await (await session.find("#email")).type(email);
  await (await session.find("#password")).type("correct horse battery");
  pages.push(await accessible(session, "signup"));
  await (await session.find("form.account button[type=submit]")).click();
  await session.until("the shopper's email in the header", 10_000, async () => (await textOf(session, "#who")) === email);

  // Log out and in again: the session is the token in memory only.
  await (await session.find("#logout")).click();
  await session.find('a[href="#/login"]');
  const stored = await session.run(`return [localStorage.length, sessionStorage.length, document.cookie];`);
  check(stored[0] === 0 && stored[1] === 0 && stored[2] === "", `something was stored in the browser: ${JSON.stringify(stored)}`);
  await (await session.find('a[href="#/login"]')).click();
  await (await session.find("#email")).type(email);
  await (await session.find("#password")).type("correct horse battery");
  pages.push(await accessible(session, "login"));
  await (await session.find("form.account button[type=submit]")).click();
  await session.until("logged in again", 10_000, async () => (await textOf(session, "#who")) === email);

  // Two products into the cart: one from its card, one from its page.
  await session.go(`${args.url}/#/`);
  await (await session.find(`[data-product="${products[0]}"] button`)).click();
  await (await session.find(`[data-product="${products[1]}"] a.title`)).click();
  await session.find("#quantity");
  await screenshot(session, shots, "product");
  pages.push(await accessible(session, "product"));
  await (await session.find("form.add button[type=submit]")).click();
  await session.until("two units in the cart", 5_000, async () => (await textOf(session, "#cart-count")) === "2");
  await (await session.find('a[href="#/cart"]')).click();
  await session.until("both lines in the cart", 5_000, async () => (await session.all("table.lines tbody tr")).length === 2);
  await screenshot(session, shots, "cart");
  pages.push(await accessible(session, "cart"));

  const confirmed = await checkout(session, "tok_approve");
  const confirmedSeen = await settle(session, "CONFIRMED");
  const steps = await session.run(`return [...document.querySelectorAll("[data-step]")].map((e) => e.dataset.step);`);
  for (const step of ["PLACE_ORDER", "RESERVE_STOCK", "CAPTURE_PAYMENT", "CONFIRM_ORDER"]) {
    check(steps.includes(step), `the confirmed order's timeline lacks ${step}: ${steps}`);
  }
  await screenshot(session, shots, "order-confirmed");
  pages.push(await accessible(session, "order"));

  // A second order, declined.
  await session.go(`${args.url}/#/`);
  await (await session.find(`[data-product="${products[0]}"] button`)).click();
  const cancelled = await checkout(session, "tok_decline");
  const cancelledSeen = await settle(session, "CANCELLED");
  const reason = await textOf(session, '[data-reason="PAYMENT_DECLINED"]');
  check(/declined/i.test(reason), `the cancelled order shows no reason: ${reason}`);
  await screenshot(session, shots, "order-cancelled");

  await (await session.find('a[href="#/orders"]')).click();
  await session.until("both orders listed", 10_000, async () => (await session.all("tr[data-order]")).length === 2);
  await screenshot(session, shots, "orders");
  pages.push(await accessible(session, "orders"));
  // The confirmed order, cancelled by the shopper: refunded, the reason shown.
  await (await session.find(`tr[data-order="${confirmed}"] a`)).click();
  await (await session.find("#cancel-order")).click();
  await session.find('[data-status="CANCELLED"]', 15_000);
  const userCancelled = await textOf(session, '[data-reason="USER_REQUESTED"]');
  await screenshot(session, shots, "order-user-cancelled");

  // A slow card: the page follows the pending order with WatchOrder's stream over gRPC-Web
  // (not by polling) until it is confirmed.
  await session.go(`${args.url}/#/`);
  await (await session.find(`[data-product="${products[1]}"] button`)).click();
  const slow = await checkout(session, "tok_approve_slow");
  await session.find('[data-following="stream"]', 10_000);
  const slowSeen = await settle(session, "CONFIRMED");
  const requests = await sameOrigin(session, "journey");
  await quietConsole(session, "journey");
  return { email, confirmed, cancelled, slow, confirmedSeen, cancelledSeen, slowSeen, reason, userCancelled, pages, requests };
}

async function degraded(session, shots) {
  await session.go(`${args.url}/`);
  await session.until("products in the catalog", 15_000, async () => (await session.all(".card")).length >= 1);
  const notice = await textOf(session, '[data-missing="stock"]');
  const stock = await session.run(`return [...document.querySelectorAll(".card [data-stock]")].map((e) => e.dataset.stock);`);
  check(stock.length > 0 && stock.every((s) => s === "unknown"), `availability is not marked unknown: ${stock}`);
  check((await session.all(".error")).length === 0, "an error is shown");
  await screenshot(session, shots, "catalog-degraded");
  const page = await accessible(session, "catalog-degraded");
  await sameOrigin(session, "degraded");
  await quietConsole(session, "degraded");
  return { notice, stock: stock.length, pages: [page] };
}

const session = await launch();
const timer = setTimeout(() => {
  console.error(`storefront: the ${args.phase} phase took more than ${PHASE_LIMIT_MS} ms`);
  killGroup(session.driver, "SIGKILL");
  process.exit(1);
}, PHASE_LIMIT_MS);
try {
  const products = args.products.split(",").filter(Boolean);
  const seen = args.phase === "journey" ? await journey(session, args.shots, products) : await degraded(session, args.shots);
  console.log(JSON.stringify({ phase: args.phase, ...seen }));
} catch (e) {
  await screenshot(session, args.shots, `failed-${args.phase}`).catch(() => {});
  console.error(`storefront: ${args.phase}: ${e.message}`);
  process.exitCode = 1;
} finally {
  await session.close().catch(() => {});
  clearTimeout(timer);
}
