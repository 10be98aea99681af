// Shared by the TypeScript client programs: arguments, the gRPC transport, formatting, errors.

import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import { Part, ShopGatewayService, type MissingPart } from "../gen/shop/gateway/v1/gateway_pb.js";
import type { Money } from "../gen/shop/common/v1/money_pb.js";

export type Gateway = Client<typeof ShopGatewayService>;

/** A failure to report on stderr (without a stack trace) before exiting with exitCode. */
export class Failure extends Error {
  constructor(message: string, readonly exitCode = 1) {
    super(message);
  }
}

const usageError = (message: string) => new Failure(message, 2);

export interface Options {
  target: string;
  /** PEM of the CA the gateway's certificate chains to; plaintext without it. */
  ca?: string;
  timeoutMs: number;
  paymentToken: string;
  /** gRPC over HTTP/2 (connect-node), or gRPC-Web over fetch (connect-web, as a browser). */
  transport: "grpc" | "grpc-web";
}

const USAGE = (prog: string, withPaymentToken: boolean) =>
  `usage: node ${prog} --target HOST:PORT [--ca FILE] [--timeout SECONDS] [--transport grpc|grpc-web]` +
  (withPaymentToken ? " [--payment-token TOKEN]" : "") +
  `\n  --target HOST:PORT     address of the shop gateway, e.g. 127.0.0.1:7100` +
  `\n  --ca FILE              CA certificate (PEM) of the gateway's TLS certificate, e.g. .stack/pki/ca.crt;` +
  `\n                         without it, plaintext gRPC (h2c)` +
  `\n  --timeout SECONDS      deadline of each RPC (default 10)` +
  `\n  --transport grpc|grpc-web  gRPC over HTTP/2 (default), or gRPC-Web over fetch as a browser sends it` +
  (withPaymentToken ? `\n  --payment-token TOKEN  payment token of the order (default tok_approve)` : "");

/** Parses the command line; --payment-token only when withPaymentToken. */
export function parseOptions(prog: string, withPaymentToken: boolean): Options {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        target: { type: "string" },
        ca: { type: "string" },
        timeout: { type: "string" },
        transport: { type: "string" },
        "payment-token": { type: "string" },
        help: { type: "boolean", short: "h" },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (e) {
    throw usageError(`${errorText(e)}\n${USAGE(prog, withPaymentToken)}`);
  }
  if (!withPaymentToken && values["payment-token"] !== undefined) {
    throw usageError(`unknown option --payment-token\n${USAGE(prog, withPaymentToken)}`);
  }
  if (values.help) {
    console.log(USAGE(prog, withPaymentToken));
    process.exit(0);
  }
  if (!values.target) {
    throw usageError(`--target is required\n${USAGE(prog, withPaymentToken)}`);
  }
  const timeoutS = values.timeout === undefined ? 10 : Number(values.timeout);
  if (!Number.isFinite(timeoutS) || timeoutS <= 0) {
    throw usageError(`--timeout must be a positive number of seconds, got ${values.timeout}`);
  }
  const transport = values.transport ?? "grpc";
  if (transport !== "grpc" && transport !== "grpc-web") {
    throw usageError(`--transport must be grpc or grpc-web, got ${transport}`);
  }
  if (transport === "grpc-web" && values.ca !== undefined) {
    trustForFetch(values.ca);
  }
  let ca: string | undefined;
  if (values.ca !== undefined) {
    try {
      ca = readFileSync(values.ca, "utf8");
    } catch (e) {
      throw usageError(`--ca ${values.ca}: ${errorText(e)}`);
    }
  }
  return {
    target: values.target,
    ca,
    timeoutMs: Math.round(timeoutS * 1000),
    paymentToken: values["payment-token"] ?? "tok_approve",
    transport,
  };
}

/**
 * fetch (undici) trusts only the CAs Node read at start, NODE_EXTRA_CA_CERTS among them: unless
 * that is `caFile` already, run this program again with it set, and exit with its status.
 */
function trustForFetch(caFile: string): void {
  if (process.env.NODE_EXTRA_CA_CERTS === caFile) {
    return;
  }
  const child = spawnSync(process.execPath, process.argv.slice(1), {
    stdio: "inherit",
    env: { ...process.env, NODE_EXTRA_CA_CERTS: caFile },
  });
  process.exit(child.status ?? 1);
}

/**
 * A gateway client over gRPC and a function that closes its connection: TLS trusting `ca`
 * (no client certificate: end users authenticate with tokens), or HTTP/2 without TLS.
 */
export function connect(
  target: string,
  ca?: string,
  transport: Options["transport"] = "grpc",
): { client: Gateway; close: () => void } {
  const scheme = ca === undefined ? "http" : "https";
  const baseUrl = /^https?:\/\//.test(target) ? target : `${scheme}://${target}`;
  try {
    new URL(baseUrl);
  } catch {
    throw usageError(`--target ${target} is not HOST:PORT`);
  }
  if (transport === "grpc-web") {
    // The browser's protocol on the same port: HTTP/1.1 through fetch, the CA trusted by
    // NODE_EXTRA_CA_CERTS (see trustForFetch).
    const web = createGrpcWebTransport({ baseUrl });
    return { client: createClient(ShopGatewayService, web), close: () => {} };
  }
  const sessionManager = new Http2SessionManager(baseUrl, undefined, ca === undefined ? {} : { ca });
  const transport2 = createGrpcTransport({ baseUrl, sessionManager });
  return { client: createClient(ShopGatewayService, transport2), close: () => sessionManager.abort() };
}

/** Code.InvalidArgument -> "INVALID_ARGUMENT" (the gRPC name). */
export function codeName(code: Code | number): string {
  const name = Code[code];
  if (name === undefined) {
    return String(code);
  }
  return name.replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

export function errorText(e: unknown): string {
  if (e instanceof ConnectError) {
    return `${codeName(e.code)}: ${e.rawMessage}`;
  }
  return e instanceof Error ? e.message : String(e);
}

/** An RPC that ended with a non-OK status. */
export class RpcFailed extends Error {
  constructor(readonly method: string, readonly error: ConnectError) {
    super(`${method} failed: ${errorText(error)}`);
  }
}

/** Runs an RPC, turning its error status into RpcFailed naming the method. */
export async function rpc<T>(method: string, call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (e) {
    throw new RpcFailed(method, ConnectError.from(e));
  }
}

// Currencies whose minor unit is not a hundredth (ISO 4217); every other one has 2 decimals.
const DECIMALS: Record<string, number> = {
  BIF: 0, CLP: 0, DJF: 0, GNF: 0, ISK: 0, JPY: 0, KMF: 0, KRW: 0, PYG: 0,
  RWF: 0, UGX: 0, UYI: 0, VND: 0, VUV: 0, XAF: 0, XOF: 0, XPF: 0,
  BHD: 3, IQD: 3, JOD: 3, KWD: 3, LYD: 3, OMR: 3, TND: 3,
};

export function money(m: Money | undefined): string {
  if (m === undefined) {
    return "-";
  }
  const digits = DECIMALS[m.currencyCode] ?? 2;
  let text: string;
  if (digits === 0) {
    text = m.amountMinor.toString();
  } else {
    const neg = m.amountMinor < 0n;
    const abs = neg ? -m.amountMinor : m.amountMinor;
    const unit = 10n ** BigInt(digits);
    text = `${neg ? "-" : ""}${abs / unit}.${(abs % unit).toString().padStart(digits, "0")}`;
  }
  return `${text} ${m.currencyCode}`.trim();
}

export function ts(t: Timestamp | undefined): string {
  if (t === undefined || (t.seconds === 0n && t.nanos === 0)) {
    return "-";
  }
  return timestampDate(t).toISOString();
}

/** An enum value's name as the proto spells it, e.g. enumName(Part, 3, "PART_") -> "PART_STOCK". */
export function enumName(e: Record<number, string>, value: number, prefix = ""): string {
  const name = e[value];
  return name === undefined ? String(value) : prefix + name;
}

/** "PART_STOCK (UNAVAILABLE: inventory did not answer), ..." or "none". */
export function missingText(parts: readonly MissingPart[]): string {
  if (parts.length === 0) {
    return "none";
  }
  return parts
    .map((m) => `${enumName(Part, m.part, "PART_")} (${codeName(m.code)}: ${m.message})`)
    .join(", ");
}

/** Runs main, printing any failure as one line on stderr (no stack trace) and setting the exit code. */
export function runMain(main: () => Promise<number>): void {
  Promise.resolve().then(main).then(
    (code) => {
      process.exitCode = code;
    },
    (e: unknown) => {
      process.stderr.write(`error: ${errorText(e)}\n`);
      process.exitCode = e instanceof Failure ? e.exitCode : 1;
    },
  );
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
