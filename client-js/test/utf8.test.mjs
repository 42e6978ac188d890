// The UTF-8 codec the client carries for hosts without TextEncoder / TextDecoder
// (React Native's Hermes until recently), checked against the host's own on text of
// every width, lone surrogates, and random bytes (valid or not).
import { test } from "node:test";
import assert from "node:assert/strict";
import { decodeUtf8, encodeUtf8 } from "../dist/payload.js";

const samples = ["", "ascii", "ğüşİıçö", "日本語", "emoji 😀🎉", "mixed a😀b\u0000c", "\ud800 lone high", "lone low \udc00", "end \ud83d"];

test("encodes as TextEncoder does", () => {
  const native = new TextEncoder();
  for (const s of samples) assert.deepEqual([...encodeUtf8(s)], [...native.encode(s)], JSON.stringify(s));
});

test("decodes valid text as TextDecoder does, and refuses what is not UTF-8", () => {
  const strict = new TextDecoder("utf-8", { fatal: true });
  for (const s of samples) {
    const bytes = new TextEncoder().encode(s);
    assert.equal(decodeUtf8(bytes, true), strict.decode(bytes));
  }
  // Random byte strings, mostly invalid: valid exactly when TextDecoder says so, and
  // then the same text; a lenient decode is as long as the input or shorter.
  let seed = 7;
  const rand = () => ((seed = (seed * 1103515245 + 12345) >>> 0) >>> 24);
  for (let n = 0; n < 3000; n++) {
    const bytes = new Uint8Array(1 + (n % 12)).map(() => (n % 3 === 0 ? 0xc0 | rand() : rand()));
    let want;
    try {
      want = strict.decode(bytes);
    } catch {
      want = undefined;
    }
    assert.equal(decodeUtf8(bytes, true), want, `[${[...bytes]}]`);
    const lenient = decodeUtf8(bytes, false);
    assert.ok(typeof lenient === "string" && lenient.length <= bytes.length * 2);
    if (want !== undefined) assert.equal(lenient, want);
  }
  for (const bad of [[0xc0, 0x80], [0xed, 0xa0, 0x80], [0xf4, 0x90, 0x80, 0x80], [0xe2, 0x82]]) {
    assert.equal(decodeUtf8(new Uint8Array(bad), true), undefined, `[${bad}] is not UTF-8`);
  }
});
