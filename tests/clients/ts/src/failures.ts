// Checks how the shop gateway refuses bad calls, with the generated TypeScript client.
//
// Prints one line per check, `ok <name>` or `FAIL <name>: <why>`, and exits 0 only when every
// check is ok:
//
//   no_token      ListOrders without authorization metadata is UNAUTHENTICATED
//   forged_token  ListOrders with made-up tokens (alg "none", HS256 with a random key, garbage)
//                 is UNAUTHENTICATED
//   bad_request   SignUp with a malformed email, a short password and no display name is
//                 INVALID_ARGUMENT with a google.rpc.BadRequest detail naming email and password
//                 (each violation is printed as `violation <field>: <description>`)
//
//   node tests/clients/ts/dist/src/failures.js --target 127.0.0.1:PORT

import { createHmac, randomBytes, randomUUID } from "node:crypto";
import { Code, ConnectError, type CallOptions } from "@connectrpc/connect";
import { BadRequestSchema } from "../gen/google/rpc/error_details_pb.js";
import { codeName, connect, errorText, Failure, parseOptions, runMain, type Gateway } from "./common.js";

class CheckFailed extends Error {}

const b64url = (data: string | Buffer) => Buffer.from(data).toString("base64url");

function madeUpJwt(alg: "none" | "HS256"): string {
  const now = Math.floor(Date.now() / 1000);
  const header = b64url(JSON.stringify({ alg, typ: "JWT" }));
  const payload = b64url(JSON.stringify({ sub: randomUUID(), iat: now, nbf: now, exp: now + 3600 }));
  const signingInput = `${header}.${payload}`;
  if (alg === "none") {
    return `${signingInput}.`;
  }
  return `${signingInput}.${createHmac("sha256", randomBytes(32)).update(signingInput).digest("base64url")}`;
}

/** Runs call, which must fail with want; returns its error. */
async function expectCode(what: string, want: Code, call: () => Promise<unknown>): Promise<ConnectError> {
  try {
    await call();
  } catch (e) {
    const err = ConnectError.from(e);
    if (err.code !== want) {
      throw new CheckFailed(`${what}: want ${codeName(want)}, got ${errorText(err)}`);
    }
    return err;
  }
  throw new CheckFailed(`${what}: want ${codeName(want)}, but the call succeeded`);
}

async function checkNoToken(client: Gateway, call: CallOptions): Promise<void> {
  await expectCode("ListOrders without authorization", Code.Unauthenticated, () =>
    client.listOrders({}, call),
  );
}

async function checkForgedToken(client: Gateway, call: CallOptions): Promise<void> {
  const tokens: [string, string][] = [
    ['an alg "none" JWT', madeUpJwt("none")],
    ["an HS256 JWT signed with a random key", madeUpJwt("HS256")],
    ["a garbage token", `garbage-${randomBytes(8).toString("hex")}`],
  ];
  const problems: string[] = [];
  for (const [label, token] of tokens) {
    try {
      await expectCode(`ListOrders with ${label}`, Code.Unauthenticated, () =>
        client.listOrders({}, { ...call, headers: { authorization: `Bearer ${token}` } }),
      );
    } catch (e) {
      if (!(e instanceof CheckFailed)) {
        throw e;
      }
      problems.push(e.message);
    }
  }
  if (problems.length > 0) {
    throw new CheckFailed(problems.join("; "));
  }
}

async function checkBadRequest(client: Gateway, call: CallOptions): Promise<void> {
  const err = await expectCode("SignUp with invalid fields", Code.InvalidArgument, () =>
    client.signUp({ email: "nope", password: "short", displayName: "" }, call),
  );
  const fields: string[] = [];
  for (const badRequest of err.findDetails(BadRequestSchema)) {
    for (const v of badRequest.fieldViolations) {
      console.log(`violation ${v.field}: ${v.description}`);
      fields.push(v.field);
    }
  }
  if (fields.length === 0) {
    const types = err.details.map((d) => ("desc" in d ? d.desc.typeName : d.type)).join(", ");
    throw new CheckFailed(
      `no google.rpc.BadRequest field violations in the details (types: ${types || "none"}; ` +
        `message: ${err.rawMessage})`,
    );
  }
  const absent = ["email", "password"].filter((f) => !fields.includes(f));
  if (absent.length > 0) {
    throw new CheckFailed(`no violation for ${absent.join(", ")} (got ${fields.join(", ")})`);
  }
}

const CHECKS: [string, (client: Gateway, call: CallOptions) => Promise<void>][] = [
  ["no_token", checkNoToken],
  ["forged_token", checkForgedToken],
  ["bad_request", checkBadRequest],
];

async function run(): Promise<number> {
  const opts = parseOptions("tests/clients/ts/dist/src/failures.js", false);
  const { client, close } = connect(opts.target, opts.ca, opts.transport);
  const failed: string[] = [];
  try {
    for (const [name, check] of CHECKS) {
      try {
        await check(client, { timeoutMs: opts.timeoutMs });
        console.log(`ok ${name}`);
      } catch (e) {
        console.log(`FAIL ${name}: ${e instanceof CheckFailed ? e.message : errorText(e)}`);
        failed.push(name);
      }
    }
  } finally {
    close();
  }
  if (failed.length > 0) {
    throw new Failure(`${failed.length} of ${CHECKS.length} checks failed: ${failed.join(", ")}`);
  }
  return 0;
}

runMain(run);
