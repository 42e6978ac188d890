// Payloads as the gateway's JSON mode carries them (docs/protocol.md, "WebSocket"): a
// JSON string when the bytes are valid UTF-8, otherwise {"base64": "..."}. The app
// hands in a string or bytes and gets back a Message that gives either.

/** What the app publishes: text (sent as its UTF-8 bytes) or raw bytes. */
export type Payload = string | Uint8Array;

/** A payload as it travels in a JSON frame. */
export type WirePayload = string | { base64: string };

const encoder = new TextEncoder();
const strict = new TextDecoder("utf-8", { fatal: true });

/** `p` for a JSON frame: text as it is, bytes as text when they are UTF-8. */
export function toWire(p: Payload): WirePayload {
  if (typeof p === "string") return p;
  try {
    return strict.decode(p);
  } catch {
    return { base64: base64Encode(p) };
  }
}

/** A payload from a frame (absent: empty): JSON's string or {base64}, or the binary
 *  mode's bytes. */
export function fromWire(v: unknown): { text?: string; bytes?: Uint8Array } {
  if (v === undefined || v === null) return { text: "" };
  if (typeof v === "string") return { text: v };
  if (v instanceof Uint8Array) return { bytes: v };
  if (typeof v === "object" && typeof (v as { base64?: unknown }).base64 === "string") {
    return { bytes: base64Decode((v as { base64: string }).base64) };
  }
  throw new Error("a payload is a string or {base64}");
}

/** A payload's bytes, whichever form it has (for the binary mode). */
export function payloadBytes(v: unknown): Uint8Array {
  const p = fromWire(v);
  return p.bytes ?? utf8(p.text ?? "");
}

/** UTF-8 bytes of `s`. */
export function utf8(s: string): Uint8Array {
  return encoder.encode(s);
}

const ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const LOOKUP = new Map<string, number>([...ALPHABET].map((c, i) => [c, i]));

/** Standard base64 with padding. Written out: atob/btoa are not everywhere (older React Native). */
export function base64Encode(bytes: Uint8Array): string {
  let out = "";
  for (let i = 0; i < bytes.length; i += 3) {
    const [a, b, c] = [bytes[i]!, bytes[i + 1], bytes[i + 2]];
    const n = (a << 16) | ((b ?? 0) << 8) | (c ?? 0);
    out += ALPHABET[(n >> 18) & 63]! + ALPHABET[(n >> 12) & 63]!;
    out += b === undefined ? "=" : ALPHABET[(n >> 6) & 63]!;
    out += c === undefined ? "=" : ALPHABET[n & 63]!;
  }
  return out;
}

/** The inverse of base64Encode; throws on characters outside the alphabet. */
export function base64Decode(text: string): Uint8Array {
  const clean = text.replace(/=+$/, "");
  const out = new Uint8Array(Math.floor((clean.length * 3) / 4));
  let bits = 0;
  let acc = 0;
  let at = 0;
  for (const ch of clean) {
    const v = LOOKUP.get(ch);
    if (v === undefined) throw new Error(`not base64: ${JSON.stringify(ch)}`);
    acc = (acc << 6) | v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[at++] = (acc >> bits) & 0xff;
    }
  }
  return out.subarray(0, at);
}
