// Types of herald.js (GET /herald.js, or as an ES module GET /herald.mjs).

export type TransportName =
  | "websocket" | "sse" | "xhr_streaming" | "iframe" | "xhr_polling" | "jsonp_polling" | "polling";

export type ConnectionState = "idle" | "connecting" | "connected" | "unavailable" | "closed";

/** One event of a channel: offsets grow by one per channel; epoch changes when history was lost. */
export interface HeraldEvent<Data = unknown> {
  channel: string;
  offset: number;
  epoch: string;
  type: string;
  time: string;
  data: Data;
}

/** A check as the REST API returns it. */
export interface Check {
  id: string;
  kind: "delay" | "http" | "tcp" | "external";
  params: unknown;
  state: "processing" | "done" | "failed" | "canceled";
  result: unknown;
  error: unknown;
  version: number;
  created_at: string;
  updated_at: string;
  completed_at: string | null;
  /** The cancel capability: in the create answer only (and on what createCheck resolves with). */
  cancel_token?: string;
  [field: string]: unknown;
}

export interface CheckSpec {
  kind: Check["kind"];
  params?: unknown;
  callback_url?: string;
  callback_secret?: string;
  callback_events?: "terminal" | "all";
}

/** A lost position: what the server still keeps (for a check, its snapshot), delivered next. */
export interface Gap {
  channel: string;
  epoch: string;
  events: HeraldEvent[];
}

/** What `publish` resolves with (over HTTP, the whole event, with its `time`). */
export interface Published<Data = unknown> {
  channel: string;
  offset: number;
  epoch: string;
  type: string;
  data: Data;
  time?: string;
}

/**
 * What the `error` listener gets: a cut (`reason`), a WebSocket error op (`code`, `message`),
 * a token renewal that failed (`code: "token-unavailable"`), or a channel refused to this token
 * (`channel`, `code` "token-required" | "token-invalid" | "channel-forbidden" | "token-expired",
 * `permanent: true`: the channel is not tried again until `setToken` or a new `subscribe`).
 */
export interface ConnectionError {
  transport?: TransportName;
  reason?: string;
  code?: string;
  message?: string;
  channel?: string;
  /** The HTTP status of a refusal (401, 403), when it came over HTTP. */
  status?: number;
  permanent?: boolean;
  /** s: the server's Retry-After (429, 503); no reconnect before then. */
  retryAfter?: number;
}

/** How createCheck, cancelCheck and publish reject on an error answer. */
export interface RequestError extends Error {
  /** The HTTP status (absent over the WebSocket). */
  status?: number;
  /** The problem document's code, as over HTTP: "channel-forbidden", "token-expired", "rate-limited", ... */
  code?: string;
  problem?: { type?: string; title?: string; status?: number; detail?: string; code?: string };
  /** s, from Retry-After on 429 and 503. */
  retryAfter?: number;
}

export interface Options {
  /** A client token (JWT) for private channels, publishing and creating checks; renewed only with getToken or setToken. */
  token?: string | null;
  /**
   * Returns a fresh client token (e.g. from the application's token endpoint). Called before
   * the first connection, then ahead of each token's `exp` (at 80% of its remaining life or
   * 30 s before it, whichever is sooner, but not before half of it), and when the server says
   * a token expired.
   */
  getToken?: (() => string | Promise<string>) | null;
  /** Transports to use, best first. Default: all of them. */
  transports?: TransportName[];
  /** ms between starting one candidate and the next (300). */
  raceDelay?: number;
  /** ms a candidate has to show a message before it is dropped (5000). */
  verifyTimeout?: number;
  /** s between the server's heartbeats (15); silence for twice that plus 5 s is a dead connection. */
  heartbeat?: number;
  /** s a long poll is held (25). */
  pollWait?: number;
  /** ms between plain polls (2000). */
  pollInterval?: number;
  /** ms before the first reconnect (250), doubling up to backoffMax (10000), with jitter. */
  backoffInitial?: number;
  backoffMax?: number;
  /** s the transport remembered in localStorage stays valid (3600). */
  cacheTTL?: number;
  /** ms after connecting on a fallback before WebSocket is tried again (3000), then every upgradeInterval (60000). */
  upgradeDelay?: number;
  upgradeInterval?: number;
  /** Bytes an XHR stream or iframe may grow before it is reopened (1 MiB). */
  streamMaxBytes?: number;
  /** One connection for all tabs of the origin (true). */
  share?: boolean;
  /** Where the winning transport is remembered (localStorage). */
  storage?: Storage | null;
}

export interface Position {
  /** Resume after this offset (0: from the channel's start). Default: from now (a check: its start). */
  since?: number;
  epoch?: string;
}

export interface Connection {
  /** The transport in use, once one works. */
  readonly transport: TransportName | null;
  readonly state: ConnectionState;
  /** False in a tab that listens to another tab's connection. */
  readonly isLeader: boolean;
  /** This tab's connection: HTTP requests and connections opened, bytes received, holes filled. */
  readonly stats: { requests: number; bytes: number; catchUps: number };
  /** The transports this tab's connection started, in order. */
  readonly attempts: TransportName[];

  subscribe<Data = unknown>(channel: string, onEvent: (event: HeraldEvent<Data>) => void, position?: Position): () => void;
  unsubscribe(channel: string, onEvent?: (event: HeraldEvent) => void): void;
  /**
   * Creates a check and resolves with it once it has ended (done, failed or canceled), with the
   * create answer's `cancel_token`; `onCreated` gets the processing check with it.
   */
  createCheck(spec: CheckSpec, options?: {
    idempotencyKey?: string;
    onCreated?: (check: Check) => void;
    onChange?: (check: Check, event: HeraldEvent<Check>) => void;
  }): Promise<Check>;
  /** Cancels a processing check with its cancel token (or as the token that created it); resolves with the canceled check. */
  cancelCheck(id: string, cancelToken?: string): Promise<Check>;
  /** Publishes to a channel the token's `publish` grant matches: over the open WebSocket, else POST. */
  publish<Data = unknown>(channel: string, type: string, data?: Data): Promise<Published<Data>>;
  /** Replaces the token; the open WebSocket takes it, and channels refused to the old one are tried again. */
  setToken(token: string): void;
  /** Follows a check; resolves with it once it has ended. */
  watchCheck(id: string, onChange?: (check: Check, event: HeraldEvent<Check>) => void): Promise<Check>;
  on(name: "transport", listener: (transport: TransportName) => void): () => void;
  on(name: "state", listener: (state: ConnectionState) => void): () => void;
  on(name: "gap", listener: (gap: Gap) => void): () => void;
  on(name: "error", listener: (error: ConnectionError) => void): () => void;
  /** Drops a transport from this tab's connection and falls back (the lab's break buttons). */
  breakTransport(name: TransportName): void;
  close(): void;
}

export function connect(url?: string, options?: Options): Connection;
export const transports: TransportName[];

declare const Herald: { connect: typeof connect; transports: TransportName[]; defaults: Required<Options>; version: string };
export default Herald;

declare global {
  interface Window {
    Herald: typeof Herald;
  }
}
