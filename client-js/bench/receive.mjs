// How many messages per second one Node process receives through the client over the
// WebSocket gateway, in the JSON and the binary mode, against a bare WebSocket that
// only counts its messages (the floor Node's WebSocket sets). The publisher is not
// the client: it writes pre-encoded Publish frames to the broker's TCP port from
// another process, far faster than any receiver here takes them, so what is measured
// is the receiving side. Each round runs every mode once, in turn; the medians are
// printed as a markdown table. Compare with `rtc-bench fanout --transport ws
// --subscribers 1` against the same broker (docs/benchmarks.md, "client-js").
//
//   node --experimental-websocket bench/receive.mjs --http 127.0.0.1:7401 --tcp 127.0.0.1:7400 \
//        [--count 200000] [--payload 128] [--rounds 3]
import { fork } from "node:child_process";
import { connect } from "node:net";
import { parseArgs } from "node:util";
import { Client } from "../dist/index.js";
import { protoCodec } from "../dist/proto.js";

const { values: args } = parseArgs({
  options: {
    http: { type: "string", default: "127.0.0.1:7401" },
    tcp: { type: "string", default: "127.0.0.1:7400" },
    count: { type: "string", default: "200000" },
    payload: { type: "string", default: "128" },
    rounds: { type: "string", default: "3" },
    publish: { type: "string" },
  },
});
const count = Number(args.count);
const payload = "x".repeat(Number(args.payload));

/** A length-prefixed binary frame for the TCP port. */
function framed(frame) {
  const body = protoCodec.encode(frame);
  const out = new Uint8Array(4 + body.length);
  new DataView(out.buffer).setUint32(0, body.length);
  out.set(body, 4);
  return out;
}

if (args.publish) {
  // The publisher process: Hello, then `count` fire-and-forget publishes, in writes of
  // 1 000 frames, each waiting for the socket to drain.
  const [host, port] = [args.tcp.slice(0, args.tcp.lastIndexOf(":")), Number(args.tcp.slice(args.tcp.lastIndexOf(":") + 1))];
  const sock = connect(port, host);
  await new Promise((r) => sock.once("connect", r));
  sock.write(framed({ hello: { protocol_version: 1, client_name: "bench-publisher" } }));
  const one = framed({ publish: { topic: args.publish, payload } });
  const chunk = Buffer.concat(Array.from({ length: 1000 }, () => one));
  for (let sent = 0; sent < count; sent += 1000) {
    const n = Math.min(1000, count - sent);
    const ok = sock.write(n === 1000 ? chunk : chunk.subarray(0, n * one.length));
    if (!ok) await new Promise((r) => sock.once("drain", r));
  }
  sock.end();
  await new Promise((r) => sock.once("close", r));
  process.exit(0);
}

const url = `ws://${args.http}/v1/ws`;

/** Subscribes with `mode`, resolves with a function that waits for `count` messages. */
async function receiver(mode, topic) {
  let got = 0;
  let first = 0;
  let resolveDone;
  const done = new Promise((r) => (resolveDone = r));
  const seen = () => {
    if (got === 0) first = performance.now();
    if (++got === count) resolveDone();
  };
  if (mode === "bare") {
    // A raw WebSocket on the binary mode: Hello, Subscribe, then count every message
    // after the SubAck without decoding it.
    const ws = new WebSocket(url, "rtc.v1.proto");
    ws.binaryType = "arraybuffer";
    await new Promise((r) => (ws.onopen = r));
    let acked = false;
    let answers = 0;
    const subAcked = new Promise((r) => {
      ws.onmessage = () => {
        if (acked) return seen();
        // Welcome, then the SubAck (req_id 1).
        if (++answers === 2) {
          acked = true;
          r();
        }
      };
    });
    ws.send(protoCodec.encode({ hello: { protocol_version: 1 } }));
    ws.send(protoCodec.encode({ subscribe: { req_id: 1, sub_id: 1, pattern: topic } }));
    await subAcked;
    return { done, close: () => ws.close(), result: () => [got, first] };
  }
  const c = await Client.connect(url, mode === "proto" ? { codec: protoCodec } : {});
  const sub = await c.subscribe(topic);
  sub.onMessage((m) => {
    void m.text; // what an app reads
    seen();
  });
  return { done, close: () => c.close(), result: () => [got, first] };
}

async function round(mode, n) {
  const topic = `bench.js.${mode}.${n}`;
  await fetch(`http://${args.http}/v1/admin/topics/${topic}`, { method: "PUT", headers: { "Content-Type": "application/json" }, body: '{"ephemeral": true}' });
  const r = await receiver(mode, topic);
  const publisher = fork(new URL(import.meta.url).pathname, ["--tcp", args.tcp, "--count", args.count, "--payload", args.payload, "--publish", topic]);
  let timer;
  await Promise.race([r.done, new Promise((res) => (timer = setTimeout(res, 120_000)))]);
  clearTimeout(timer);
  const [got, first] = r.result();
  const secs = (performance.now() - first) / 1000;
  await new Promise((res) => (publisher.exitCode !== null ? res() : publisher.once("exit", res)));
  await r.close();
  if (got !== count) throw new Error(`${mode}: received ${got} of ${count}`);
  return got / secs;
}

const modes = ["bare", "json", "proto"];
const figures = Object.fromEntries(modes.map((m) => [m, []]));
for (let n = 0; n < Number(args.rounds); n++) {
  for (const mode of modes) figures[mode].push(await round(mode, n));
}
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
console.log(`| receiver (one Node ${process.version} process) | payload B | received msgs/s (median of ${args.rounds}) | rounds |`);
console.log("|---|---:|---:|---|");
for (const mode of modes) {
  const label = { bare: "bare WebSocket, counting only", json: "rtc-client, JSON mode", proto: "rtc-client, binary mode" }[mode];
  console.log(`| ${label} | ${args.payload} | ${Math.round(median(figures[mode]))} | ${figures[mode].map((f) => Math.round(f)).join(", ")} |`);
}
process.exit(0);
