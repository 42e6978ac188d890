// The client against the real broker: publish and subscribe, replay, binary payloads,
// durable consumers, request-reply, presence, topic info and refusals.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { Client, RtcError } from "../dist/index.js";
import { startBroker, take, until } from "./broker.mjs";

let broker;
before(async () => {
  broker = await startBroker();
});
after(async () => {
  await broker.stop();
});

test("publish and subscribe, live and acknowledged", async () => {
  const c = await Client.connect(broker.url);
  assert.equal(c.state, "connected");
  assert.equal(c.transport, "websocket");
  const sub = await c.subscribe("js.live.>");
  const ack = await c.publish("js.live.a", "hello");
  assert.deepEqual(ack, { seq: 1, duplicate: false });
  const again = await c.publish("js.live.a", "hello", { msgId: "fixed" });
  const dup = await c.publish("js.live.a", "hello", { msgId: "fixed" });
  assert.deepEqual(dup, { seq: again.seq, duplicate: true }, "the same message ID is stored once");
  const [m1, m2] = await take(sub, 2);
  assert.equal(m1.text, "hello");
  assert.equal(m1.topic, "js.live.a");
  assert.equal(m1.seq, 1);
  assert.notEqual(m1.epoch, 0);
  assert.equal(m2.seq, 2);
  await c.close();
  assert.equal(c.state, "closed");
});

test("replay from a start position, and bytes that are not UTF-8", async () => {
  const c = await Client.connect(broker.url);
  for (const s of ["one", "two", "three"]) await c.publish("js.replay", s);
  await c.publish("js.replay", new Uint8Array([0, 255, 1]));
  const all = await take(await c.subscribe("js.replay", { start: "first" }), 4);
  assert.deepEqual(all.slice(0, 3).map((m) => m.text), ["one", "two", "three"]);
  assert.deepEqual([...all[3].bytes], [0, 255, 1]);
  const fromTwo = await take(await c.subscribe("js.replay", { start: { seq: 2, epoch: all[0].epoch } }), 1);
  assert.equal(fromTwo[0].text, "two");
  await assert.rejects(c.subscribe("js.replay", { start: { seq: 1, epoch: all[0].epoch + 1000 } }), (e) => e instanceof RtcError && e.code === "UNRECOVERABLE_POSITION");
  await c.close();
});

test("a durable consumer acks, nacks and gets a redelivery", async () => {
  const c = await Client.connect(broker.url);
  for (let i = 1; i <= 3; i++) await c.publish("js.jobs", `job${i}`);
  const sub = await c.subscribe("js.jobs", { consumer: { name: "w", ackWaitMs: 60000 } });
  const [a, b, d] = await take(sub, 3);
  await a.ack();
  await b.nack();
  await d.ack();
  const [again] = await take(sub, 1);
  assert.equal(again.text, "job2");
  assert.equal(again.deliveryCount, 2);
  await again.ack();
  await c.close();
});

test("request-reply, and no responders", async () => {
  const server = await Client.connect(broker.url);
  const responder = await server.subscribe("js.svc.upper");
  responder.onMessage((m) => server.reply(m, m.text.toUpperCase()));
  const c = await Client.connect(broker.url);
  const r = await c.request("js.svc.upper", "hi", { timeoutMs: 5000 });
  assert.equal(r.payload.text, "HI");
  await assert.rejects(c.request("js.svc.nobody", "x"), (e) => e.code === "NO_RESPONDERS");
  await c.close();
  await server.close();
});

test("presence: members, join and leave events, a throttled typing state", async () => {
  const watcher = await Client.connect(broker.url);
  const events = [];
  watcher.onPresence((e) => events.push(e));
  await watcher.subscribe("js.room", { presence: { info: { name: "W" }, events: true } });
  const ana = await Client.connect(broker.url);
  await ana.subscribe("js.room", { presence: { info: { name: "Ana" } } });
  await until(() => events.some((e) => e.kind === "join"), 5000, "a join event");
  const info = await watcher.presence("js.room");
  assert.equal(info.members, 2);
  assert.deepEqual(info.list.map((m) => JSON.parse(m.info).name).sort(), ["Ana", "W"]);
  const typing = ana.typing("js.room", { everyMs: 10000, ttlMs: 5000 });
  typing.typing();
  typing.typing(); // throttled: one update
  await until(() => events.some((e) => e.kind === "update" && e.member?.state.typing === "1"), 5000, "the typing update");
  await ana.close();
  await until(() => events.some((e) => e.kind === "leave"), 5000, "a leave event");
  await watcher.close();
});

test("topic info and a refused publish", async () => {
  const c = await Client.connect(broker.url);
  await c.publish("js.info", "x");
  const info = await c.topicInfo("js.info");
  assert.equal(info.messages, 1);
  await assert.rejects(c.publish("$bad", "x"), (e) => e.code === "INVALID_TOPIC");
  assert.equal(c.pending, 0, "a refused publish leaves the outbox");
  await c.close();
});
