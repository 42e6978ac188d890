// Reliability through a TCP proxy that cuts the link: states, subscriptions restored
// without gap or repeat, every acknowledged publish stored exactly once, and the outbox
// kept across a restart of the application. The load test runs in both of the
// gateway's modes.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Client, MemoryStorage } from "../dist/index.js";
import { protoCodec } from "../dist/proto.js";
import { brokerForTests, startProxy, take, until } from "./broker.mjs";

const fast = { reconnect: { initialMs: 20, maxMs: 200 } };
const broker = brokerForTests();

test("states, and a subscription that resumes without gap or repeat", async () => {
  const proxy = await startProxy(broker.http);
  const publisher = await Client.connect(broker.url);
  const c = await Client.connect(proxy.url, fast);
  const states = [];
  c.onState((s) => states.push(s));
  const sub = await c.subscribe("rel.x");
  for (let i = 1; i <= 5; i++) await publisher.publish("rel.x", `${i}`);
  assert.deepEqual((await take(sub, 5)).map((m) => m.seq), [1, 2, 3, 4, 5]);
  proxy.refuse(true);
  await until(() => c.state === "reconnecting", 5000, "reconnecting");
  for (let i = 6; i <= 10; i++) await publisher.publish("rel.x", `${i}`);
  proxy.refuse(false);
  await until(() => c.state === "connected", 10000, "connected again");
  await publisher.publish("rel.x", "11");
  assert.deepEqual((await take(sub, 6)).map((m) => m.seq), [6, 7, 8, 9, 10, 11]);
  assert.deepEqual(states.slice(0, 2), ["reconnecting", "connected"]);
  await c.close();
  await publisher.close();
  await proxy.close();
});

for (const [mode, opts] of [["json", {}], ["proto", { codec: protoCodec }]]) {
  test(`${mode}: 5 000 acknowledged publishes through a link cut again and again: each stored once, each processed`, async () => {
    const N = 5000;
    const topic = `rel.load.${mode}`;
    const pubProxy = await startProxy(broker.http);
    const subProxy = await startProxy(broker.http);
    const publisher = await Client.connect(pubProxy.url, { ...fast, ...opts });
    const worker = await Client.connect(subProxy.url, { ...fast, ...opts });
    const seen = new Set();
    let deliveries = 0;
    const sub = await worker.subscribe(topic, { consumer: { name: "w", ackWaitMs: 2000 }, start: "first" });
    sub.onMessage((m) => {
      deliveries++;
      seen.add(m.text);
      m.ack().catch(() => {}); // a lost ack means a redelivery, which the set absorbs
    });
    let cuts = 0;
    const cutter = setInterval(() => {
      (cuts % 2 ? subProxy : pubProxy).cut();
      cuts++;
    }, 150);
    const window = 200;
    for (let i = 0; i < N; i += window) {
      const batch = [];
      for (let j = i; j < Math.min(N, i + window); j++) batch.push(publisher.publish(topic, `m${j}`));
      await Promise.all(batch);
    }
    clearInterval(cutter);
    await until(() => seen.size === N, 60000, `all ${N} processed (have ${seen.size})`);
    const info = await publisher.topicInfo(topic);
    assert.equal(info.messages, N, "each stored exactly once");
    assert.equal(info.last_seq, N, "no seq used twice");
    assert.ok(cuts >= 5, `the link was cut ${cuts} times`);
    console.log(`# ${mode}: ${cuts} cuts; ${deliveries} deliveries for ${N} messages`);
    await publisher.close();
    await worker.close();
    await pubProxy.close();
    await subProxy.close();
  });
}

test("the outbox survives a restart of the application", async () => {
  const proxy = await startProxy(broker.http);
  const storage = new MemoryStorage();
  const first = await Client.connect(proxy.url, { ...fast, storage, outboxName: "app" });
  proxy.refuse(true);
  await until(() => first.state === "reconnecting", 5000, "reconnecting");
  const sent = ["a", "b", "c"].map((s) => first.publish("rel.outbox", s, { msgId: `out-${s}` }).catch((e) => e));
  assert.equal(first.pending, 3);
  await first.outboxFlushed();
  assert.ok(storage.getItem("rtc-outbox:app"), "written to the storage");
  // The application stops with the publishes unacknowledged...
  await first.close();
  for (const e of await Promise.all(sent)) assert.equal(e.code, "CLOSED");
  // ... and starts again with the same storage: they are sent and stored once.
  proxy.refuse(false);
  const second = await Client.connect(proxy.url, { ...fast, storage, outboxName: "app" });
  await until(() => second.pending === 0, 10000, "the outbox sent");
  const info = await second.topicInfo("rel.outbox");
  assert.equal(info.messages, 3);
  await second.outboxFlushed();
  assert.equal(storage.getItem("rtc-outbox:app"), null, "nothing left to send");
  await second.close();
  await proxy.close();
});
