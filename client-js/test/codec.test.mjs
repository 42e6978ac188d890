// The binary codec without a broker: frames encoded by protobuf-es (protoCodec.encode)
// and read back by the codec's own reader come out as they went in, in the JSON
// mapping — every wire type the protocol uses, negative and large integers, maps,
// packed lists, nested messages, a wrapped oneof, a named enum, and bytes that are
// not UTF-8; and bytes that are not a frame are refused.
import { test } from "node:test";
import assert from "node:assert/strict";
import { protoCodec } from "../dist/proto.js";

const roundTrip = (frame) => protoCodec.decode(protoCodec.encode(frame));

test("frames read back as they were written", () => {
  const frames = [
    { subscribe: { req_id: 7, sub_id: 3, pattern: "chat.>", start: { position: { relative_ms: -300000 } }, epochs: { "chat.a": 2 ** 40 + 5 }, resume_after: { "chat.a": 41, "chat.b": 0 }, consumer: "w", ack_mode: 2, max_in_flight: 10 } },
    { subscribe: { sub_id: 1, pattern: "x", start: { position: { first: true } } } },
    { subscribe: { sub_id: 1, pattern: "x", start: { position: { seq: 2 ** 53 - 1 } } } },
    { ack: { req_id: 9, sub_id: 3, seqs: [1, 2, 300, 2 ** 35] } },
    { deliver: { sub_id: 3, message: { topic: "chat.ş", payload: new Uint8Array([0, 255, 1]), headers: { k: "değer", e: "" }, seq: 12, timestamp_ms: 1764800000123, msg_id: "id-1", delivery_count: 2, reply_to: "", epoch: 4 } } },
    { error: { req_id: 4, code: "SLOW_CONSUMER", message: "dropped", sub_id: 2, count: 17, topic: "t" } },
    { presence_info: { req_id: 1, topic: "room", members: 2, connections: 3, list: [{ user: "ana", info: "{}", connections: 1, state: { typing: "1" } }, { user: "bob", info: "", connections: 2, state: {} }], next: "" } },
    { welcome: { server_version: "x".repeat(200), heartbeat_interval_ms: 15000, max_payload: 1000000 } },
  ];
  for (const frame of frames) {
    const back = roundTrip(frame);
    assert.deepEqual(back, withoutDefaults(frame), JSON.stringify(frame));
  }
});

test("a payload sent as text or base64 arrives as its bytes", () => {
  for (const payload of ["héllo", { base64: "AP8B" }, new Uint8Array([104, 105])]) {
    const back = roundTrip({ publish: { topic: "t", payload } });
    const bytes = back.publish.payload;
    assert.ok(bytes instanceof Uint8Array);
    const want = typeof payload === "string" ? new TextEncoder().encode(payload) : payload instanceof Uint8Array ? payload : new Uint8Array([0, 255, 1]);
    assert.deepEqual([...bytes], [...want]);
  }
});

test("bytes that are not a frame are refused, not half read", () => {
  const good = protoCodec.encode({ deliver: { sub_id: 3, message: { topic: "chat.a", payload: "hi" } } });
  // The frame is one field (the deliver) spanning all its bytes: every cut truncates it.
  for (let cut = 1; cut < good.length; cut++) {
    assert.equal(protoCodec.decode(good.subarray(0, cut)), undefined, `cut at ${cut} of ${good.length}`);
  }
  assert.deepEqual(protoCodec.decode(good.subarray(0, 0)), {}, "no bytes: a frame with no operation");
  assert.equal(protoCodec.decode(new Uint8Array([0x3a, 0xff, 0xff, 0xff, 0xff, 0x0f])), undefined, "a length past the end");
  assert.equal(protoCodec.decode(new Uint8Array([0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])), undefined, "a varint of 11 bytes");
  assert.equal(protoCodec.decode("a string"), undefined);
});

/** The frame as the wire gives it back: fields at their default are not sent, and a
 *  payload arrives as bytes. */
function withoutDefaults(v, key) {
  if (key === "payload") return typeof v === "string" ? new TextEncoder().encode(v) : v;
  if (v instanceof Uint8Array) return v;
  if (Array.isArray(v)) return v.map((x) => withoutDefaults(x));
  if (typeof v !== "object" || v === null) return v;
  const out = {};
  for (const [k, x] of Object.entries(v)) {
    const isMap = ["headers", "epochs", "resume_after", "state"].includes(k);
    if (!isMap && (x === 0 || x === "" || x === false)) continue;
    if (isMap && Object.keys(x).length === 0) continue;
    out[k] = isMap ? x : withoutDefaults(x, k);
  }
  return out;
}
