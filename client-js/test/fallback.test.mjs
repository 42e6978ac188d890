// Transport fallback: a proxy that stops passing WebSocket upgrades, then SSE. The
// client goes on over SSE with HTTP publish, then over long-polling, with no change to
// the app's code and no message lost or repeated across a switch.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Client } from "../dist/index.js";
import { protoCodec } from "../dist/proto.js";
import { brokerForTests, startProxy, take, until } from "./broker.mjs";

const broker = brokerForTests();

test("WebSocket, then SSE with HTTP publish, then long-polling, nothing lost or repeated", async () => {
  const proxy = await startProxy(broker.http);
  const publisher = await Client.connect(broker.url);
  const c = await Client.connect(proxy.url, { reconnect: { initialMs: 20, maxMs: 200 } });
  assert.equal(c.transport, "websocket");
  const sub = await c.subscribe("fb.>");
  let n = 0;
  const publish = async (k) => {
    for (let i = 0; i < k; i++) await publisher.publish("fb.x", `m${++n}`);
  };
  await publish(3);
  assert.deepEqual((await take(sub, 3)).map((m) => m.text), ["m1", "m2", "m3"]);

  // The proxy stops passing WebSocket upgrades and drops the link.
  proxy.block({ ws: true });
  proxy.cut();
  await publish(3); // while the client switches
  await until(() => c.transport === "sse" && c.state === "connected", 10000, "on SSE");
  const own = await c.publish("fb.x", "from the client over HTTP");
  assert.equal(own.seq, 7);
  await publish(1);
  assert.deepEqual((await take(sub, 5)).map((m) => m.text), ["m4", "m5", "m6", "from the client over HTTP", "m7"]);
  await assert.rejects(c.request("fb.svc", "x"), (e) => e.code === "UNSUPPORTED");

  // Then SSE is blocked too: long-polling.
  proxy.block({ ws: true, sse: true });
  proxy.cut();
  await publish(2);
  await until(() => c.transport === "poll" && c.state === "connected", 15000, "on long-polling");
  await publish(1);
  assert.deepEqual((await take(sub, 3)).map((m) => m.text), ["m8", "m9", "m10"]);
  assert.equal((await c.publish("fb.x", "polled")).seq, 12);
  assert.equal((await take(sub, 1))[0].text, "polled");
  await c.close();
  await publisher.close();
  await proxy.close();
});

// A client on the binary mode falls back the same way: HTTP speaks JSON whatever the codec.
for (const [mode, opts] of [["json", {}], ["proto", { codec: protoCodec }]]) {
  test(`${mode}: over SSE, a long text arrives whole, however the stream is cut into chunks`, async () => {
    const proxy = await startProxy(broker.http);
    proxy.block({ ws: true });
    const c = await Client.connect(proxy.url, { reconnect: { initialMs: 20, maxMs: 200 }, ...opts });
    await until(() => c.transport === "sse" && c.state === "connected", 10000, "on SSE");
    const topic = `fb.long.${mode}`;
    const sub = await c.subscribe(topic);
    // 300 KB of characters of 2 and 4 bytes: the stream's chunks end inside some of them.
    const text = "ğüş😀".repeat(30000);
    const publisher = await Client.connect(broker.url);
    await publisher.publish(topic, text);
    await publisher.publish(topic, "after");
    const [long, after] = await take(sub, 2);
    assert.equal(long.text.length, text.length);
    assert.ok(long.text === text, "the long text unchanged");
    assert.equal(after.text, "after");
    await c.close();
    await publisher.close();
    await proxy.close();
  });
}
