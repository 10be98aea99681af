// The operator console's page: every REFRESH_MS it asks its own server (GET /api/overview,
// which calls each service's admin APIs as the operator) and shows services, upstreams and
// their endpoints, refused calls, event consumers, dead letters (with replay and discard) and
// feature flags. Built from elements and text only: nothing from a service is parsed as HTML.

import { h, replace, type Child } from "../common/dom.js";
import type { DeadLetter, Overview, ServiceView } from "./model.js";

const REFRESH_MS = 2000;
const main = document.getElementById("main")!;
const refreshed = document.getElementById("refreshed")!;
let csrf = "";

const n = (v: string | number | undefined) => Number(v ?? 0);
const short = (name: string, prefix: string) => name.replace(prefix, "").toLowerCase().replaceAll("_", " ");
const table = (caption: string, head: string[], rows: HTMLElement[], attrs: Record<string, string> = {}) =>
  h(
    "table",
    attrs,
    h("caption", {}, caption),
    h("thead", {}, h("tr", {}, ...head.map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, ...(rows.length ? rows : [h("tr", {}, h("td", { colspan: head.length, class: "none" }, "None"))])),
  );
const cell = (value: Child, attrs: Record<string, string> = {}) => h("td", attrs, value);

function errors(s: ServiceView): HTMLElement | null {
  const list = Object.entries(s.errors);
  if (!list.length) return null;
  return h("ul", { class: "errors" }, ...list.map(([part, e]) => h("li", { "data-error": part }, `${s.name} ${part}: ${e}`)));
}

function servicesPanel(services: ServiceView[]): HTMLElement {
  const rows = services.map((s) => {
    const c = s.parts.stats?.server;
    const limit = n(c?.concurrencyLimit);
    const healthy = s.health === "SERVING";
    return h(
      "tr",
      { "data-service": s.name },
      h("th", { scope: "row" }, s.name),
      cell(h("span", { class: healthy ? "ok" : "bad", "data-health": s.health }, s.health)),
      cell(c?.requests ?? "–", { "data-requests": c?.requests ?? "" }),
      cell(c?.inFlight ?? "–"),
      cell(c?.shed ?? "–", { "data-shed": c?.shed ?? "" }),
      cell(c?.rateLimited ?? "–"),
      cell(limit > 0 ? String(limit) : "none", { "data-limit": String(limit) }),
      cell(`${n(c?.unauthenticated)} / ${n(c?.permissionDenied)}`, { "data-refused": String(n(c?.unauthenticated) + n(c?.permissionDenied)) }),
      cell(s.address),
    );
  });
  return table("Services", ["Service", "Health", "Requests", "In flight", "Shed", "Rate limited", "Concurrency limit", "Refused (no identity / not allowed)", "Address"], rows, { id: "services" });
}

function upstreamsPanel(services: ServiceView[]): HTMLElement {
  const sections: HTMLElement[] = [];
  for (const s of services) {
    const ups = s.parts.upstreams?.upstreams ?? [];
    if (!ups.length) continue;
    const stats = new Map((s.parts.stats?.upstreams ?? []).map((u) => [u.upstream, u.counters]));
    const eps = s.parts.endpoints?.endpoints ?? [];
    const rows = ups.map((u) => {
      const c = stats.get(u.upstream);
      return h(
        "tr",
        { "data-caller": s.name, "data-upstream": u.upstream },
        h("th", { scope: "row" }, u.upstream),
        cell(`${u.healthyEndpointCount} / ${u.endpointCount}`),
        cell(String(u.ejectedEndpointCount), { "data-ejected": String(u.ejectedEndpointCount) }),
        cell(c?.calls ?? "0", { "data-calls": c?.calls ?? "0" }),
        cell(c?.retries ?? "0", { "data-retries": c?.retries ?? "0" }),
        cell(u.retryBudget?.availableRetries ?? "–", { "data-budget": u.retryBudget?.availableRetries ?? "" }),
        cell(c?.budgetExhausted ?? "0"),
        cell(c?.hedges ?? "0", { "data-hedges": c?.hedges ?? "0" }),
        cell(c?.failures ?? "0"),
        cell(n(u.concurrencyLimit) > 0 ? u.concurrencyLimit : "off"),
      );
    });
    const endpointRows = eps.map((e) =>
      h(
        "tr",
        { "data-caller": s.name, "data-endpoint": e.address, "data-state": e.state },
        h("th", { scope: "row" }, `${e.upstream} ${e.address}`),
        cell(h("span", { class: e.state === "ENDPOINT_STATE_HEALTHY" ? "ok" : "bad" }, short(e.state, "ENDPOINT_STATE_"))),
        cell(e.ejectionReason === "EJECTION_REASON_UNSPECIFIED" ? "" : short(e.ejectionReason, "EJECTION_REASON_"), { "data-reason": e.ejectionReason }),
        cell(e.ejectionDetail),
        cell(String(e.ejectionCount), { "data-ejections": String(e.ejectionCount) }),
        cell(e.ewmaLatency ? `${(parseFloat(e.ewmaLatency) * 1000).toFixed(1)} ms` : "–", { "data-ewma": e.ewmaLatency ?? "" }),
        cell(e.inFlight, { "data-in-flight": e.inFlight }),
        cell(`${e.failures} / ${e.attempts}`),
      ),
    );
    sections.push(
      h(
        "section",
        { class: "caller", "data-caller": s.name },
        h("h3", {}, `${s.name} calls`),
        table(`Upstreams of ${s.name}`, ["Upstream", "Healthy", "Ejected", "Calls", "Retries", "Retry budget left", "Budget exhausted", "Hedges", "Failures", "Adaptive limit"], rows),
        table(`Endpoints of ${s.name}`, ["Endpoint", "State", "Ejected because", "Detail", "Ejections", "EWMA latency", "In flight", "Failed / attempts"], endpointRows),
      ),
    );
  }
  return h("section", { id: "upstreams" }, h("h2", {}, "Upstreams and endpoints"), ...sections);
}

function denialsPanel(services: ServiceView[]): HTMLElement {
  const rows = services.flatMap((s) =>
    (s.parts.stats?.denials ?? []).map((d) =>
      h(
        "tr",
        { "data-service": s.name, "data-method": d.method },
        h("th", { scope: "row" }, s.name),
        cell(d.method),
        cell(d.caller || "(no certificate)"),
        cell(d.code === 16 ? "unauthenticated" : "permission denied"),
        cell(d.count, { "data-count": d.count }),
      ),
    ),
  );
  return table("Calls refused by authorization", ["Service", "Method", "Caller", "Answer", "Calls"], rows, { id: "denials" });
}

function consumersPanel(services: ServiceView[]): HTMLElement {
  const rows = services.flatMap((s) =>
    (s.parts.consumers?.consumers ?? []).map((c) =>
      h(
        "tr",
        { "data-service": s.name, "data-consumer": c.name },
        h("th", { scope: "row" }, `${s.name} ${c.name}`),
        cell(c.stream),
        cell(String(n(c.pending) + n(c.ackPending)), { "data-lag": String(n(c.pending) + n(c.ackPending)) }),
        cell(c.applied, { "data-applied": c.applied }),
        cell(c.duplicates),
        cell(c.redelivered, { "data-redelivered": c.redelivered }),
        cell(c.deadLettered, { "data-dead-lettered": c.deadLettered }),
        cell(c.deadLettersPending, { "data-pending-letters": c.deadLettersPending }),
      ),
    ),
  );
  return table("Event consumers", ["Consumer", "Stream", "Lag", "Applied", "Duplicates", "Redelivered", "Dead-lettered", "Letters pending"], rows, { id: "consumers" });
}

async function act(service: string, letter: DeadLetter, verb: "replay" | "discard", reason: string, out: HTMLElement) {
  const response = await fetch(`/api/services/${encodeURIComponent(service)}/dead-letters/${encodeURIComponent(letter.deadLetterId)}/${verb}`, {
    method: "POST",
    headers: { "content-type": "application/json", "x-csrf-token": csrf },
    body: JSON.stringify({ reason }),
  });
  const answer = await response.json();
  out.textContent = response.ok ? `${verb}: ${answer.deadLetter?.status ?? "done"}` : `${verb} refused: ${answer.message}`;
  await refresh(true);
}

function deadLettersPanel(services: ServiceView[]): HTMLElement {
  const rows = services.flatMap((s) =>
    (s.parts.deadLetters?.deadLetters ?? []).map((d) => {
      const reason = h("input", { type: "text", "aria-label": `Reason for dead letter ${d.deadLetterId}`, placeholder: "reason", maxlength: 500, class: "reason" });
      const out = h("span", { role: "status" });
      const pending = d.status === "DEAD_LETTER_STATUS_PENDING";
      const button = (verb: "replay" | "discard") =>
        h(
          "button",
          {
            type: "button",
            "data-action": verb,
            onclick: () => {
              if (!reason.value.trim()) {
                out.textContent = "say why first";
                reason.focus();
                return;
              }
              void act(s.name, d, verb, reason.value, out);
            },
          },
          verb === "replay" ? "Replay" : "Discard",
        );
      return h(
        "tr",
        { "data-service": s.name, "data-dead-letter": d.deadLetterId, "data-status": d.status },
        h("th", { scope: "row" }, `${s.name} ${d.consumer}`),
        cell(d.eventType || d.subject),
        cell(d.lastError),
        cell(d.deliveryCount),
        cell(short(d.status, "DEAD_LETTER_STATUS_") + (d.compensation ? " (compensation)" : "")),
        cell(d.discardReason || (d.resolvedBy ? `by ${d.resolvedBy}` : "")),
        cell(pending ? h("span", { class: "act" }, reason, button("replay"), button("discard"), out) : `${d.replayAttempts} replays`),
      );
    }),
  );
  return table("Dead letters", ["Consumer", "Event", "Last error", "Deliveries", "Status", "Resolution", "Action"], rows, { id: "dead-letters" });
}

function flagsPanel(services: ServiceView[]): HTMLElement {
  const rows = services.flatMap((s) =>
    (s.parts.flags?.flags ?? []).map((f) =>
      h(
        "tr",
        { "data-service": s.name, "data-flag": f.key },
        h("th", { scope: "row" }, `${s.name} ${f.key}`),
        cell(f.enabled ? "on" : "off"),
        cell(f.defaultVariant),
        cell(Object.entries(f.variants).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(", ")),
        cell(Object.entries(f.evaluations).map(([k, v]) => `${k}: ${v}`).join(", ") || "0", { "data-evaluations": JSON.stringify(f.evaluations) }),
        cell(f.errors, { "data-errors": f.errors }),
        cell(f.lastError),
      ),
    ),
  );
  const sources = services.flatMap((s) => (s.parts.flags?.sources ?? []).filter((src) => src.lastError).map((src) => h("li", {}, `${s.name} ${src.path}: ${src.lastError}`)));
  return h(
    "section",
    { id: "flags" },
    table("Feature flags", ["Flag", "State", "Default", "Variants", "Evaluations", "Errors", "Last error"], rows),
    sources.length ? h("ul", { class: "errors" }, ...sources) : null,
  );
}

function actionsPanel(o: Overview): HTMLElement {
  const rows = o.actions.map((a) =>
    h(
      "tr",
      { "data-dead-letter": a.deadLetterId },
      cell(new Date(a.timeUnixMs).toLocaleTimeString()),
      cell(a.service),
      cell(a.verb),
      cell(a.deadLetterId),
      cell(a.reason),
      cell(a.outcome),
    ),
  );
  return table("Actions taken here", ["Time", "Service", "Action", "Dead letter", "Reason", "Outcome"], rows, { id: "actions" });
}

function render(o: Overview): void {
  replace(
    main,
    h("h1", {}, "Operator console"),
    ...o.services.map(errors),
    servicesPanel(o.services),
    upstreamsPanel(o.services),
    denialsPanel(o.services),
    consumersPanel(o.services),
    deadLettersPanel(o.services),
    flagsPanel(o.services),
    actionsPanel(o),
  );
}

/** Whether the operator is typing a reason (the page is not redrawn under them). */
const typing = () => document.activeElement instanceof HTMLInputElement && document.activeElement.value !== "";

async function refresh(force = false): Promise<void> {
  if (typing() && !force) return;
  try {
    const response = await fetch("/api/overview");
    const overview = (await response.json()) as Overview;
    // Asked before the operator started typing: keep what they typed.
    if (typing() && !force) return;
    render(overview);
    refreshed.textContent = `Updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    refreshed.textContent = `Update failed: ${String(e)}`;
  }
}

/** One overview at a time: the next is asked for REFRESH_MS after the last answered. */
async function poll(): Promise<void> {
  await refresh();
  setTimeout(() => void poll(), REFRESH_MS);
}

async function start(): Promise<void> {
  csrf = ((await (await fetch("/api/session")).json()) as { csrfToken: string }).csrfToken;
  await poll();
}

void start();
