// The outbox: acknowledged publishes not yet acknowledged, in the order they were made,
// each with the message ID the broker deduplicates by. They are sent again, in order,
// after every reconnect, so the broker stores each exactly once. With a storage they
// are also written there on every change, so a page reload or an app restart sends
// them again (`Client.connect` with the same storage and name).
//
// A storage is anything with getItem / setItem / removeItem, synchronous or returning
// promises: `localStorage` and `sessionStorage` in a browser, React Native's
// `AsyncStorage`, or `MemoryStorage` (the default keeps nothing across a restart).

import { OutboxFullError } from "./errors.js";
import type { WirePayload } from "./payload.js";

/** Where the outbox is kept across restarts (the Web Storage / AsyncStorage shape). */
export interface KeyValueStorage {
  getItem(key: string): string | null | Promise<string | null>;
  setItem(key: string, value: string): void | Promise<void>;
  removeItem(key: string): void | Promise<void>;
}

/** A storage in this process's memory: a "restart" that keeps the object keeps it. */
export class MemoryStorage implements KeyValueStorage {
  readonly #items = new Map<string, string>();
  getItem(key: string): string | null {
    return this.#items.get(key) ?? null;
  }
  setItem(key: string, value: string): void {
    this.#items.set(key, value);
  }
  removeItem(key: string): void {
    this.#items.delete(key);
  }
}

/** One unacknowledged publish. */
export interface Pending {
  msgId: string;
  topic: string;
  payload: WirePayload;
  headers: Record<string, string>;
}

/** See the module comment. */
export class Outbox {
  readonly #entries = new Map<string, Pending>();
  readonly #storage: KeyValueStorage | undefined;
  readonly #key: string;
  readonly #max: number;
  /** Writes to the storage in the order they were made. */
  #writing: Promise<void> = Promise.resolve();
  #dirty = false;

  constructor(max: number, storage: KeyValueStorage | undefined, name: string) {
    this.#max = max;
    this.#storage = storage;
    this.#key = `rtc-outbox:${name}`;
  }

  /** Loads what a previous run left (oldest first). */
  async load(): Promise<Pending[]> {
    if (!this.#storage) return [];
    const raw = await this.#storage.getItem(this.#key);
    if (!raw) return [];
    let list: Pending[];
    try {
      list = JSON.parse(raw) as Pending[];
    } catch {
      console.warn(`rtc-client: the stored outbox ${this.#key} is not JSON; it is ignored`);
      return [];
    }
    for (const p of list) this.#entries.set(p.msgId, p);
    return list;
  }

  get size(): number {
    return this.#entries.size;
  }

  /** Adds a publish, or throws OutboxFullError. */
  add(p: Pending): void {
    if (this.#entries.size >= this.#max) throw new OutboxFullError(this.#max);
    this.#entries.set(p.msgId, p);
    this.#changed();
  }

  /** The broker acknowledged (or refused) `msgId`: it leaves the outbox. */
  remove(msgId: string): void {
    if (this.#entries.delete(msgId)) this.#changed();
  }

  /** Every publish waiting, oldest first. */
  all(): Pending[] {
    return [...this.#entries.values()];
  }

  /** Resolves once every change so far is in the storage. */
  flushed(): Promise<void> {
    return this.#writing;
  }

  /** Writes the outbox: at once to a synchronous storage (localStorage), so a reload
   *  right after publish() keeps the message; after the write in progress to an
   *  asynchronous one, the changes made meanwhile written once. */
  #changed(): void {
    const storage = this.#storage;
    if (!storage) return;
    if (isSync(storage)) {
      void this.#write(storage);
      return;
    }
    if (this.#dirty) return;
    this.#dirty = true;
    this.#writing = this.#writing.then(() => {
      this.#dirty = false;
      return this.#write(storage);
    });
  }

  async #write(storage: KeyValueStorage): Promise<void> {
    try {
      if (this.#entries.size === 0) await storage.removeItem(this.#key);
      else await storage.setItem(this.#key, JSON.stringify(this.all()));
    } catch (e) {
      console.warn(`rtc-client: cannot store the outbox: ${String(e)}`);
    }
  }
}

function isSync(s: KeyValueStorage): boolean {
  return s instanceof MemoryStorage || (typeof (s as { length?: unknown }).length === "number");
}
