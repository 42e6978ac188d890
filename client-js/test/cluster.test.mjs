// Cluster mode from the JS client, with real parts: a redis-server and two rtc-broker
// processes on it. A client on node A with node B in `servers` loses A to SIGKILL and
// resumes on B: its subscription continues with no gap and no repeat, and its outbox's
// publishes are stored once.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Client } from "../dist/index.js";
import { startBroker, startRedis, take, until } from "./broker.mjs";

test("a client whose node dies resumes on another node with no gap", async () => {
  const redis = await startRedis();
  const a = await startBroker(["--cluster", redis.url]);
  const b = await startBroker(["--cluster", redis.url]);
  const publisher = await Client.connect(b.url);
  const c = await Client.connect(a.url, { servers: [b.url], reconnect: { initialMs: 20, maxMs: 200 } });
  // Every state it passes through, recorded as it happens: the reconnect to B can be
  // quicker than any poll of `c.state` would notice.
  const states = [];
  c.onState((s) => states.push(s));
  const sub = await c.subscribe("cl.orders");
  for (let i = 1; i <= 10; i++) await publisher.publish("cl.orders", `${i}`);
  assert.deepEqual((await take(sub, 10)).map((m) => m.seq), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
  await a.kill();
  await until(() => states.includes("reconnecting"), 5000, "reconnecting");
  for (let i = 11; i <= 20; i++) await publisher.publish("cl.orders", `${i}`);
  await until(() => states.lastIndexOf("connected") > states.indexOf("reconnecting") && c.state === "connected", 10000, "connected to node B");
  // Its own publish through B, and then everything it missed, once and in order.
  const ack = await c.publish("cl.orders", "21");
  assert.equal(ack.seq, 21);
  const rest = await take(sub, 11);
  assert.deepEqual(rest.map((m) => m.seq), [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21]);
  await c.close();
  await publisher.close();
  await b.stop();
  await redis.stop();
});
