// The operator console in headless Chromium (tests/console.rs starts the stack and the console,
// kills a catalog replica under load and dead-letters a refund, then runs this):
//
//   node web/test/console.mjs --url http://127.0.0.1:PORT --caller orders --endpoint ADDRESS
//        --service payments --dead-letter ID --reason TEXT --shots DIR
//
// Waits for the endpoint ADDRESS of CALLER's upstreams to show as ejected with its reason,
// replays the dead letter with the reason and waits for it to show as replayed, checks
// accessibility, same-origin requests and a quiet console, and prints one JSON line with what
// each panel showed (the test compares it with the services' admin APIs). Bounded in time.

import { parseArgs } from "node:util";
import { accessible, check, quietConsole, sameOrigin, screenshot } from "./checks.mjs";
import { killGroup, launch } from "./webdriver.mjs";

const LIMIT_MS = 120_000;

const { values: args } = parseArgs({
  options: {
    url: { type: "string" },
    caller: { type: "string" },
    endpoint: { type: "string" },
    service: { type: "string" },
    "dead-letter": { type: "string" },
    reason: { type: "string" },
    shots: { type: "string", default: "target/screenshots/console" },
  },
});
for (const required of ["url", "caller", "endpoint", "service", "dead-letter", "reason"]) {
  if (!args[required]) {
    console.error(`console.mjs: --${required} is required`);
    process.exit(2);
  }
}

/** What the page shows now, panel by panel, from its data attributes. */
const READ_PANELS = `
  const rows = (css) => [...document.querySelectorAll(css)];
  return {
    services: rows("#services tr[data-service]").map((r) => ({
      service: r.dataset.service,
      health: r.querySelector("[data-health]")?.dataset.health,
      requests: r.querySelector("[data-requests]")?.dataset.requests,
      shed: r.querySelector("[data-shed]")?.dataset.shed,
      limit: r.querySelector("[data-limit]")?.dataset.limit,
      refused: r.querySelector("[data-refused]")?.dataset.refused,
    })),
    upstreams: rows("tr[data-upstream]").map((r) => ({
      caller: r.dataset.caller,
      upstream: r.dataset.upstream,
      ejected: r.querySelector("[data-ejected]")?.dataset.ejected,
      calls: r.querySelector("[data-calls]")?.dataset.calls,
      retries: r.querySelector("[data-retries]")?.dataset.retries,
      budget: r.querySelector("[data-budget]")?.dataset.budget,
      hedges: r.querySelector("[data-hedges]")?.dataset.hedges,
    })),
    endpoints: rows("tr[data-endpoint]").map((r) => ({
      caller: r.dataset.caller,
      address: r.dataset.endpoint,
      state: r.dataset.state,
      reason: r.querySelector("[data-reason]")?.dataset.reason,
      ejections: r.querySelector("[data-ejections]")?.dataset.ejections,
      ewma: r.querySelector("[data-ewma]")?.dataset.ewma,
    })),
    denials: rows("#denials tr[data-method]").map((r) => ({
      service: r.dataset.service,
      method: r.dataset.method,
      count: r.querySelector("[data-count]")?.dataset.count,
    })),
    consumers: rows("#consumers tr[data-consumer]").map((r) => ({
      service: r.dataset.service,
      consumer: r.dataset.consumer,
      lag: r.querySelector("[data-lag]")?.dataset.lag,
      applied: r.querySelector("[data-applied]")?.dataset.applied,
      redelivered: r.querySelector("[data-redelivered]")?.dataset.redelivered,
      deadLettered: r.querySelector("[data-dead-lettered]")?.dataset.deadLettered,
    })),
    deadLetters: rows("#dead-letters tr[data-dead-letter]").map((r) => ({
      service: r.dataset.service,
      id: r.dataset.deadLetter,
      status: r.dataset.status,
    })),
    flags: rows("#flags tr[data-flag]").map((r) => ({
      service: r.dataset.service,
      flag: r.dataset.flag,
      evaluations: JSON.parse(r.querySelector("[data-evaluations]")?.dataset.evaluations ?? "{}"),
      errors: r.querySelector("[data-errors]")?.dataset.errors,
    })),
    actions: rows("#actions tr[data-dead-letter]").map((r) => r.textContent),
  };`;

const session = await launch({ height: 2400 });
const timer = setTimeout(() => {
  console.error(`console: took more than ${LIMIT_MS} ms`);
  killGroup(session.driver, "SIGKILL");
  process.exit(1);
}, LIMIT_MS);
try {
  await session.go(`${args.url}/`);
  await session.find("#services tr[data-service]", 15_000);
  const row = `tr[data-caller="${args.caller}"][data-endpoint="${args.endpoint}"]`;
  await session.until(`${args.endpoint} shown ejected to ${args.caller}`, 20_000, async () => {
    const state = await session.run(`return document.querySelector(arguments[0])?.dataset.state ?? "";`, row);
    return state === "ENDPOINT_STATE_EJECTED";
  });
  const ejected = await (await session.find(row)).text();
  await screenshot(session, args.shots, "console");
  const page = await accessible(session, "console");

  const letter = `#dead-letters tr[data-dead-letter="${args["dead-letter"]}"]`;
  await session.find(`${letter}[data-status="DEAD_LETTER_STATUS_PENDING"]`, 15_000);
  // The page does not refresh while a reason is typed; a refresh between finding the field and
  // typing into it makes the element stale, and the whole step is tried again.
  await session.until("the replay clicked", 10_000, async () => {
    const reason = await session.find(`${letter} input.reason`);
    await reason.clear();
    await reason.type(args.reason);
    // The button of the same row as the field typed into (a redraw makes the field stale).
    await session.run(`return arguments[0].value;`, { "element-6066-11e4-a52e-4f735466cecf": reason.id });
    await (await session.find(`${letter} button[data-action="replay"]`)).click();
    const said = await session.run(`return document.querySelector(arguments[0])?.textContent ?? "";`, `${letter} [role=status]`);
    return !said.includes("say why first");
  });
  await session.find(`${letter}[data-status="DEAD_LETTER_STATUS_REPLAYED"]`, 15_000);
  const action = await session.until("the replay in the actions panel", 10_000, async () => {
    const texts = await session.run(`return [...document.querySelectorAll("#actions tr[data-dead-letter]")].map((r) => r.textContent);`);
    return texts.find((t) => t.includes(args.reason));
  });
  check(/OK/.test(action), `the replay did not succeed: ${action}`);
  await screenshot(session, args.shots, "console-replayed");
  const panels = await session.run(READ_PANELS);
  await sameOrigin(session, "console");
  await quietConsole(session, "console");
  console.log(JSON.stringify({ ejected, action, page, panels }));
} catch (e) {
  await screenshot(session, args.shots, "failed-console").catch(() => {});
  console.error(`console: ${e.message}`);
  process.exitCode = 1;
} finally {
  await session.close().catch(() => {});
  clearTimeout(timer);
}
