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

export interface Options {
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
  /** Creates a check and resolves with it once it has ended (done, failed or canceled). */
  createCheck(spec: CheckSpec, options?: {
    idempotencyKey?: string;
    onCreated?: (check: Check) => void;
    onChange?: (check: Check, event: HeraldEvent<Check>) => void;
  }): Promise<Check>;
  /** Follows a check; resolves with it once it has ended. */
  watchCheck(id: string, onChange?: (check: Check, event: HeraldEvent<Check>) => void): Promise<Check>;
  on(name: "transport", listener: (transport: TransportName) => void): () => void;
  on(name: "state", listener: (state: ConnectionState) => void): () => void;
  on(name: "gap", listener: (gap: Gap) => void): () => void;
  on(name: "error", listener: (error: { transport: TransportName; reason?: string; code?: string; message?: string }) => void): () => void;
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
