// The client: one connection at a time to the broker's WebSocket gateway (JSON mode,
// `rtc.v1.json`), kept up across failures.
//
// A connection goes: open the socket, `hello` (with the token), `welcome` (the broker's
// heartbeat interval and limits), then restore — every confirmed subscription again
// (see subscription.ts) and every unacknowledged publish of the outbox, in order — and
// the state is `connected`. While connected it pings every heartbeat interval and
// calls the link dead when nothing arrived for three. When the socket closes, requests
// waiting for an answer fail with ClosedError (publishes excepted: they stay in the
// outbox), the state is `reconnecting`, and the next attempt waits per the backoff.
// `close()` ends it for good.
//
// When a WebSocket cannot be opened at all (no Welcome on an attempt), the next attempt
// falls back to Server-Sent Events with HTTP publish, and the one after that to
// long-polling, then to WebSocket again (see http.ts); a transport that worked is kept
// until it fails. The app's code does not change; `transport` says which is in use.

import { delayFor, type ReconnectPolicy } from "./backoff.js";
import { jsonCodec, type Codec, type Frame } from "./codec.js";
import { ClosedError, RtcError } from "./errors.js";
import { HttpTransport, type FetchLike, type Stream } from "./http.js";
import { Message, type WireMessage } from "./message.js";
import { Outbox, type KeyValueStorage, type Pending } from "./outbox.js";
import { base64Decode, fromUtf8, toWire, type Payload } from "./payload.js";
import { startToWire, Subscription, type StartAt, type WireSubscribe } from "./subscription.js";

/** What the app can watch. */
export type ConnectionState = "connecting" | "connected" | "reconnecting" | "closed";

/** The WebSocket the host provides (browsers, React Native, Node 20 with --experimental-websocket or the `ws` package). */
export interface WebSocketLike {
  readonly readyState: number;
  /** The subprotocol the server chose (browsers, Node, `ws`). */
  readonly protocol?: string;
  /** Set to "arraybuffer" for the binary mode. */
  binaryType?: string;
  send(data: string | Uint8Array): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onclose: ((ev: unknown) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
}
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export interface ConnectOptions {
  /** A token or JWT for a broker with users. */
  token?: string;
  /** Called for a fresh token before each reconnect, before a JWT's `exp` (the
   *  connection is given the new one with AuthRefresh), and by refreshToken(). */
  tokenProvider?: () => string | Promise<string>;
  /** The client's name in the handshake. */
  name?: string;
  /** Reconnect policy; `false` to stay closed when the link drops. */
  reconnect?: ReconnectPolicy | false;
  /** The WebSocket class (default: globalThis.WebSocket). */
  WebSocket?: WebSocketConstructor;
  /** Most unacknowledged publishes kept (default 10 000). */
  outboxMax?: number;
  /** Where the outbox is kept across restarts (localStorage, AsyncStorage, ...). */
  storage?: KeyValueStorage;
  /** Names this client's outbox in the storage (default "default"). */
  outboxName?: string;
  /** How long the first connection may take (default 10 s). */
  connectTimeoutMs?: number;
  /** Fall back to SSE, then long-polling, when a WebSocket cannot be opened (default true). */
  fallback?: boolean;
  /** The fetch for the fallbacks (default: globalThis.fetch). */
  fetch?: FetchLike;
  /** How frames travel on the WebSocket: `jsonCodec` (rtc.v1.json, the default), or
   *  `protoCodec` from "rtc-client/proto" for the binary rtc.v1.proto. */
  codec?: Codec;
  /** More brokers of the same cluster (URLs as for `connect`): after a lost connection
   *  the client tries the next one in turn, so that it resumes on another node when its
   *  own is gone (subscriptions and the outbox as after any reconnect). */
  servers?: string[];
}

/** The transport in use. */
export type Transport = "websocket" | "sse" | "poll";

export interface PublishOptions {
  headers?: Record<string, string>;
  /** The message ID the broker deduplicates by (default: a fresh random one). */
  msgId?: string;
}

export interface PubAck {
  seq: number;
  duplicate: boolean;
}

export interface ConsumerOptions {
  name: string;
  /** Each message must be acked (default true). */
  explicitAck?: boolean;
  ackWaitMs?: number;
  maxInFlight?: number;
  maxDeliver?: number;
}

export interface SubscribeOptions {
  start?: StartAt;
  consumer?: ConsumerOptions;
  group?: string;
  /** Join the room's presence with this JSON info; `events` for join/leave events. */
  presence?: { info?: unknown; events?: boolean };
}

export interface Response {
  payload: Message;
  headers: Record<string, string>;
}

export interface PresenceMember {
  user: string;
  info: string;
  connections: number;
  state: Record<string, string>;
}

export interface PresenceInfo {
  topic: string;
  members: number;
  connections: number;
  list: PresenceMember[];
  next: string;
}

export interface PresenceEvent {
  topic: string;
  kind: "join" | "leave" | "update" | "count";
  member: PresenceMember | undefined;
  members: number;
}

interface Waiting {
  resolve: (op: [string, Record<string, unknown>]) => void;
  reject: (e: Error) => void;
}

const OPEN = 1;
/** How long an attempt may take from the socket's creation to the Welcome. */
const HANDSHAKE_MS = 10_000;
const EVENT_KINDS = ["update", "join", "leave", "update", "count"] as const;

/** A random message ID (crypto.randomUUID where there is one). */
function newMsgId(): string {
  const c = (globalThis as { crypto?: { randomUUID?: () => string } }).crypto;
  if (c?.randomUUID) return c.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}-${Math.random().toString(36).slice(2)}`;
}

export class Client {
  /** The URL in use: one of `#urls`, the next after each lost connection. */
  #url: string;
  readonly #urls: string[];
  #at = 0;
  readonly #opts: ConnectOptions;
  readonly #WS: WebSocketConstructor;
  readonly #codec: Codec;
  readonly #outbox: Outbox;
  /** Publishes waiting for their PubAck, by msg_id. */
  readonly #acks = new Map<string, { resolve: (a: PubAck) => void; reject: (e: Error) => void }>();
  /** The msg_id of each publish sent on the current connection, by req_id. */
  readonly #inFlight = new Map<number, string>();
  readonly #waiting = new Map<number, Waiting>();
  readonly #subs = new Map<number, Subscription>();
  readonly #stateListeners = new Set<(s: ConnectionState) => void>();
  readonly #presenceListeners = new Set<(e: PresenceEvent) => void>();
  #state: ConnectionState = "connecting";
  #ws: WebSocketLike | undefined;
  #ready = false;
  #nextId = 1;
  #token: string;
  #heartbeatMs = 15_000;
  #heard = Date.now();
  #timer: unknown;
  #attempt = 0;
  #welcome: Record<string, unknown> = {};
  #mode: Transport = "websocket";
  /** Bumped by every attempt and every loss: a callback of an earlier attempt (a socket's
   *  late error, a stream's failure) sees another generation and does nothing. */
  #gen = 0;
  /** This attempt reached a working connection (a Welcome, or the fallback's first answers). */
  #reached = false;
  /** On a fallback: its HTTP side, and each subscription's stream. */
  #http: HttpTransport | undefined;
  readonly #streams = new Map<number, Stream>();
  /** Publishes waiting for their HTTP batch, and whether one is being sent. */
  #httpQueue: Pending[] = [];
  #httpSending = false;
  /** Fetches a fresh token before the current one expires (with a tokenProvider). */
  #refreshTimer: unknown;

  private constructor(url: string, opts: ConnectOptions) {
    this.#url = url;
    this.#urls = [url, ...(opts.servers ?? []).map(wsUrl)];
    this.#opts = opts;
    this.#token = opts.token ?? "";
    const WS = opts.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!WS) throw new Error("no WebSocket here: pass ConnectOptions.WebSocket (in Node 20, run with --experimental-websocket or use the ws package)");
    this.#WS = WS;
    this.#codec = opts.codec ?? jsonCodec;
    this.#outbox = new Outbox(opts.outboxMax ?? 10_000, opts.storage, opts.outboxName ?? "default");
  }

  /** Connects to `url` (`ws://host:7401/v1/ws`, or `http://host:7401`); resolves once the
   *  first connection is up (its outbox from a previous run resent). */
  static async connect(url: string, opts: ConnectOptions = {}): Promise<Client> {
    const c = new Client(wsUrl(url), opts);
    await c.#outbox.load();
    await new Promise<void>((resolve, reject) => {
      const limit = setTimeout(() => {
        c.#finish("no connection within the connect timeout");
        reject(new ClosedError(`cannot connect to ${c.#url}`));
      }, opts.connectTimeoutMs ?? 10_000);
      const off = c.onState((s) => {
        if (s === "connected") {
          clearTimeout(limit);
          off();
          resolve();
        } else if (s === "closed") {
          clearTimeout(limit);
          off();
          reject(new ClosedError(`cannot connect to ${c.#url}`));
        }
      });
      void c.#open();
    });
    return c;
  }

  get state(): ConnectionState {
    return this.#state;
  }

  /** `websocket`, or a fallback: `sse` or `poll`. */
  get transport(): Transport {
    return this.#mode;
  }

  /** The WebSocket subprotocol in use (`rtc.v1.json` or `rtc.v1.proto`); "" on a fallback. */
  get protocol(): string {
    return this.#ws && this.#ready ? this.#ws.protocol || this.#codec.subprotocol : "";
  }

  /** The broker's Welcome (server_version, connection_id, max_payload, ...). */
  get welcome(): Record<string, unknown> {
    return this.#welcome;
  }

  /** Unacknowledged publishes held. */
  get pending(): number {
    return this.#outbox.size;
  }

  /** Calls `f` on every state change; returns the function that stops it. */
  onState(f: (s: ConnectionState) => void): () => void {
    this.#stateListeners.add(f);
    return () => this.#stateListeners.delete(f);
  }

  /** Presence events of the rooms joined with `events`. */
  onPresence(f: (e: PresenceEvent) => void): () => void {
    this.#presenceListeners.add(f);
    return () => this.#presenceListeners.delete(f);
  }

  // ---- publishing ----

  /** Publishes and resolves once the broker stored it (durable) or routed it. The
   *  publish is kept in the outbox and resent after a reconnect until then. */
  publish(topic: string, payload: Payload, opts: PublishOptions = {}): Promise<PubAck> {
    const p: Pending = { msgId: opts.msgId ?? newMsgId(), topic, payload: toWire(payload), headers: opts.headers ?? {} };
    this.#outbox.add(p);
    const done = new Promise<PubAck>((resolve, reject) => this.#acks.set(p.msgId, { resolve, reject }));
    if (this.#ready) this.#sendPublish(p);
    else if (this.#http && this.#reached) this.#httpEnqueue([p]);
    return done;
  }

  /** Publishes without an answer (nothing is kept or resent). */
  publishNoAck(topic: string, payload: Payload, opts: PublishOptions = {}): void {
    if (this.#http) {
      // Over HTTP every publish is answered; this one's answer is not waited for.
      void this.#http.publish([{ msgId: opts.msgId ?? "", topic, payload: toWire(payload), headers: opts.headers ?? {} }]).catch(() => {});
      return;
    }
    this.#send({ publish: { topic, payload: toWire(payload), headers: opts.headers ?? {}, msg_id: opts.msgId ?? "" } });
  }

  /** Publishes each, in order; resolves with every answer. */
  publishBatch(messages: { topic: string; payload: Payload; opts?: PublishOptions }[]): Promise<PubAck[]> {
    return Promise.all(messages.map((m) => this.publish(m.topic, m.payload, m.opts)));
  }

  /** Resolves once the outbox is written to its storage. */
  outboxFlushed(): Promise<void> {
    return this.#outbox.flushed();
  }

  // ---- subscribing ----

  async subscribe(pattern: string, opts: SubscribeOptions = {}): Promise<Subscription> {
    const subId = this.#nextId++;
    const request: WireSubscribe = { sub_id: subId, pattern };
    if (opts.start) {
      request.start = startToWire(opts.start);
      if (typeof opts.start === "object" && "seq" in opts.start && opts.start.epoch) {
        request.epochs = { [pattern]: opts.start.epoch };
      }
    }
    const c = opts.consumer;
    if (c) {
      request.consumer = c.name;
      request.ack_mode = c.explicitAck === false ? 1 : 2;
      if (c.ackWaitMs) request.ack_wait_ms = c.ackWaitMs;
      if (c.maxInFlight) request.max_in_flight = c.maxInFlight;
      if (c.maxDeliver) request.max_deliver = c.maxDeliver;
    }
    if (opts.group) request.group = opts.group;
    if (opts.presence) {
      const info = opts.presence.info === undefined ? "" : JSON.stringify(opts.presence.info);
      request.presence = { info, events: !!opts.presence.events };
    }
    const sub = new Subscription(request, (s) => this.#unsubscribe(s));
    if (this.#http) {
      if (request.consumer || request.group || request.presence) {
        throw this.#unsupported("durable consumers, queue groups and presence");
      }
      const http = this.#http;
      const gen = this.#gen;
      this.#subs.set(subId, sub);
      sub.confirmed();
      await new Promise<void>((resolve, reject) => {
        this.#streams.set(subId, http.follow(sub, this.#mode === "poll", resolve, (why) => {
          reject(new ClosedError(why));
          if (gen === this.#gen) this.#lost(why);
        }));
      });
      return sub;
    }
    this.#subs.set(subId, sub);
    try {
      await this.#request("subscribe", { ...request });
    } catch (e) {
      this.#subs.delete(subId);
      throw e;
    }
    sub.confirmed();
    return sub;
  }

  async #unsubscribe(s: Subscription): Promise<void> {
    if (!this.#subs.delete(s.id)) return;
    s.end(null);
    this.#streams.get(s.id)?.close();
    this.#streams.delete(s.id);
    if (this.#ready) {
      await this.#request("unsubscribe", { sub_id: s.id }).catch(() => {});
    }
  }

  // ---- request-reply ----

  /** Asks whoever subscribes to `topic`; resolves with the first reply. */
  async request(topic: string, payload: Payload, opts: { timeoutMs?: number; headers?: Record<string, string> } = {}): Promise<Response> {
    const [, r] = await this.#request("request", {
      topic,
      payload: toWire(payload),
      headers: opts.headers ?? {},
      timeout_ms: opts.timeoutMs ?? 0,
    });
    const headers = (r.headers as Record<string, string>) ?? {};
    return { payload: new Message({ payload: r.payload, headers }), headers };
  }

  /** Answers a request delivered to one of this client's subscriptions. */
  reply(request: Message, payload: Payload, headers: Record<string, string> = {}): void {
    if (!request.replyTo) throw new Error("this message is not a request (it has no replyTo)");
    this.#send({ reply: { reply_to: request.replyTo, payload: toWire(payload), headers } });
  }

  // ---- presence ----

  async presence(topic: string, page: { after?: string; limit?: number; countOnly?: boolean } = {}): Promise<PresenceInfo> {
    const r = this.#http
      ? await this.#http.presence(topic, page.after ?? "", page.limit ?? 0, !!page.countOnly)
      : (
          await this.#request("presence_request", {
            topic,
            after: page.after ?? "",
            limit: page.limit ?? 0,
            count_only: !!page.countOnly,
          })
        )[1];
    return {
      topic: (r.topic as string) ?? topic,
      members: (r.members as number) ?? 0,
      connections: (r.connections as number) ?? 0,
      list: ((r.list as Record<string, unknown>[]) ?? []).map(member),
      next: (r.next as string) ?? "",
    };
  }

  /** Sets (or with "" clears) a piece of this member's state in a room it joined. */
  async presenceUpdate(topic: string, key: string, value: string, ttlMs = 0): Promise<void> {
    await this.#request("presence_update", { topic, key, value, ttl_ms: ttlMs });
  }

  /** A typing indicator for `topic`: call `typing()` on every keystroke; it tells the
   *  room at most once per `everyMs` (state `typing` with a TTL of `ttlMs`), and
   *  `stop()` clears it. */
  typing(topic: string, opts: { everyMs?: number; ttlMs?: number } = {}): { typing(): void; stop(): void } {
    const every = opts.everyMs ?? 2000;
    const ttl = opts.ttlMs ?? 5000;
    let last = 0;
    return {
      typing: () => {
        const now = Date.now();
        if (now - last < every) return;
        last = now;
        this.presenceUpdate(topic, "typing", "1", ttl).catch(() => {});
      },
      stop: () => {
        last = 0;
        this.presenceUpdate(topic, "typing", "", 0).catch(() => {});
      },
    };
  }

  // ---- topics, tokens ----

  async topicInfo(name: string): Promise<Record<string, unknown>> {
    const [, r] = await this.#request("topic_info_request", { name });
    return r;
  }

  /** Gives the connection a fresh token (from `tokenProvider` when none is passed). On a
   *  fallback the token goes with each HTTP request, so it is only kept. */
  async refreshToken(token?: string): Promise<void> {
    const t = token ?? (await this.#opts.tokenProvider?.());
    if (!t) throw new Error("no token to refresh with");
    this.#token = t;
    if (this.#http) {
      this.#scheduleRefresh(jwtExpiry(t));
      return;
    }
    const [, r] = await this.#request("auth_refresh", { auth_token: t });
    this.#scheduleRefresh((r.expires_at_ms as number) || jwtExpiry(t));
  }

  /** With a tokenProvider, refreshes before `expiresAtMs`: a fifth of the token's
   *  remaining life early, at most 30 s; a failed refresh is tried again every 5 s
   *  while the token lasts (then the broker closes and the reconnect gets a new one). */
  #scheduleRefresh(expiresAtMs: number): void {
    clearTimeout(this.#refreshTimer);
    if (!this.#opts.tokenProvider || !expiresAtMs || this.#state === "closed") return;
    const left = expiresAtMs - Date.now();
    const lead = Math.min(30_000, left / 5);
    const gen = this.#gen;
    this.#refreshTimer = setTimeout(() => {
      if (gen !== this.#gen) return;
      this.refreshToken().catch((e) => {
        console.warn(`rtc-client: token refresh failed: ${String(e)}`);
        if (gen === this.#gen && Date.now() + 5000 < expiresAtMs) {
          this.#refreshTimer = setTimeout(() => this.#scheduleRefresh(expiresAtMs), 5000);
        }
      });
    }, Math.max(0, left - lead));
  }

  /** Closes for good: pending requests fail; publishes not acknowledged stay in the
   *  outbox's storage for a later client to resend. */
  async close(): Promise<void> {
    this.#finish("closed by the application");
    await this.#outbox.flushed();
  }

  // ---- the connection ----

  async #open(): Promise<void> {
    if (this.#state === "closed") return;
    if (this.#attempt > 0 && this.#opts.tokenProvider) {
      try {
        this.#token = await this.#opts.tokenProvider();
      } catch (e) {
        console.warn(`rtc-client: tokenProvider failed: ${String(e)}`);
      }
    }
    this.#reached = false;
    const gen = ++this.#gen;
    if (this.#mode !== "websocket") {
      await this.#openHttp(gen);
      return;
    }
    let ws: WebSocketLike;
    try {
      ws = new this.#WS(this.#url, this.#codec.subprotocol);
    } catch (e) {
      this.#lost(`cannot open ${this.#url}: ${String(e)}`);
      return;
    }
    this.#ws = ws;
    if (this.#codec.binary) ws.binaryType = "arraybuffer";
    ws.onopen = () => {
      // A server that chose another subprotocol would read these frames as something
      // else: this attempt ends (a host that does not report it, reports "").
      if (ws.protocol && ws.protocol !== this.#codec.subprotocol) {
        drop(`the server chose the subprotocol ${ws.protocol}, not ${this.#codec.subprotocol}`);
        return;
      }
      ws.send(this.#codec.encode({ hello: { protocol_version: 1, client_name: this.#opts.name ?? "rtc-client-js", auth_token: this.#token } }));
    };
    ws.onmessage = (ev) => {
      if (gen !== this.#gen) return;
      this.#heard = Date.now();
      const frame = this.#codec.decode(ev.data);
      if (!frame) return;
      for (const [op, body] of Object.entries(frame)) this.#handle(op, body ?? {});
    };
    // Some hosts (Node's WebSocket when the handshake fails) report an error and no
    // close: either ends this attempt, once.
    ws.onclose = () => {
      if (gen === this.#gen) this.#lost("the connection closed");
    };
    // The loss is recorded before the socket is closed: closing a socket that is still
    // connecting fires its error handler again, at once.
    const drop = (why: string) => {
      this.#lost(why);
      try {
        ws.close();
      } catch {
        // Not open yet: nothing to close.
      }
    };
    ws.onerror = () => {
      if (gen === this.#gen) drop("the connection failed");
    };
    // An attempt that has not been welcomed within the limit is given up.
    this.#timer = setTimeout(() => {
      if (gen === this.#gen && !this.#ready) drop("no Welcome within the handshake limit");
    }, HANDSHAKE_MS);
  }

  #handle(op: string, body: Record<string, unknown>): void {
    const reqId = (body.req_id as number) ?? 0;
    switch (op) {
      case "welcome":
        this.#welcomed(body);
        return;
      case "deliver": {
        const sub = this.#subs.get(body.sub_id as number);
        const m = body.message as WireMessage | undefined;
        if (sub && m) sub.deliver(new Message(m, sub.isConsumer ? this.#settler(sub) : undefined));
        return;
      }
      case "pub_ack": {
        const msgId = this.#inFlight.get(reqId);
        if (msgId === undefined) return;
        this.#inFlight.delete(reqId);
        this.#outbox.remove(msgId);
        const w = this.#acks.get(msgId);
        this.#acks.delete(msgId);
        w?.resolve({ seq: (body.seq as number) ?? 0, duplicate: !!body.duplicate });
        return;
      }
      case "error":
        this.#error(body);
        return;
      case "ping":
        this.#send({ pong: { nonce: body.nonce ?? 0 } });
        return;
      case "presence_event": {
        const e: PresenceEvent = {
          topic: (body.topic as string) ?? "",
          kind: EVENT_KINDS[(body.kind as number) ?? 0] ?? "update",
          member: body.member ? member(body.member as Record<string, unknown>) : undefined,
          members: (body.members as number) ?? 0,
        };
        for (const f of this.#presenceListeners) f(e);
        return;
      }
      case "pong":
      case "replay_end":
        return;
      default: {
        const w = this.#waiting.get(reqId);
        if (reqId !== 0 && w) {
          this.#waiting.delete(reqId);
          w.resolve([op, body]);
        }
      }
    }
  }

  #welcomed(w: Record<string, unknown>): void {
    this.#welcome = w;
    this.#heartbeatMs = (w.heartbeat_interval_ms as number) || 15_000;
    this.#ready = true;
    this.#reached = true;
    this.#attempt = 0;
    // Restore: subscriptions first, so that the resent publishes' messages reach them.
    for (const sub of this.#subs.values()) {
      if (sub.active) this.#send({ subscribe: { ...sub.restore() } });
    }
    for (const p of this.#outbox.all()) this.#sendPublish(p);
    this.#tick();
    this.#scheduleRefresh(jwtExpiry(this.#token));
    this.#setState("connected");
  }

  #error(e: Record<string, unknown>): void {
    const code = (e.code as string) ?? "UNSPECIFIED";
    const err = new RtcError(code, (e.message as string) ?? "", (e.topic as string) ?? "");
    const reqId = (e.req_id as number) ?? 0;
    const msgId = this.#inFlight.get(reqId);
    if (reqId !== 0 && msgId !== undefined) {
      // A refused publish leaves the outbox: sending it again would be refused again.
      this.#inFlight.delete(reqId);
      this.#outbox.remove(msgId);
      this.#acks.get(msgId)?.reject(err);
      this.#acks.delete(msgId);
      return;
    }
    const w = this.#waiting.get(reqId);
    if (reqId !== 0 && w) {
      this.#waiting.delete(reqId);
      w.reject(err);
      return;
    }
    if (code === "TOPIC_DELETED") {
      const sub = this.#subs.get((e.sub_id as number) ?? 0);
      if (sub) {
        sub.topicDeleted(err.topic, err);
        if (sub.ended) this.#subs.delete(sub.id);
      }
      return;
    }
    console.warn(`rtc-client: ${err.message}`);
  }

  #settler(sub: Subscription) {
    const settle = (op: string, seq: number, extra: Record<string, unknown> = {}) =>
      this.#request(op, { sub_id: sub.id, seqs: [seq], ...extra }).then(() => {});
    return {
      ack: (seq: number) => settle("ack", seq),
      nack: (seq: number, delayMs: number) => settle("nack", seq, { delay_ms: delayMs }),
      inProgress: (seq: number) => settle("in_progress", seq),
    };
  }

  #sendPublish(p: Pending): void {
    const reqId = this.#nextId++;
    this.#inFlight.set(reqId, p.msgId);
    this.#send({ publish: { req_id: reqId, topic: p.topic, payload: p.payload, headers: p.headers, msg_id: p.msgId } });
  }

  /** Sends `op` with a fresh req_id and resolves with the answer. */
  #request(op: string, body: Record<string, unknown>): Promise<[string, Record<string, unknown>]> {
    if (this.#http) return Promise.reject(this.#unsupported(op));
    if (!this.#ready) return Promise.reject(new ClosedError(`not connected (${this.#state})`));
    const reqId = this.#nextId++;
    return new Promise((resolve, reject) => {
      this.#waiting.set(reqId, { resolve, reject });
      this.#send({ [op]: { ...body, req_id: reqId } });
    });
  }

  #unsupported(what: string): RtcError {
    return new RtcError("UNSUPPORTED", `${what} needs the WebSocket transport; this connection fell back to ${this.#mode}`);
  }

  /** Publishes over HTTP and settles each publish's promise. A failure leaves them in
   *  the outbox, for the next connection. */
  async #httpPublish(list: Pending[]): Promise<void> {
    const http = this.#http;
    const gen = this.#gen;
    if (!http || list.length === 0) return;
    let results;
    try {
      results = await http.publish(list);
    } catch (e) {
      if (e instanceof RtcError && e.code !== "RATE_LIMITED" && !e.code.startsWith("HTTP_")) {
        // The whole batch was refused (a bad token, say): it would be refused again.
        for (const p of list) this.#settle(p.msgId, e);
      } else if (gen === this.#gen) {
        this.#lost(`HTTP publish failed: ${String(e)}`);
      }
      return;
    }
    list.forEach((p, i) => this.#settle(p.msgId, results[i] ?? new RtcError("INTERNAL", "no answer")));
  }

  /** A publish's answer: it leaves the outbox unless it must be sent again. */
  #settle(msgId: string, answer: PubAck | RtcError): void {
    if (answer instanceof RtcError && answer.code === "RATE_LIMITED") return;
    this.#outbox.remove(msgId);
    const w = this.#acks.get(msgId);
    this.#acks.delete(msgId);
    if (answer instanceof RtcError) w?.reject(answer);
    else w?.resolve(answer);
  }

  /** A fallback connection: the gateway reachable, every subscription's stream open,
   *  then the outbox sent. */
  async #openHttp(gen: number): Promise<void> {
    const fetchImpl = this.#opts.fetch ?? (globalThis as { fetch?: FetchLike }).fetch;
    if (!fetchImpl) {
      this.#lost("no fetch here for the HTTP fallback");
      return;
    }
    const http = new HttpTransport(this.#url.replace(/^ws/, "http").replace(/\/v1\/ws.*$/, ""), fetchImpl.bind(globalThis), () => this.#token);
    this.#http = http;
    if (!(await http.reachable())) {
      // The broker is away, not a proxy in the way: the next attempt is a WebSocket
      // again, so that a restarted broker is not left on a fallback.
      if (gen === this.#gen) {
        this.#mode = "poll";
        this.#lost("the gateway cannot be reached");
      }
      return;
    }
    const poll = this.#mode === "poll";
    const opening: Promise<void>[] = [];
    for (const sub of this.#subs.values()) {
      opening.push(
        new Promise<void>((resolve) => {
          this.#streams.set(sub.id, http.follow(sub, poll, resolve, (why) => {
            resolve();
            if (gen === this.#gen) this.#lost(why);
          }));
        }),
      );
    }
    await Promise.all(opening);
    if (gen !== this.#gen) return;
    this.#reached = true;
    this.#attempt = 0;
    this.#scheduleRefresh(jwtExpiry(this.#token));
    this.#setState("connected");
    this.#httpQueue = [];
    this.#httpEnqueue(this.#outbox.all());
  }

  /** Queues publishes for HTTP: one batch at a time, in order, so that they are stored
   *  in the order they were made (concurrent requests could overtake each other). */
  #httpEnqueue(list: Pending[]): void {
    this.#httpQueue.push(...list);
    if (this.#httpSending) return;
    this.#httpSending = true;
    void (async () => {
      while (this.#httpQueue.length > 0 && this.#http) {
        const batch = this.#httpQueue.splice(0, 1000);
        await this.#httpPublish(batch);
      }
      this.#httpSending = false;
    })();
  }

  #send(frame: Frame): void {
    const ws = this.#ws;
    if (ws && ws.readyState === OPEN) ws.send(this.#codec.encode(frame));
  }

  /** Pings every heartbeat interval; closes a link silent for three. */
  #tick(): void {
    clearTimeout(this.#timer);
    if (!this.#ready) return;
    if (Date.now() - this.#heard > 3 * this.#heartbeatMs) {
      const ws = this.#ws;
      this.#lost("nothing received for three heartbeat intervals");
      ws?.close();
      return;
    }
    this.#send({ ping: { nonce: this.#nextId++ } });
    this.#timer = setTimeout(() => this.#tick(), this.#heartbeatMs);
  }

  /** The connection is gone: fail what waits, then reconnect (or close). */
  #lost(why: string): void {
    this.#gen++;
    clearTimeout(this.#refreshTimer);
    this.#ready = false;
    this.#ws = undefined;
    this.#closeStreams();
    if (!this.#reached && this.#opts.fallback !== false) {
      // This transport could not be opened at all: try the next.
      this.#mode = this.#mode === "websocket" ? "sse" : this.#mode === "sse" ? "poll" : "websocket";
    }
    clearTimeout(this.#timer);
    this.#inFlight.clear();
    for (const w of this.#waiting.values()) w.reject(new ClosedError(why));
    this.#waiting.clear();
    if (this.#state === "closed") return;
    if (this.#urls.length > 1) {
      this.#at = (this.#at + 1) % this.#urls.length;
      this.#url = this.#urls[this.#at];
    }
    const policy = this.#opts.reconnect;
    this.#attempt += 1;
    if (policy === false || (policy?.maxAttempts !== undefined && this.#attempt > policy.maxAttempts)) {
      this.#finish(why);
      return;
    }
    this.#setState("reconnecting");
    this.#timer = setTimeout(() => void this.#open(), delayFor(policy ?? {}, this.#attempt));
  }

  #closeStreams(): void {
    this.#http = undefined;
    for (const s of this.#streams.values()) s.close();
    this.#streams.clear();
  }

  #finish(why: string): void {
    if (this.#state === "closed") return;
    this.#setState("closed");
    this.#closeStreams();
    clearTimeout(this.#timer);
    clearTimeout(this.#refreshTimer);
    const ws = this.#ws;
    this.#ws = undefined;
    this.#ready = false;
    ws?.close(1000);
    for (const w of this.#waiting.values()) w.reject(new ClosedError(why));
    this.#waiting.clear();
    for (const a of this.#acks.values()) a.reject(new ClosedError(why));
    this.#acks.clear();
    for (const s of this.#subs.values()) s.end(null);
    this.#subs.clear();
  }

  #setState(s: ConnectionState): void {
    if (this.#state === s) return;
    this.#state = s;
    for (const f of this.#stateListeners) f(s);
  }
}

function member(m: Record<string, unknown>): PresenceMember {
  return {
    user: (m.user as string) ?? "",
    info: (m.info as string) ?? "",
    connections: (m.connections as number) ?? 0,
    state: (m.state as Record<string, string>) ?? {},
  };
}

/** When a JWT expires (its `exp`, in ms), or 0 for a token that is not a JWT. */
export function jwtExpiry(token: string): number {
  const parts = token.split(".");
  if (parts.length !== 3) return 0;
  try {
    const b64 = parts[1]!.replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(fromUtf8(base64Decode(b64))) as { exp?: unknown };
    return typeof claims.exp === "number" ? claims.exp * 1000 : 0;
  } catch {
    return 0;
  }
}

/** `http(s)://host` or `ws(s)://host[/v1/ws]` as the WebSocket URL. */
function wsUrl(url: string): string {
  let u = url.replace(/^http/, "ws");
  if (!/\/v1\/ws(\?|$)/.test(u)) u = u.replace(/\/?(\?|$)/, "/v1/ws$1");
  return u;
}
