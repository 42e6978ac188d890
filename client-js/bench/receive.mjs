// How many messages per second one Node process receives through the client over the
// WebSocket gateway (JSON mode): a publisher process (this script with --publish)
// sends fire-and-forget publishes of PAYLOAD bytes to an ephemeral topic as fast as it
// can, and this process counts what its subscription delivers between the first and
// the last message. Compare with `rtc-bench fanout --transport ws` against the same
// broker (docs/benchmarks.md, "client-js").
//
//   node --experimental-websocket bench/receive.mjs ws://127.0.0.1:7401/v1/ws [COUNT] [PAYLOAD]
import { fork } from "node:child_process";
import { Client } from "../dist/index.js";

const [url = "ws://127.0.0.1:7401/v1/ws", countArg = "200000", sizeArg = "128", role] = process.argv.slice(2);
const count = Number(countArg);
const payload = "x".repeat(Number(sizeArg));
const topic = "bench.js";

if (role === "--publish") {
  const c = await Client.connect(url);
  for (let i = 0; i < count; i++) {
    c.publishNoAck(topic, payload);
    // Let the socket drain now and then, so the publisher's own buffer stays small.
    if (i % 1000 === 999) await new Promise((r) => setImmediate(r));
  }
  await c.topicInfo(topic).catch(() => {}); // a round trip: everything before it was sent
  await c.close();
  process.exit(0);
}

// The topic is ephemeral: live fan-out, as rtc-bench fanout measures.
const http = url.replace(/^ws/, "http").replace(/\/v1\/ws$/, "");
await fetch(`${http}/v1/admin/topics/${topic}`, { method: "PUT", headers: { "Content-Type": "application/json" }, body: '{"ephemeral": true}' });
const c = await Client.connect(url);
const sub = await c.subscribe(topic);
let got = 0;
let first = 0;
const done = new Promise((resolve) => {
  sub.onMessage(() => {
    if (got === 0) first = performance.now();
    if (++got === count) resolve();
  });
});
const publisher = fork(new URL(import.meta.url).pathname, [url, countArg, sizeArg, "--publish"], { execArgv: ["--experimental-websocket"] });
const timeout = new Promise((resolve) => setTimeout(resolve, 120_000));
await Promise.race([done, timeout]);
const secs = (performance.now() - first) / 1000;
console.log(JSON.stringify({ received: got, of: count, payload: Number(sizeArg), seconds: +secs.toFixed(3), msgs_per_s: Math.round(got / secs) }));
publisher.kill();
await c.close();
process.exit(0);
