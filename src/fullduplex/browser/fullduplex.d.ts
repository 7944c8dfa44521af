// Type declarations of fullduplex.js / fullduplex.mjs (the browser client of fullduplex's
// pub/sub transports). See docs/clients.md.

/** A transport, best first. */
export type TransportName = "websocket" | "sse" | "longpoll" | "poll";

/** The client's state: see the state machine at the top of fullduplex.js. */
export type State = "idle" | "connecting" | "open" | "reconnecting" | "closed";

/** A message of a topic, the same JSON on every transport. */
export interface Message<T = unknown> {
  topic: string;
  /** Numbers the topic's messages from 1, with no holes. */
  seq: number;
  data: T;
  /** Publish time, seconds since the epoch (the hub's clock). */
  time: number;
}

/** Messages since+1 .. first_available-1 of a topic are not coming. */
export interface Gap {
  topic: string;
  since: number;
  first_available: number;
  /** "trimmed" from history, "dropped" for a slow consumer, "reset" when the topic restarted. */
  reason: string;
}

/** A publish acknowledged by the server. */
export interface Ack {
  topic: string;
  seq: number;
  time: number;
}

/** Why the server dropped this client's previous connection ("drop" event, client.lastDrop). */
export interface DropEvent {
  /** "slow consumer": the page did not read as fast as a topic with the "disconnect" policy fed it. */
  reason: string;
  /** The WebSocket close code the server gave (1013, try again later), on "websocket". */
  code?: number;
  /** The topic whose backlog overflowed, if one did. */
  topic?: string;
  /** When, seconds since the epoch (the server's clock). */
  time: number;
  /** The transport it was dropped from: "websocket" or "sse". */
  transport: string;
}

/** Fired on every state change. */
export interface StateEvent {
  state: State;
  /** The open transport (state "open"), else null. */
  transport: TransportName | null;
  /** Failed connecting rounds in a row. */
  attempt: number;
  /** "reconnecting": milliseconds until the next round. */
  delay?: number;
  /** "reconnecting": the WebSocket close code, if any (1012: the server restarts). */
  code?: number;
  reason?: string;
}

export interface ErrorEvent {
  error: string;
  transport?: TransportName;
  status?: number;
  op?: string;
  topic?: string;
}

export interface Options {
  /** Transports to use, best first. Default all four. */
  transports?: TransportName[];
  /** Backoff base, ms (500). Delay = random(0, min(maxDelay, minDelay * 2^attempt)). */
  minDelay?: number;
  /** Backoff cap, ms (20000). */
  maxDelay?: number;
  /** After a server restart (close 1012, an event stream's end), reconnect within random(0, this) ms (5000). */
  restartJitter?: number;
  /** A transport that does not open within this many ms failed (10000). */
  openTimeout?: number;
  /** A transport that failed to open is skipped this long (ms), then probed (30000). */
  upgradeInterval?: number;
  /** WebSocket silence before a ping, ms (15000). */
  heartbeatInterval?: number;
  /** Time to wait for the pong, ms (10000). */
  heartbeatTimeout?: number;
  /** Event-stream silence that means a dead stream, ms (40000; the server's heartbeat is 15 s). */
  sseTimeout?: number;
  /** Long-poll request timeout, ms (40000; the server holds a request 30 s). */
  longpollTimeout?: number;
  /** Short-poll interval, ms (1000). */
  pollInterval?: number;
  /** A token: sent as `Authorization: Bearer` on HTTP, as `?token=` on the WebSocket. */
  token?: string | null | (() => string | null | Promise<string | null>);
  /** Connect on construction (true). */
  autoConnect?: boolean;
  /** Traffic accounting (null: off, nothing measured). Called for every HTTP request and
   * WebSocket opened (kind "request") and every WebSocket message or event-stream chunk
   * received (kind "data"). */
  onWire?: ((event: WireEvent) => void) | null;
}

/** What crossed the wire, for pages that show traffic (the demo's live page). */
export interface WireEvent {
  transport: TransportName;
  kind: "request" | "data";
  /** kind "request": the URL requested (the WebSocket's ws:// URL). */
  url?: string;
  /** kind "data": UTF-8 bytes of a WebSocket message's text, or bytes of an event-stream body
   * chunk (after HTTP chunked decoding). */
  bytes?: number;
}

export interface SubscribeOptions<T = unknown> {
  /** Resume after this seq (0: all the history kept). Default: from now. */
  since?: number;
  onMessage?: (message: Message<T>) => void;
  onGap?: (gap: Gap) => void;
}

export interface Subscription {
  readonly topic: string;
  /** The seq of the last message (or first_available - 1 after a gap); null until known. */
  readonly cursor: number | null;
  unsubscribe(): void;
}

export class Client {
  /**
   * @param base where the transports are mounted: "" for this page's server, a prefix ("/rt"),
   *     or an absolute URL.
   */
  constructor(base?: string, options?: Options);
  readonly state: State;
  readonly transport: TransportName | null;
  readonly options: Required<Options>;
  /** The server's name of the current (or last) connection, from its hello; null before. */
  readonly connectionId: string | null;
  /** Why the server last dropped this client (learned on the connection after); null if never. */
  readonly lastDrop: DropEvent | null;
  subscribe<T = unknown>(topic: string, options?: SubscribeOptions<T>): Subscription;
  /** Resolves once the server acknowledged it; retried across reconnections, published once. */
  publish(topic: string, data: unknown): Promise<Ack>;
  on(event: "state", listener: (event: StateEvent) => void): () => void;
  on(event: "message", listener: (message: Message) => void): () => void;
  on(event: "gap", listener: (gap: Gap) => void): () => void;
  on(event: "error", listener: (error: ErrorEvent) => void): () => void;
  /** The server dropped the previous connection (a slow consumer); fired after it reconnected. */
  on(event: "drop", listener: (drop: DropEvent) => void): () => void;
  /** Every topic's cursor. */
  cursors(): Record<string, number | null>;
  connect(): void;
  close(): void;
}

export const TRANSPORTS: TransportName[];
export const DEFAULTS: Required<Options>;
/** Full jitter: random(0, min(max, min * 2^attempt)). */
export function fullJitter(attempt: number, min: number, max: number): number;
export class SSEParser {
  constructor(dispatch: (event: { type: string; id: string; data: string }) => void);
  retry: number | null;
  feed(text: string): void;
}
export const version: string;

declare const fullduplex: {
  Client: typeof Client;
  TRANSPORTS: typeof TRANSPORTS;
  DEFAULTS: typeof DEFAULTS;
  fullJitter: typeof fullJitter;
  SSEParser: typeof SSEParser;
  version: string;
};
export default fullduplex;

declare global {
  interface Window {
    fullduplex: typeof fullduplex;
  }
}
