// The connection to a wsgw gateway: one WebSocket at a time, replaced when it is lost or
// redirected. Owns the sends waiting for their UPSTREAM_ACK (resent with the same key on every
// new connection until acknowledged), the keys of pushes already delivered (each key reaches the
// app once; every copy is acknowledged), heartbeats, and the reconnect schedule.

import { Command, encodeText, serializer, type Ack, type GatewayNode, type Message, type Serializer } from "./codec.js";
import { backoffDelay, closeAction, nodeUrl, type Backoff, type CloseAction } from "./policy.js";

/** The subset of the WebSocket API the client uses (browsers' WebSocket, Node's `ws`). */
export interface WebSocketLike {
  binaryType: string;
  readonly protocol: string;
  onopen: ((ev: unknown) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  send(data: string | Uint8Array): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string, protocols?: string[]) => WebSocketLike;

export interface ClientOptions {
  /** Gateway URL(s), e.g. `wss://gw.example.com/`; tried in order, then round again. */
  url: string | string[];
  /** The JWT, or a function that fetches a fresh one (called on every connect). */
  token: string | (() => string | Promise<string>);
  /**
   * Where the token travels: `protocol` (default: the `bearer.<jwt>` subprotocol, kept out of
   * URLs and proxy logs) or `query` (`?token=`, what the original gateway's clients do).
   */
  tokenIn?: "protocol" | "query";
  /** The node's `protocol.serializer` (default `json`). */
  serializer?: "json" | "proto";
  /** A heartbeat after this many ms without a frame (default 25 000; 0 = none). */
  heartbeatInterval?: number;
  /** Reconnect when nothing arrives for this long after a heartbeat (default 10 000 ms). */
  heartbeatTimeout?: number;
  /** A `send()` gives up after this long without an ack, across reconnects (default 30 000 ms). */
  ackTimeout?: number;
  /** Sends waiting for their ack at most (default 1 000); more are refused at once. */
  maxPending?: number;
  /** Delays between attempts after a lost connection. */
  backoff?: Backoff;
  /** After a REDIRECT, wait a random 0..this many ms before going (default 1 000). */
  redirectJitter?: number;
  /** Push keys remembered to deliver each push once (default 10 000). */
  rememberKeys?: number;
  /** The WebSocket implementation (default `globalThis.WebSocket`; in Node < 22 pass `ws`). */
  WebSocket?: WebSocketConstructor;
  /** Randomness for jitter and keys (tests). */
  random?: () => number;
}

/** A push from the backend, delivered once per key. */
export interface Push {
  key: string;
  body: Uint8Array;
  /** The body as UTF-8 text. */
  text(): string;
}

export type State = "idle" | "connecting" | "open" | "waiting" | "stopped";

/** Why a `send()` or the client failed. `code` is the gateway's `ErrorInfo` code or one of ours. */
export class WsgwError extends Error {
  override name = "WsgwError";
  constructor(
    /** `CODE_*` from the gateway, or `RATE_LIMITED`, `TIMEOUT`, `QUEUE_FULL`, `STOPPED`. */
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export interface Events {
  state: State;
  push: Push;
  redirect: GatewayNode[];
  close: { code: number; reason: string; action: CloseAction };
  error: Error;
}

interface Pending {
  message: Message;
  resolve: (ack: Ack) => void;
  reject: (e: WsgwError) => void;
  timer: ReturnType<typeof setTimeout>;
  promise: Promise<Ack>;
}

/** A bounded set that forgets its oldest entries. */
class RecentKeys {
  private keys = new Set<string>();
  constructor(private readonly limit: number) {}
  /** True when `key` was not seen before (and remembers it). */
  add(key: string): boolean {
    if (this.keys.has(key)) return false;
    this.keys.add(key);
    if (this.keys.size > this.limit) {
      const oldest = this.keys.values().next().value;
      if (oldest !== undefined) this.keys.delete(oldest);
    }
    return true;
  }
}

const SUBPROTOCOL = "wsgw.v1";
const decoder = new TextDecoder();

export class WsgwClient {
  private readonly urls: string[];
  private readonly codec: Serializer;
  private readonly WS: WebSocketConstructor;
  private readonly random: () => number;
  private readonly seen: RecentKeys;
  private readonly pending = new Map<string, Pending>();
  private readonly listeners = new Map<keyof Events, Set<(value: never) => void>>();
  private ws: WebSocketLike | null = null;
  private current = 0;
  private redirectTo: string[] = [];
  private attempt = 0;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private heartbeatTimer: ReturnType<typeof setTimeout> | null = null;
  private lastFrame = 0;
  private beats = 0;
  private _state: State = "idle";
  private _url = "";

  constructor(private readonly options: ClientOptions) {
    this.urls = Array.isArray(options.url) ? [...options.url] : [options.url];
    if (this.urls.length === 0) throw new Error("no gateway URL");
    this.codec = serializer(options.serializer ?? "json");
    const WS = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!WS) throw new Error("no WebSocket implementation: pass options.WebSocket (e.g. the ws package)");
    this.WS = WS;
    this.random = options.random ?? Math.random;
    this.seen = new RecentKeys(options.rememberKeys ?? 10_000);
  }

  /** The connection's state. */
  get state(): State {
    return this._state;
  }

  /** The URL of the current (or last) connection. */
  get url(): string {
    return this._url;
  }

  /** Listens to an event; returns a function that stops listening. */
  on<E extends keyof Events>(event: E, listener: (value: Events[E]) => void): () => void {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    const added = listener as (value: never) => void;
    set.add(added);
    return () => void set.delete(added);
  }

  /** Starts connecting (and reconnecting); resolves when a connection is open. */
  connect(): Promise<void> {
    if (this._state === "open") return Promise.resolve();
    const opened = new Promise<void>((resolve, reject) => {
      const off = this.on("state", (s) => {
        if (s === "open" || s === "stopped") {
          off();
          if (s === "open") resolve();
          else reject(new WsgwError("STOPPED", "the client stopped before it connected"));
        }
      });
    });
    if (this._state === "idle" || this._state === "stopped") void this.open();
    return opened;
  }

  /**
   * Sends `body` upstream under `key` (a random one by default) and resolves with the backend's
   * answer once the gateway acknowledges it. Survives reconnects: the message is sent again,
   * with the same key, on every new connection until it is acknowledged, and the gateway's
   * dedup makes sure the backend sees it once. Rejects with a `WsgwError`: the gateway's
   * `CODE_*`, `RATE_LIMITED`, `TIMEOUT` (`ackTimeout`), `QUEUE_FULL` (`maxPending`) or `STOPPED`.
   */
  send(body: string | Uint8Array, key: string = this.newKey()): Promise<Ack> {
    const existing = this.pending.get(key);
    if (existing) return existing.promise;
    if (this._state === "stopped") return Promise.reject(new WsgwError("STOPPED", "the client is stopped"));
    if (this.pending.size >= (this.options.maxPending ?? 1_000)) {
      return Promise.reject(new WsgwError("QUEUE_FULL", "too many messages waiting for their ack"));
    }
    const bytes = typeof body === "string" ? encodeText(body) : body;
    const message: Message = { cmd: Command.UpstreamMessage, key, body: bytes };
    let entry!: Pending;
    const promise = new Promise<Ack>((resolve, reject) => {
      const timer = setTimeout(
        () => this.settle(key, new WsgwError("TIMEOUT", `no ack for ${key}`)),
        this.options.ackTimeout ?? 30_000,
      );
      entry = { message, resolve, reject, timer, promise: null as unknown as Promise<Ack> };
    });
    entry.promise = promise;
    this.pending.set(key, entry);
    if (this._state === "open") this.write(message);
    return promise;
  }

  /** Drops the current connection and connects again at once (e.g. the network changed). */
  reconnect(): void {
    if (this._state === "stopped" || this._state === "idle") return;
    this.drop()?.close(1000, "reconnect");
    this.attempt = 0;
    void this.open();
  }

  /** Closes the connection for good; sends still waiting are rejected with `STOPPED`. */
  close(): void {
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    const ws = this.drop();
    ws?.close(1000, "client closed");
    for (const key of [...this.pending.keys()]) {
      this.settle(key, new WsgwError("STOPPED", "the client was closed"));
    }
    this.setState("stopped");
  }

  private emit<E extends keyof Events>(event: E, value: Events[E]): void {
    for (const listener of this.listeners.get(event) ?? []) {
      try {
        (listener as (v: Events[E]) => void)(value);
      } catch (e) {
        if (event !== "error") this.emit("error", e as Error);
      }
    }
  }

  private setState(state: State): void {
    if (this._state === state) return;
    this._state = state;
    this.emit("state", state);
  }

  private newKey(): string {
    const bytes = new Uint8Array(8);
    for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(this.random() * 256);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  /** The next URL: a REDIRECT's targets first, then the configured ones in turn. */
  private nextUrl(): string {
    const redirected = this.redirectTo.shift();
    if (redirected) return redirected;
    const url = this.urls[this.current % this.urls.length]!;
    this.current++;
    return url;
  }

  private async open(): Promise<void> {
    this.setState("connecting");
    let token: string;
    try {
      const t = this.options.token;
      token = typeof t === "function" ? await t() : t;
    } catch (e) {
      this.emit("error", e as Error);
      return this.schedule(this.backoff());
    }
    if (this._state !== "connecting") return;
    const url = new URL(this.nextUrl());
    const protocols = [SUBPROTOCOL];
    url.searchParams.delete("token");
    if (this.options.tokenIn === "query") url.searchParams.set("token", token);
    else protocols.push(`bearer.${token}`);
    this._url = url.toString();
    const ws = new this.WS(this._url, protocols);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.onopen = () => this.opened();
    ws.onmessage = (ev) => this.received(ev.data);
    ws.onerror = () => {}; // a close always follows, and carries what is known
    ws.onclose = (ev) => this.closed(ev.code, ev.reason);
  }

  private opened(): void {
    this.attempt = 0;
    this.setState("open");
    this.lastFrame = Date.now();
    for (const p of this.pending.values()) this.write(p.message);
    this.armHeartbeat();
  }

  private write(message: Message): void {
    try {
      this.ws?.send(this.codec.encode(message));
    } catch (e) {
      this.emit("error", e as Error); // the close that follows reconnects
    }
  }

  private received(data: unknown): void {
    this.lastFrame = Date.now();
    let message: Message;
    try {
      const frame =
        typeof data === "string" ? data : data instanceof ArrayBuffer ? new Uint8Array(data) : (data as Uint8Array);
      message = this.codec.decode(frame);
    } catch (e) {
      return this.emit("error", e as Error);
    }
    switch (message.cmd) {
      case Command.UpstreamAck:
        return this.acked(message);
      case Command.RateLimitExceeded:
        return this.settle(message.key, new WsgwError("RATE_LIMITED", `rate limit exceeded for ${message.key}`));
      case Command.Error: {
        const info = this.codec.error(message.body);
        const error = new WsgwError(info.code, info.reason || info.code);
        return this.pending.has(message.key) ? this.settle(message.key, error) : this.emit("error", error);
      }
      case Command.DownstreamMessage:
        return this.pushed(message);
      case Command.Redirect:
        return this.redirected(message.body);
      default:
        return; // heartbeat echoes, and commands this version does not know
    }
  }

  private acked(message: Message): void {
    const p = this.pending.get(message.key);
    if (!p) return; // a repeat of an ack already taken
    try {
      const ack = this.codec.ack(message.key, message.body);
      this.pending.delete(message.key);
      clearTimeout(p.timer);
      p.resolve(ack);
    } catch (e) {
      this.settle(message.key, new WsgwError("BAD_ACK", (e as Error).message));
    }
  }

  private settle(key: string, error: WsgwError): void {
    const p = this.pending.get(key);
    if (!p) return;
    this.pending.delete(key);
    clearTimeout(p.timer);
    p.reject(error);
  }

  private pushed(message: Message): void {
    // Every copy is acknowledged (the gateway retransmits until it hears one); the app sees
    // each key once.
    this.write({ cmd: Command.DownstreamAck, key: message.key, body: new Uint8Array() });
    if (message.key && !this.seen.add(message.key)) return;
    const body = message.body;
    this.emit("push", { key: message.key, body, text: () => decoder.decode(body) });
  }

  private redirected(body: Uint8Array): void {
    let nodes: GatewayNode[];
    try {
      nodes = this.codec.nodes(body);
    } catch (e) {
      return this.emit("error", e as Error);
    }
    this.emit("redirect", nodes);
    this.redirectTo = nodes.map((n) => nodeUrl(this._url, n));
    // The node closes with 1001 right after; leave now, spread over `redirectJitter`.
    const ws = this.drop();
    ws?.close(1000, "redirected");
    this.emit("close", { code: 1001, reason: "redirected", action: "reconnect" });
    this.schedule(Math.round(this.random() * (this.options.redirectJitter ?? 1_000)));
  }

  private closed(code: number, reason: string): void {
    this.drop();
    const action = closeAction(code, reason);
    this.emit("close", { code, reason, action });
    if (action === "stop" || (action === "refresh-token" && typeof this.options.token !== "function")) {
      for (const key of [...this.pending.keys()]) {
        this.settle(key, new WsgwError("STOPPED", `closed by the gateway: ${code} ${reason}`));
      }
      return this.setState("stopped");
    }
    this.schedule(action === "refresh-token" ? 0 : this.backoff());
  }

  private backoff(): number {
    return backoffDelay(this.attempt++, this.options.backoff, this.random);
  }

  private schedule(delay: number): void {
    this.setState("waiting");
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      void this.open();
    }, delay);
  }

  /** Detaches the current socket (its events are ignored from now on) and returns it. */
  private drop(): WebSocketLike | null {
    if (this.heartbeatTimer) clearTimeout(this.heartbeatTimer);
    this.heartbeatTimer = null;
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onerror = null;
      ws.onclose = null;
    }
    return ws;
  }

  /** A heartbeat after `heartbeatInterval` of silence; reconnects if it goes unanswered. */
  private armHeartbeat(): void {
    const interval = this.options.heartbeatInterval ?? 25_000;
    if (interval <= 0) return;
    const timeout = this.options.heartbeatTimeout ?? 10_000;
    const tick = (): void => {
      const silent = Date.now() - this.lastFrame;
      if (silent >= interval + timeout) {
        const ws = this.drop();
        ws?.close(4000, "heartbeat timeout");
        this.emit("close", { code: 4000, reason: "heartbeat timeout", action: "reconnect" });
        return this.schedule(this.backoff());
      }
      if (silent >= interval) {
        this.write({ cmd: Command.Heartbeat, key: `hb-${++this.beats}`, body: new Uint8Array() });
      }
      this.heartbeatTimer = setTimeout(tick, Math.min(interval, timeout));
    };
    this.heartbeatTimer = setTimeout(tick, Math.min(interval, timeout));
  }
}
