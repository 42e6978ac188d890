// The fallback transports, for when a WebSocket cannot be opened (a proxy that blocks
// upgrades): Server-Sent Events to receive, then long-polling, with HTTP publish to send
// (docs/protocol.md, "Server-Sent Events", "Long-polling", "HTTP publish").
//
// Each subscription is one stream of its own (`GET /v1/sse?topic=P` or a loop of
// `GET /v1/poll?topic=P`). A stream starts from the subscription's own position: after
// its last delivery (by time, the repeats then dropped by seq in the Subscription), or
// its start position, so a switch from WebSocket loses nothing; it resumes on the same
// transport with the broker's own position id (`Last-Event-ID`, `after`). SSE is read
// with fetch's streaming body rather than EventSource, which Node 20 lacks and which
// cannot send a token header.
//
// What needs a two-way link — durable consumers, queue groups, presence joins,
// request-reply — is refused on these transports with `UNSUPPORTED`.

import { RtcError } from "./errors.js";
import type { WireMessage } from "./message.js";
import type { Pending } from "./outbox.js";
import { fromUtf8 } from "./payload.js";
import type { Subscription } from "./subscription.js";

/** The fetch the host provides. */
export type FetchLike = (url: string, init?: Record<string, unknown>) => Promise<FetchResponse>;
export interface FetchResponse {
  ok: boolean;
  status: number;
  json(): Promise<unknown>;
  text(): Promise<string>;
  body?: { getReader(): { read(): Promise<{ done: boolean; value?: Uint8Array }>; cancel(): Promise<void> } } | null;
}

/** A stream's message as SSE and long-polling carry it. */
interface StreamMessage {
  topic: string;
  seq: number;
  time: number;
  msg_id: string;
  headers: Record<string, string>;
  payload?: string;
  payload_base64?: string;
}

function toWireMessage(m: StreamMessage): WireMessage {
  return {
    topic: m.topic,
    seq: m.seq,
    timestamp_ms: m.time,
    msg_id: m.msg_id,
    headers: m.headers,
    payload: m.payload ?? { base64: m.payload_base64 ?? "" },
  };
}

/** One subscription's stream; `close()` stops it. */
export interface Stream {
  close(): void;
}

export class HttpTransport {
  readonly #base: string;
  readonly #fetch: FetchLike;
  readonly #token: () => string;

  constructor(base: string, fetchImpl: FetchLike, token: () => string) {
    this.#base = base;
    this.#fetch = fetchImpl;
    this.#token = token;
  }

  #headers(extra: Record<string, string> = {}): Record<string, string> {
    const t = this.#token();
    return t ? { Authorization: `Bearer ${t}`, ...extra } : extra;
  }

  /** Whether the broker's gateway answers at all. */
  async reachable(): Promise<boolean> {
    try {
      return (await this.#fetch(`${this.#base}/healthz`)).ok;
    } catch {
      return false;
    }
  }

  /** Publishes `pending` in one batch; one answer per publish, in order. */
  async publish(pending: Pending[]): Promise<({ seq: number; duplicate: boolean } | RtcError)[]> {
    const lines = pending.map((p) =>
      JSON.stringify({
        topic: p.topic,
        msg_id: p.msgId,
        headers: p.headers,
        ...(typeof p.payload === "string" ? { payload: p.payload } : { payload_base64: p.payload.base64 }),
      }),
    );
    const r = await this.#fetch(`${this.#base}/v1/publish`, {
      method: "POST",
      headers: this.#headers({ "Content-Type": "application/x-ndjson" }),
      body: lines.join("\n"),
    });
    const body = (await r.json()) as { results?: Record<string, unknown>[]; code?: string; message?: string };
    if (!r.ok) throw new RtcError(body.code ?? `HTTP_${r.status}`, body.message ?? "");
    return (body.results ?? []).map((x) =>
      typeof x.code === "string" ? new RtcError(x.code, String(x.message ?? "")) : { seq: Number(x.seq ?? 0), duplicate: !!x.duplicate },
    );
  }

  /** Who is in a room (`GET /v1/presence/{topic}`). */
  async presence(topic: string, after: string, limit: number, countOnly: boolean): Promise<Record<string, unknown>> {
    const q = new URLSearchParams({ after, limit: String(limit), count_only: String(countOnly) });
    const r = await this.#fetch(`${this.#base}/v1/presence/${encodeURIComponent(topic)}?${q}`, { headers: this.#headers() });
    const body = (await r.json()) as Record<string, unknown>;
    if (!r.ok) throw new RtcError(String(body.code ?? `HTTP_${r.status}`), String(body.message ?? ""));
    return body;
  }

  /** Follows `sub` over SSE (`poll` false) or long-polling; `failed` is called once when
   *  the stream cannot go on (the client then reconnects). */
  follow(sub: Subscription, poll: boolean, opened: () => void, failed: (why: string) => void): Stream {
    let stopped = false;
    let cancel: (() => void) | undefined;
    const stop = (why?: string) => {
      if (stopped) return;
      stopped = true;
      cancel?.();
      if (why) failed(why);
    };
    const deliver = (m: StreamMessage) => sub.deliverWire(toWireMessage(m));
    const query = () => {
      const q = new URLSearchParams({ topic: sub.pattern });
      if (sub.streamId) {
        if (poll) q.set("after", sub.streamId);
      } else {
        q.set("from", sub.streamStart());
      }
      return q;
    };
    const run = async () => {
      if (poll) {
        let first = true;
        while (!stopped) {
          const q = query();
          q.set("timeout", "25s");
          const r = await this.#fetch(`${this.#base}/v1/poll?${q}`, { headers: this.#headers() });
          const body = (await r.json()) as { messages?: StreamMessage[]; next?: string; code?: string; message?: string };
          if (!r.ok) throw new RtcError(body.code ?? `HTTP_${r.status}`, body.message ?? "");
          if (first) {
            first = false;
            opened();
          }
          for (const m of body.messages ?? []) deliver(m);
          if (body.next) sub.streamId = body.next;
        }
        return;
      }
      const headers = this.#headers({ Accept: "text/event-stream" });
      if (sub.streamId) headers["Last-Event-ID"] = sub.streamId;
      const r = await this.#fetch(`${this.#base}/v1/sse?${query()}`, { headers });
      if (!r.ok) {
        const body = (await r.json().catch(() => ({}))) as { code?: string; message?: string };
        throw new RtcError(body.code ?? `HTTP_${r.status}`, body.message ?? "");
      }
      if (!r.body) throw new RtcError("UNSUPPORTED", "this fetch cannot stream a response body");
      const reader = r.body.getReader();
      cancel = () => void reader.cancel().catch(() => {});
      opened();
      // Bytes are decoded a whole line at a time: a line never ends inside a character,
      // while a chunk of the stream may.
      let bytes = new Uint8Array(0);
      let buffer = "";
      let event = { id: "", name: "", data: "" };
      for (;;) {
        const { done, value } = await reader.read();
        if (done) throw new Error("the stream ended");
        const chunk = value ?? new Uint8Array(0);
        // Joined with the unfinished line only when there is one (most chunks end a line).
        let joined = chunk;
        if (bytes.length > 0) {
          joined = new Uint8Array(bytes.length + chunk.length);
          joined.set(bytes);
          joined.set(chunk, bytes.length);
        }
        const end = joined.lastIndexOf(10) + 1;
        buffer += fromUtf8(joined.subarray(0, end));
        bytes = joined.slice(end);
        let nl: number;
        while ((nl = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, nl).replace(/\r$/, "");
          buffer = buffer.slice(nl + 1);
          if (line === "") {
            if (event.data && (event.name === "" || event.name === "message")) deliver(JSON.parse(event.data) as StreamMessage);
            if (event.id) sub.streamId = event.id;
            event = { id: "", name: "", data: "" };
          } else if (line.startsWith("data:")) {
            event.data += line.slice(5).trimStart();
          } else if (line.startsWith("id:")) {
            event.id = line.slice(3).trim();
          } else if (line.startsWith("event:")) {
            event.name = line.slice(6).trim();
          }
        }
      }
    };
    run().catch((e) => stop(String((e as Error).message ?? e)));
    return { close: () => stop() };
  }
}
