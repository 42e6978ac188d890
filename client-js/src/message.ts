// A delivered message, as the app sees it: text or bytes on demand, the topic's position
// (epoch, seq), and for a durable consumer's deliveries ack / nack / inProgress.

import { fromUtf8, fromWire, utf8 } from "./payload.js";

/** The wire form of a delivered message (rtc.proto `Message`, JSON mapping). */
export interface WireMessage {
  topic?: string;
  payload?: unknown;
  headers?: Record<string, string>;
  seq?: number;
  timestamp_ms?: number;
  msg_id?: string;
  delivery_count?: number;
  reply_to?: string;
  epoch?: number;
}

/** What acks a consumer's delivery (the client wires it up). */
export interface Settler {
  ack(seq: number): Promise<void>;
  nack(seq: number, delayMs: number): Promise<void>;
  inProgress(seq: number): Promise<void>;
}

export class Message {
  readonly topic: string;
  readonly headers: Record<string, string>;
  /** Position in the topic's log; 0 for ephemeral topics. */
  readonly seq: number;
  /** The incarnation of the topic's log (a deleted and recreated topic has another). */
  readonly epoch: number;
  /** Broker time of acceptance, ms since the Unix epoch. */
  readonly timestampMs: number;
  readonly msgId: string;
  /** 1 on first delivery; more for a durable consumer's redeliveries. */
  readonly deliveryCount: number;
  /** Set on a request: answer it with `client.reply(message, ...)`. */
  readonly replyTo: string;
  #text: string | undefined;
  #bytes: Uint8Array | undefined;
  readonly #settler: Settler | undefined;

  constructor(m: WireMessage, settler?: Settler) {
    const { topic, payload, headers, seq, timestamp_ms, msg_id, delivery_count, reply_to, epoch } = m;
    this.topic = topic ?? "";
    const p = fromWire(payload);
    this.#text = p.text;
    this.#bytes = p.bytes;
    this.headers = headers ?? {};
    this.seq = seq ?? 0;
    this.epoch = epoch ?? 0;
    this.timestampMs = timestamp_ms ?? 0;
    this.msgId = msg_id ?? "";
    this.deliveryCount = delivery_count ?? 1;
    this.replyTo = reply_to ?? "";
    this.#settler = settler;
  }

  /** The payload as text (bytes that are not UTF-8 are decoded with replacements). */
  get text(): string {
    this.#text ??= fromUtf8(this.#bytes ?? new Uint8Array(0));
    return this.#text;
  }

  /** The payload's bytes. */
  get bytes(): Uint8Array {
    this.#bytes ??= utf8(this.#text ?? "");
    return this.#bytes;
  }

  /** The payload parsed as JSON. */
  json<T = unknown>(): T {
    return JSON.parse(this.text) as T;
  }

  /** Settles a durable consumer's delivery (confirmed by the broker). */
  ack(): Promise<void> {
    return this.#settle().ack(this.seq);
  }

  /** Gives it back for redelivery, after `delayMs`. */
  nack(delayMs = 0): Promise<void> {
    return this.#settle().nack(this.seq, delayMs);
  }

  /** Still working on it: restarts its ack_wait. */
  inProgress(): Promise<void> {
    return this.#settle().inProgress(this.seq);
  }

  #settle(): Settler {
    if (!this.#settler) throw new Error("only a durable consumer's deliveries are acknowledged");
    return this.#settler;
  }
}
