// Payloads as the gateway's JSON mode carries them (docs/protocol.md, "WebSocket"): a
// JSON string when the bytes are valid UTF-8, otherwise {"base64": "..."}. The app
// hands in a string or bytes and gets back a Message that gives either.

/** What the app publishes: text (sent as its UTF-8 bytes) or raw bytes. */
export type Payload = string | Uint8Array;

/** A payload as it travels in a JSON frame. */
export type WirePayload = string | { base64: string };

// TextEncoder and TextDecoder where the host has them; React Native's Hermes had neither
// until recently, so the client carries a UTF-8 codec of its own for those hosts.
const native = typeof TextEncoder !== "undefined" && typeof TextDecoder !== "undefined";
const encoder = native ? new TextEncoder() : undefined;
const lenient = native ? new TextDecoder() : undefined;
const strict = native ? new TextDecoder("utf-8", { fatal: true }) : undefined;

/** `p` for a JSON frame: text as it is, bytes as text when they are UTF-8. */
export function toWire(p: Payload): WirePayload {
  if (typeof p === "string") return p;
  return strictUtf8(p) ?? { base64: base64Encode(p) };
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

/** UTF-8 bytes of `s` (a lone surrogate becomes U+FFFD, as TextEncoder does). */
export function utf8(s: string): Uint8Array {
  return encoder ? encoder.encode(s) : encodeUtf8(s);
}

/** `bytes` as text, invalid sequences replaced by U+FFFD. */
export function fromUtf8(bytes: Uint8Array): string {
  return lenient ? lenient.decode(bytes) : (decodeUtf8(bytes, false) as string);
}

/** `bytes` as text, or undefined when they are not valid UTF-8. */
export function strictUtf8(bytes: Uint8Array): string | undefined {
  if (!strict) return decodeUtf8(bytes, true);
  try {
    return strict.decode(bytes);
  } catch {
    return undefined;
  }
}

/** The UTF-8 encoder for hosts without TextEncoder. */
export function encodeUtf8(s: string): Uint8Array {
  const out: number[] = [];
  for (let i = 0; i < s.length; i++) {
    let c = s.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdfff) {
      const d = s.charCodeAt(i + 1);
      if (c <= 0xdbff && d >= 0xdc00 && d <= 0xdfff) {
        c = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00);
        i++;
      } else {
        c = 0xfffd;
      }
    }
    if (c < 0x80) out.push(c);
    else if (c < 0x800) out.push(0xc0 | (c >> 6), 0x80 | (c & 63));
    else if (c < 0x10000) out.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
    else out.push(0xf0 | (c >> 18), 0x80 | ((c >> 12) & 63), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
  }
  return new Uint8Array(out);
}

/** The UTF-8 decoder for hosts without TextDecoder: undefined for invalid input when
 *  `fatal`, else each byte that does not start a valid sequence becomes U+FFFD. */
export function decodeUtf8(b: Uint8Array, fatal: boolean): string | undefined {
  let out = "";
  const points: number[] = [];
  let i = 0;
  while (i < b.length) {
    const c = b[i]!;
    let n = 0;
    let cp = -1;
    if (c < 0x80) [n, cp] = [1, c];
    else if (c >= 0xc2 && c < 0xe0) [n, cp] = [2, c & 0x1f];
    else if (c >= 0xe0 && c < 0xf0) [n, cp] = [3, c & 0x0f];
    else if (c >= 0xf0 && c < 0xf5) [n, cp] = [4, c & 0x07];
    if (n > 1) {
      if (i + n > b.length) cp = -1;
      for (let k = 1; k < n && cp !== -1; k++) {
        const d = b[i + k]!;
        cp = (d & 0xc0) === 0x80 ? (cp << 6) | (d & 0x3f) : -1;
      }
      // Overlong forms, surrogates and points past U+10FFFF are not UTF-8.
      if ((n === 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) || (n === 4 && (cp < 0x10000 || cp > 0x10ffff))) cp = -1;
    }
    if (cp === -1) {
      if (fatal) return undefined;
      points.push(0xfffd);
      i += 1;
    } else {
      points.push(cp);
      i += n;
    }
    if (points.length >= 4096) {
      out += String.fromCodePoint(...points);
      points.length = 0;
    }
  }
  return out + String.fromCodePoint(...points);
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
