// Checks every page of the browser suites goes through: accessibility (axe-core, run inside
// the page), requests to no origin but the page's own, no error in the console, and a
// screenshot of what the page shows.

import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";

const require = createRequire(import.meta.url);
const AXE = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");

export class CheckFailed extends Error {}

export function check(ok, message) {
  if (!ok) throw new CheckFailed(message);
}

/** axe-core's WCAG 2.1 A/AA and best-practice rules: no serious or critical violation. */
export async function accessible(session, page) {
  // WebDriver scripts run outside the page's Content-Security-Policy.
  await session.run(`${AXE}; return true;`);
  const result = await session.runAsync(
    `const done = arguments[arguments.length - 1];
     axe.run(document, { runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"] } })
       .then((r) => done({ violations: r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map((n) => n.target.join(" ")).slice(0, 5) })), passes: r.passes.length }))
       .catch((e) => done({ error: String(e) }));`,
  );
  check(!result.error, `${page}: axe failed: ${result.error}`);
  const bad = result.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  check(bad.length === 0, `${page}: accessibility violations: ${JSON.stringify(bad, null, 1)}`);
  return { page, passes: result.passes, minor: result.violations.length };
}

/** Every resource the page loaded (scripts, styles, gRPC-Web fetches) came from its origin. */
export async function sameOrigin(session, page) {
  const seen = await session.run(
    `return [location.origin, performance.getEntriesByType("navigation").concat(performance.getEntriesByType("resource")).map((e) => e.name)];`,
  );
  const [origin, urls] = seen;
  const foreign = urls.filter((u) => new URL(u).origin !== origin);
  check(foreign.length === 0, `${page}: requests to another origin than ${origin}: ${foreign.join(", ")}`);
  return urls.length;
}

/** Nothing logged at SEVERE (errors, Content-Security-Policy violations) since the last call. */
export async function quietConsole(session, page, allowed = []) {
  const entries = await session.consoleLog();
  const severe = entries.filter(
    (e) => e.level === "SEVERE" && !allowed.some((pattern) => pattern.test(e.message)),
  );
  check(severe.length === 0, `${page}: console errors: ${severe.map((e) => e.message).join(" | ")}`);
}

/** Writes a PNG of the viewport to `dir/name.png`. */
export async function screenshot(session, dir, name) {
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `${name}.png`);
  writeFileSync(file, await session.screenshot());
  return file;
}
