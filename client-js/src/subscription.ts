// A subscription as the app holds it (messages by callback or `for await`), and what the
// client keeps to restore it on a new connection: the Subscribe as first sent and, for
// plain subscriptions on durable topics, the last (epoch, seq) delivered per topic.
//
// Restoring (as rtc-client does): a durable consumer or a queue group member rejoins as
// it was. A plain subscription resumes each topic it got messages of after the last seq
// it got (`resume_after`, with `epochs` so that a topic deleted and created again is
// taken from its new log's start), and the topics it got nothing of from its own start
// (its start position, or the time it was made for a live one). Repeats are dropped by
// seq, so across reconnects nothing is missed and nothing repeats.

import { Message, type WireMessage } from "./message.js";

/** Where a subscription starts in the durable topics' logs. */
export type StartAt =
  | "new"
  | "first"
  | "last"
  | { seq: number; epoch?: number }
  | { timeMs: number }
  | { relativeMs: number };

/** The wire Subscribe (JSON mapping). */
export interface WireSubscribe {
  req_id?: number;
  sub_id: number;
  pattern: string;
  start?: { position: Record<string, unknown> };
  consumer?: string;
  ack_mode?: number;
  ack_wait_ms?: number;
  max_in_flight?: number;
  max_deliver?: number;
  resume_after?: Record<string, number>;
  group?: string;
  presence?: { info?: string; events?: boolean };
  epochs?: Record<string, number>;
}

/** The wire form of a start position. */
export function startToWire(start: StartAt): { position: Record<string, unknown> } {
  if (start === "new") return { position: { new: true } };
  if (start === "first") return { position: { first: true } };
  if (start === "last") return { position: { last: true } };
  if ("seq" in start) return { position: { seq: start.seq } };
  if ("timeMs" in start) return { position: { time_ms: start.timeMs } };
  return { position: { relative_ms: start.relativeMs } };
}

/** Most topics a restore lists in resume_after (the broker's limit). */
const MAX_RESUME = 1000;

/** Messages kept for an app that iterates more slowly than they come. */
const QUEUE_MAX = 100_000;

export class Subscription implements AsyncIterable<Message> {
  readonly id: number;
  readonly pattern: string;
  /** The Subscribe as first sent. */
  readonly request: WireSubscribe;
  /** Confirmed by the broker (restored after a reconnect only then). */
  active = false;
  readonly #seen = new Map<string, number>();
  readonly #epochs = new Map<string, number>();
  #lastTs: number | undefined;
  #since = Date.now();
  #handler: ((m: Message) => void) | undefined;
  readonly #queue: Message[] = [];
  #waiting: ((r: IteratorResult<Message>) => void) | undefined;
  #ended: Error | null | undefined;
  readonly #unsubscribe: (s: Subscription) => Promise<void>;
  /** On the HTTP fallbacks: the broker's position id of this subscription's stream. */
  streamId: string | undefined;

  constructor(request: WireSubscribe, unsubscribe: (s: Subscription) => Promise<void>) {
    this.id = request.sub_id;
    this.pattern = request.pattern;
    this.request = request;
    this.#unsubscribe = unsubscribe;
  }

  /** Calls `handler` for each message from now on (instead of iterating). */
  onMessage(handler: (m: Message) => void): this {
    this.#handler = handler;
    for (const m of this.#queue.splice(0)) handler(m);
    return this;
  }

  /** Ends the subscription. */
  unsubscribe(): Promise<void> {
    return this.#unsubscribe(this);
  }

  get isConsumer(): boolean {
    return !!this.request.consumer;
  }

  /** The broker confirmed it: a restore of a live subscription starts from here. */
  confirmed(): void {
    if (!this.active) this.#since = Date.now();
    this.active = true;
  }

  /** Hands `m` on unless it repeats one already delivered (after a resume). */
  deliver(m: Message): void {
    if (this.#ended !== undefined) return;
    if (m.seq !== 0 && !this.isConsumer) {
      if (m.epoch !== 0 && this.#epochs.get(m.topic) !== m.epoch) {
        // The topic's first message, or the first of a new log under its name.
        if (this.#epochs.has(m.topic)) this.#seen.delete(m.topic);
        this.#epochs.set(m.topic, m.epoch);
      }
      const last = this.#seen.get(m.topic);
      if (last !== undefined && m.seq <= last) return;
      this.#seen.set(m.topic, m.seq);
      this.#lastTs = m.timestampMs;
    }
    if (this.#handler) {
      this.#handler(m);
    } else if (this.#waiting) {
      const w = this.#waiting;
      this.#waiting = undefined;
      w({ value: m, done: false });
    } else if (this.#queue.length < QUEUE_MAX) {
      this.#queue.push(m);
    } else {
      console.warn(`rtc-client: subscription ${this.pattern} holds ${QUEUE_MAX} unread messages; dropping`);
    }
  }

  /** A message a fallback stream brought. */
  deliverWire(m: WireMessage): void {
    this.deliver(new Message(m));
  }

  /** Where a fallback stream without a position id starts (the `from` of SSE and
   *  long-polling): the time of the last delivery (repeats are dropped by seq), else the
   *  subscription's own start. */
  streamStart(): string {
    const iso = (ms: number) => `time:${new Date(ms).toISOString()}`;
    if (this.#lastTs !== undefined) return iso(this.#lastTs);
    const p = this.request.start?.position;
    if (!p || "new" in p) return iso(this.#since - 1000);
    if ("first" in p) return "first";
    if ("last" in p) return "last";
    if ("seq" in p) return `seq:${String(p.seq)}`;
    if ("time_ms" in p) return iso(Number(p.time_ms));
    return `time:-${String(-Number(p.relative_ms))}ms`;
  }

  /** The broker deleted `topic`: a consumer's subscription ends, a plain one forgets it. */
  topicDeleted(topic: string, error: Error): void {
    if (this.isConsumer) {
      this.end(error);
    } else {
      this.#seen.delete(topic);
      this.#epochs.delete(topic);
    }
  }

  /** Ends the stream: `null` normally, an error when the broker ended it. */
  end(error: Error | null): void {
    if (this.#ended !== undefined) return;
    this.#ended = error;
    const w = this.#waiting;
    this.#waiting = undefined;
    if (w) w({ value: undefined, done: true });
  }

  get ended(): boolean {
    return this.#ended !== undefined;
  }

  /** The Subscribe that restores it on a new connection (see the module comment). */
  restore(): WireSubscribe {
    const s: WireSubscribe = { ...this.request };
    delete s.req_id;
    if (this.isConsumer || s.group) return s;
    const sinceStart = { position: { relative_ms: -(Date.now() - this.#since) - 1000 } };
    if (this.#seen.size > 0 && this.#seen.size <= MAX_RESUME) {
      s.resume_after = Object.fromEntries(this.#seen);
      s.epochs = Object.fromEntries([...this.#epochs].filter(([t]) => this.#seen.has(t)));
      const original = this.request.start;
      s.start = !original || "new" in original.position ? sinceStart : original;
    } else if (this.#lastTs !== undefined) {
      s.start = { position: { time_ms: this.#lastTs } };
    } else {
      s.start = sinceStart;
    }
    return s;
  }

  [Symbol.asyncIterator](): AsyncIterator<Message> {
    return {
      next: () => {
        const m = this.#queue.shift();
        if (m) return Promise.resolve({ value: m, done: false });
        if (this.#ended !== undefined) {
          return this.#ended
            ? Promise.reject(this.#ended)
            : Promise.resolve({ value: undefined, done: true });
        }
        return new Promise((resolve) => (this.#waiting = resolve));
      },
      return: async () => {
        await this.unsubscribe();
        return { value: undefined, done: true };
      },
    };
  }
}
