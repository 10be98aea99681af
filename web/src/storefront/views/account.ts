// Sign up and log in. A session is the access token in memory: logging out forgets it.

import { timestampDate } from "@bufbuild/protobuf/wkt";
import { gateway, problem, setSession } from "../api.js";
import { h, replace } from "../../common/dom.js";
import { errorBox } from "./errors.js";

function field(name: string, label: string, type: string, autocomplete: string): HTMLElement {
  return h(
    "p",
    { class: "field" },
    h("label", { for: name }, label),
    h("input", { id: name, name, type, autocomplete, required: true }),
  );
}

function value(form: HTMLFormElement, name: string): string {
  return (form.elements.namedItem(name) as HTMLInputElement).value;
}

async function logIn(email: string, password: string): Promise<void> {
  const res = await gateway.logIn({ email, password });
  setSession({
    token: res.accessToken,
    userId: res.userId,
    email,
    expires: res.expireTime ? timestampDate(res.expireTime) : new Date(Date.now() + 5 * 60_000),
  });
}

export function login(root: HTMLElement, next: string): void {
  const errors = h("div");
  const form = h(
    "form",
    {
      class: "account",
      onsubmit: async (e: Event) => {
        e.preventDefault();
        try {
          await logIn(value(form, "email"), value(form, "password"));
          location.hash = next || "#/";
        } catch (err) {
          replace(errors, errorBox(problem(err)));
        }
      },
    },
    field("email", "Email", "email", "username"),
    field("password", "Password", "password", "current-password"),
    h("button", { type: "submit" }, "Log in"),
  );
  replace(
    root,
    h("h1", {}, "Log in"),
    errors,
    form,
    h("p", {}, "New here? ", h("a", { href: `#/signup?next=${encodeURIComponent(next)}` }, "Create an account")),
  );
}

export function signup(root: HTMLElement, next: string): void {
  const errors = h("div");
  const form = h(
    "form",
    {
      class: "account",
      onsubmit: async (e: Event) => {
        e.preventDefault();
        const email = value(form, "email");
        const password = value(form, "password");
        try {
          await gateway.signUp({ email, password, displayName: value(form, "display_name") });
          await logIn(email, password);
          location.hash = next || "#/";
        } catch (err) {
          replace(errors, errorBox(problem(err)));
        }
      },
    },
    field("display_name", "Name", "text", "name"),
    field("email", "Email", "email", "username"),
    field("password", "Password (at least 8 characters)", "password", "new-password"),
    h("button", { type: "submit" }, "Sign up"),
  );
  replace(root, h("h1", {}, "Create an account"), errors, form);
}

export function logout(): void {
  setSession(undefined);
  location.hash = "#/";
}
