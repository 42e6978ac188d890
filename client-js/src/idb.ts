// An outbox storage on IndexedDB, for browsers: one object store of string values,
// asynchronous like React Native's AsyncStorage. Unlike localStorage it is not limited
// to a few megabytes and does not block the page while it writes; a write is done when
// its transaction completes (`client.outboxFlushed()` waits for it).

import type { KeyValueStorage } from "./outbox.js";

// The little of IndexedDB used here, declared instead of taking the DOM typings.
interface IdbRequest<T> {
  result: T;
  error: unknown;
  onsuccess: (() => void) | null;
  onerror: (() => void) | null;
}
interface IdbOpenRequest extends IdbRequest<IdbDatabase> {
  onupgradeneeded: (() => void) | null;
}
interface IdbTransaction {
  objectStore(name: string): IdbStore;
  oncomplete: (() => void) | null;
  onerror: (() => void) | null;
  onabort: (() => void) | null;
  error: unknown;
}
interface IdbStore {
  get(key: string): IdbRequest<unknown>;
  put(value: string, key: string): unknown;
  delete(key: string): unknown;
}
interface IdbDatabase {
  objectStoreNames: { contains(name: string): boolean };
  createObjectStore(name: string): unknown;
  transaction(store: string, mode: "readonly" | "readwrite"): IdbTransaction;
}
/** The shape of `globalThis.indexedDB`. */
export interface IdbFactory {
  open(name: string, version?: number): IdbOpenRequest;
}

const STORE = "kv";

/** See the module comment. `new IndexedDbStorage("my-app")`, then pass it as `storage`. */
export class IndexedDbStorage implements KeyValueStorage {
  readonly #db: Promise<IdbDatabase>;

  constructor(database = "rtc-client", factory?: IdbFactory) {
    const idb = factory ?? (globalThis as { indexedDB?: IdbFactory }).indexedDB;
    this.#db = new Promise((resolve, reject) => {
      if (!idb) {
        reject(new Error("no IndexedDB here"));
        return;
      }
      const open = idb.open(database, 1);
      open.onupgradeneeded = () => {
        if (!open.result.objectStoreNames.contains(STORE)) open.result.createObjectStore(STORE);
      };
      open.onsuccess = () => resolve(open.result);
      open.onerror = () => reject(open.error);
    });
  }

  async getItem(key: string): Promise<string | null> {
    const db = await this.#db;
    return new Promise((resolve, reject) => {
      const req = db.transaction(STORE, "readonly").objectStore(STORE).get(key);
      req.onsuccess = () => resolve(typeof req.result === "string" ? req.result : null);
      req.onerror = () => reject(req.error);
    });
  }

  setItem(key: string, value: string): Promise<void> {
    return this.#write((s) => s.put(value, key));
  }

  removeItem(key: string): Promise<void> {
    return this.#write((s) => s.delete(key));
  }

  async #write(change: (s: IdbStore) => unknown): Promise<void> {
    const db = await this.#db;
    return new Promise((resolve, reject) => {
      const tx = db.transaction(STORE, "readwrite");
      change(tx.objectStore(STORE));
      tx.oncomplete = () => resolve();
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
  }
}
