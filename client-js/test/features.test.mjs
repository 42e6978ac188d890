// The client against the real broker: publish and subscribe, replay, binary payloads,
// durable consumers, request-reply, presence, topic info and refusals, in both of the
// gateway's modes (JSON, and binary protobuf through protoCodec).
import { test } from "node:test";
import assert from "node:assert/strict";
import { Client, RtcError } from "../dist/index.js";
import { protoCodec } from "../dist/proto.js";
import { brokerForTests, take, until } from "./broker.mjs";

const broker = brokerForTests();

for (const [mode, opts, p] of [["json", {}, "js"], ["proto", { codec: protoCodec }, "jsb"]]) {
  test(`${mode}: publish and subscribe, live and acknowledged`, async () => {
    const c = await Client.connect(broker.url, opts);
    assert.equal(c.state, "connected");
    assert.equal(c.transport, "websocket");
    assert.equal(c.protocol, mode === "json" ? "rtc.v1.json" : "rtc.v1.proto", "the subprotocol the broker chose");
    const sub = await c.subscribe(`${p}.live.>`);
    const ack = await c.publish(`${p}.live.a`, "hello");
    assert.deepEqual(ack, { seq: 1, duplicate: false });
    const again = await c.publish(`${p}.live.a`, "hello", { msgId: "fixed" });
    const dup = await c.publish(`${p}.live.a`, "hello", { msgId: "fixed" });
    assert.deepEqual(dup, { seq: again.seq, duplicate: true }, "the same message ID is stored once");
    const [m1, m2] = await take(sub, 2);
    assert.equal(m1.text, "hello");
    assert.equal(m1.topic, `${p}.live.a`);
    assert.equal(m1.seq, 1);
    assert.notEqual(m1.epoch, 0);
    assert.equal(m2.seq, 2);
    await c.close();
    assert.equal(c.state, "closed");
  });

  test(`${mode}: replay from a start position, and bytes that are not UTF-8`, async () => {
    const c = await Client.connect(broker.url, opts);
    for (const s of ["one", "two", "three"]) await c.publish(`${p}.replay`, s);
    await c.publish(`${p}.replay`, new Uint8Array([0, 255, 1]));
    const all = await take(await c.subscribe(`${p}.replay`, { start: "first" }), 4);
    assert.deepEqual(all.slice(0, 3).map((m) => m.text), ["one", "two", "three"]);
    assert.deepEqual([...all[3].bytes], [0, 255, 1]);
    const fromTwo = await take(await c.subscribe(`${p}.replay`, { start: { seq: 2, epoch: all[0].epoch } }), 1);
    assert.equal(fromTwo[0].text, "two");
    await assert.rejects(c.subscribe(`${p}.replay`, { start: { seq: 1, epoch: all[0].epoch + 1000 } }), (e) => e instanceof RtcError && e.code === "UNRECOVERABLE_POSITION");
    await c.close();
  });

  test(`${mode}: a durable consumer acks, nacks and gets a redelivery`, async () => {
    const c = await Client.connect(broker.url, opts);
    for (let i = 1; i <= 3; i++) await c.publish(`${p}.jobs`, `job${i}`);
    const sub = await c.subscribe(`${p}.jobs`, { consumer: { name: "w", ackWaitMs: 60000 } });
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

  test(`${mode}: request-reply, and no responders`, async () => {
    const server = await Client.connect(broker.url, opts);
    const responder = await server.subscribe(`${p}.svc.upper`);
    responder.onMessage((m) => server.reply(m, m.text.toUpperCase()));
    const c = await Client.connect(broker.url, opts);
    const r = await c.request(`${p}.svc.upper`, "hi", { timeoutMs: 5000 });
    assert.equal(r.payload.text, "HI");
    await assert.rejects(c.request(`${p}.svc.nobody`, "x"), (e) => e.code === "NO_RESPONDERS");
    await c.close();
    await server.close();
  });

  test(`${mode}: presence: members, join and leave events, a throttled typing state`, async () => {
    const watcher = await Client.connect(broker.url, opts);
    const events = [];
    watcher.onPresence((e) => events.push(e));
    await watcher.subscribe(`${p}.room`, { presence: { info: { name: "W" }, events: true } });
    const ana = await Client.connect(broker.url, opts);
    await ana.subscribe(`${p}.room`, { presence: { info: { name: "Ana" } } });
    await until(() => events.some((e) => e.kind === "join"), 5000, "a join event");
    const info = await watcher.presence(`${p}.room`);
    assert.equal(info.members, 2);
    assert.deepEqual(info.list.map((m) => JSON.parse(m.info).name).sort(), ["Ana", "W"]);
    const typing = ana.typing(`${p}.room`, { everyMs: 10000, ttlMs: 5000 });
    typing.typing();
    typing.typing(); // throttled: one update
    await until(() => events.some((e) => e.kind === "update" && e.member?.state.typing === "1"), 5000, "the typing update");
    await ana.close();
    await until(() => events.some((e) => e.kind === "leave"), 5000, "a leave event");
    await watcher.close();
  });

  test(`${mode}: topic info and a refused publish`, async () => {
    const c = await Client.connect(broker.url, opts);
    await c.publish(`${p}.info`, "x");
    const info = await c.topicInfo(`${p}.info`);
    assert.equal(info.messages, 1);
    await assert.rejects(c.publish("$bad", "x"), (e) => e.code === "INVALID_TOPIC");
    assert.equal(c.pending, 0, "a refused publish leaves the outbox");
    await c.close();
  });
}
