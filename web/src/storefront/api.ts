// The gateway, over gRPC-Web from the page's own origin, with the client generated from
// proto/. The access token lives in this module's memory only (never in localStorage or a
// cookie): a reload logs the shopper out, and no other script or tab can read it.

import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import { ShopGatewayService } from "../../gen/shop/gateway/v1/gateway_pb.js";
import { BadRequestSchema, RetryInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import type { Money } from "../../gen/shop/common/v1/money_pb.js";

export interface Session {
  token: string;
  userId: string;
  email: string;
  expires: Date;
}

let session: Session | undefined;
const listeners: Array<() => void> = [];

export function current(): Session | undefined {
  if (session && session.expires.getTime() <= Date.now()) session = undefined;
  return session;
}

export function setSession(next: Session | undefined): void {
  session = next;
  for (const listener of listeners) listener();
}

export function onSessionChange(listener: () => void): void {
  listeners.push(listener);
}

const bearer: Interceptor = (next) => async (request) => {
  const s = current();
  if (s) request.header.set("authorization", `Bearer ${s.token}`);
  return next(request);
};

export const gateway = createClient(
  ShopGatewayService,
  createGrpcWebTransport({
    baseUrl: location.origin,
    interceptors: [bearer],
    defaultTimeoutMs: 10_000,
  }),
);

/** What a refused or failed call means to the shopper. */
export interface Problem {
  code: string;
  message: string;
  /** Field violations of INVALID_ARGUMENT, by field name. */
  fields: Map<string, string>;
  retryAfterSeconds?: number;
}

export function problem(error: unknown): Problem {
  const e = ConnectError.from(error);
  const fields = new Map<string, string>();
  for (const detail of e.findDetails(BadRequestSchema)) {
    for (const v of detail.fieldViolations) fields.set(v.field, v.description);
  }
  if (e.code === Code.Unauthenticated) setSession(undefined);
  // google.rpc.RetryInfo (the gateway's limits, a full WatchOrder), else Retry-After.
  const info = e.findDetails(RetryInfoSchema)[0]?.retryDelay;
  const retry = info ? Number(info.seconds) + info.nanos / 1e9 : Number(e.metadata.get("retry-after"));
  return {
    code: Code[e.code] ?? "Unknown",
    message: e.rawMessage,
    fields,
    retryAfterSeconds: Number.isFinite(retry) && retry > 0 ? retry : undefined,
  };
}

export function money(m: Money | undefined): string {
  if (!m) return "";
  try {
    const format = new Intl.NumberFormat("en-US", { style: "currency", currency: m.currencyCode });
    const digits = format.resolvedOptions().maximumFractionDigits ?? 2;
    return format.format(Number(m.amountMinor) / 10 ** digits);
  } catch {
    return `${m.amountMinor} ${m.currencyCode} (minor units)`;
  }
}

export function when(t: Timestamp | undefined): string {
  return t ? timestampDate(t).toLocaleString() : "";
}

/** `SAGA_STEP_TYPE_RESERVE_STOCK` -> `Reserve stock`, given the enum's prefix. */
export function humanize(name: string | undefined, prefix: string): string {
  if (!name) return "";
  const words = name.replace(prefix, "").toLowerCase().replaceAll("_", " ");
  return words.charAt(0).toUpperCase() + words.slice(1);
}
