// A refusal shown to the shopper: what happened, and each field's problem.

import type { Problem } from "../api.js";
import { h } from "../../common/dom.js";

const WHAT: Record<string, string> = {
  InvalidArgument: "Please check the form",
  Unauthenticated: "Please log in",
  PermissionDenied: "That is not yours",
  NotFound: "Not found",
  AlreadyExists: "Already exists",
  FailedPrecondition: "Not possible now",
  ResourceExhausted: "Too many requests",
  Unavailable: "The shop is busy or partly down",
  DeadlineExceeded: "The shop took too long",
};

export function errorBox(p: Problem): HTMLElement {
  const list = [...p.fields].map(([field, description]) =>
    h("li", { "data-field": field }, `${field}: ${description}`),
  );
  return h(
    "div",
    { class: "error", role: "alert", "data-code": p.code },
    h("strong", {}, WHAT[p.code] ?? "Something went wrong"),
    h("p", {}, p.message),
    list.length ? h("ul", {}, ...list) : null,
    p.retryAfterSeconds ? h("p", {}, `Try again in ${p.retryAfterSeconds} s.`) : null,
  );
}
