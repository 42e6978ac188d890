// Reconnect delays: exponential from `initialMs` up to `maxMs`, each with full jitter in
// its upper half, so a broker restart does not bring every client back at the same
// instant.

/** How the client reconnects after a lost connection. */
export interface ReconnectPolicy {
  /** First delay (default 100 ms). */
  initialMs?: number;
  /** Largest delay (default 10 s). */
  maxMs?: number;
  /** Give up after this many attempts in a row (default: never). */
  maxAttempts?: number;
}

/** The delay before attempt `attempt` (from 1). */
export function delayFor(policy: ReconnectPolicy, attempt: number, random = Math.random): number {
  const initial = policy.initialMs ?? 100;
  const max = policy.maxMs ?? 10_000;
  const base = Math.min(max, initial * 2 ** Math.min(attempt - 1, 30));
  return base / 2 + (random() * base) / 2;
}
