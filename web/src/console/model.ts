// The console's JSON (GET /api/overview): the admin APIs' answers as proto3 JSON (64-bit
// integers as strings, enums by name, durations as "0.012s"), per service.

export interface Overview {
  services: ServiceView[];
  actions: Action[];
}

export interface ServiceView {
  name: string;
  address: string;
  health: string;
  parts: {
    stats?: { server?: ServerCounters; upstreams?: UpstreamStats[]; denials?: Denial[] };
    policy?: { server?: { maxConcurrency?: number } };
    upstreams?: { upstreams?: UpstreamStatus[] };
    endpoints?: { endpoints?: Endpoint[] };
    consumers?: { consumers?: Consumer[] };
    deadLetters?: { deadLetters?: DeadLetter[] };
    flags?: { flags?: Flag[]; sources?: FlagSource[] };
  };
  errors: Record<string, string>;
}

export interface ServerCounters {
  requests: string;
  inFlight: string;
  shed: string;
  deadlineExceeded: string;
  unauthenticated: string;
  permissionDenied: string;
  rateLimited: string;
  concurrencyLimit: string;
}

export interface ClientCounters {
  calls: string;
  attempts: string;
  retries: string;
  budgetExhausted: string;
  hedges: string;
  ejections: string;
  failures: string;
  throttled: string;
  limited: string;
}

export interface UpstreamStats {
  upstream: string;
  counters?: ClientCounters;
}

export interface UpstreamStatus {
  upstream: string;
  endpointCount: number;
  healthyEndpointCount: number;
  ejectedEndpointCount: number;
  retryBudget?: { availableRetries: string; ratio: number };
  throttleProbability: number;
  concurrencyLimit: string;
}

export interface Endpoint {
  upstream: string;
  address: string;
  state: string;
  ejectionReason: string;
  ejectionDetail: string;
  ejectionCount: number;
  ewmaLatency?: string;
  inFlight: string;
  consecutiveFailures: number;
  attempts: string;
  failures: string;
}

export interface Denial {
  method: string;
  caller: string;
  code: number;
  count: string;
}

export interface Consumer {
  name: string;
  stream: string;
  pending: string;
  ackPending: string;
  redelivered: string;
  applied: string;
  duplicates: string;
  deadLettered: string;
  deadLettersPending: string;
}

export interface DeadLetter {
  deadLetterId: string;
  consumer: string;
  subject: string;
  eventType: string;
  deliveryCount: string;
  lastError: string;
  status: string;
  compensation: boolean;
  replayAttempts: number;
  discardReason: string;
  resolvedBy: string;
}

export interface Flag {
  key: string;
  enabled: boolean;
  defaultVariant: string;
  variants: Record<string, unknown>;
  evaluations: Record<string, string>;
  errors: string;
  lastError: string;
}

export interface FlagSource {
  path: string;
  flagCount: number;
  lastError: string;
}

export interface Action {
  timeUnixMs: number;
  service: string;
  deadLetterId: string;
  verb: string;
  reason: string;
  outcome: string;
}
