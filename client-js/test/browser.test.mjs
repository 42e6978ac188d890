// The browser builds in headless Chromium: a page (served from an origin of its own,
// which the broker allows) imports dist/rtc-client.browser.js and
// dist/rtc-client-proto.browser.js with plain module imports, and uses them through a
// proxy the test can cut: publish and subscribe in both of the gateway's modes, and an
// outbox kept in IndexedDB across a reload of the page.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { Client } from "../dist/index.js";
import { startBroker, startProxy, take } from "./broker.mjs";
import { openPage } from "./chromium.mjs";

const dist = join(dirname(fileURLToPath(import.meta.url)), "../dist");
const PAGE = `<!doctype html><meta charset="utf-8"><title>rtc-client in a page</title>
<script type="module">
  import * as json from "/rtc-client.browser.js";
  import * as proto from "/rtc-client-proto.browser.js";
  window.rtc = { json, proto };
  window.__ready = true;
</script>`;

let site, broker, proxy, page;
before(async () => {
  site = createServer((req, res) => {
    const file = { "/rtc-client.browser.js": "rtc-client.browser.js", "/rtc-client-proto.browser.js": "rtc-client-proto.browser.js" }[req.url];
    if (file) {
      res.writeHead(200, { "Content-Type": "text/javascript" }).end(readFileSync(join(dist, file)));
    } else if (req.url === "/") {
      res.writeHead(200, { "Content-Type": "text/html; charset=utf-8" }).end(PAGE);
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise((r) => site.listen(0, "127.0.0.1", r));
  const origin = `http://127.0.0.1:${site.address().port}`;
  const config = join(mkdtempSync(join(tmpdir(), "rtc-js-config-")), "rtc.toml");
  writeFileSync(config, `allowed_origins = ["${origin}"]\n`);
  broker = await startBroker(["--config", config]);
  proxy = await startProxy(broker.http);
  page = await openPage(`${origin}/`);
});
after(async () => {
  await page?.close();
  await proxy?.close();
  await broker?.stop();
  await new Promise((r) => site.close(r));
});

test("the browser builds publish and subscribe in the JSON and binary modes", async () => {
  const seen = await page.eval(`(async () => {
    const out = {};
    for (const mode of ["json", "proto"]) {
      const m = rtc[mode];
      const c = await m.Client.connect(${JSON.stringify(proxy.url)}, mode === "proto" ? { codec: m.protoCodec } : {});
      const sub = await c.subscribe("page." + mode, { start: "first" });
      const got = [];
      sub.onMessage((msg) => got.push([msg.seq, msg.text, [...msg.bytes].length]));
      const ack = await c.publish("page." + mode, "from the page ✓");
      await c.publish("page." + mode, new Uint8Array([0, 255]));
      for (let i = 0; i < 500 && got.length < 2; i++) await new Promise((r) => setTimeout(r, 20));
      out[mode] = { protocol: c.protocol, transport: c.transport, ack, got };
      await c.close();
    }
    return out;
  })()`);
  for (const mode of ["json", "proto"]) {
    assert.deepEqual(
      seen[mode],
      {
        protocol: mode === "json" ? "rtc.v1.json" : "rtc.v1.proto",
        transport: "websocket",
        ack: { seq: 1, duplicate: false },
        got: [
          [1, "from the page ✓", 17],
          [2, "\u0000\ufffd", 2],
        ],
      },
      mode,
    );
  }
});

test("an outbox in IndexedDB survives a reload of the page, and is stored once", async () => {
  const url = JSON.stringify(proxy.url);
  const open = `rtc.json.Client.connect(${url}, { storage: new rtc.json.IndexedDbStorage("rtc-test"), outboxName: "page", reconnect: { initialMs: 50, maxMs: 200 } })`;
  assert.equal(await page.eval(`(async () => { window.client = await ${open}; return client.state; })()`), "connected");
  proxy.refuse(true);
  await page.until(`client.state === "reconnecting"`);
  // Published while the link is down: kept in the outbox, written to IndexedDB.
  const pending = await page.eval(`(async () => {
    for (const s of ["a", "b", "c"]) client.publish("page.outbox", s, { msgId: "page-" + s }).catch(() => {});
    await client.outboxFlushed();
    return client.pending;
  })()`);
  assert.equal(pending, 3);
  await page.reload();
  const stored = await page.eval(`new rtc.json.IndexedDbStorage("rtc-test").getItem("rtc-outbox:page")`);
  assert.deepEqual(JSON.parse(stored).map((p) => p.payload), ["a", "b", "c"], "the outbox is in IndexedDB after the reload");
  proxy.refuse(false);
  const after = await page.eval(`(async () => {
    const storage = new rtc.json.IndexedDbStorage("rtc-test");
    const c = await rtc.json.Client.connect(${url}, { storage, outboxName: "page" });
    for (let i = 0; i < 500 && c.pending > 0; i++) await new Promise((r) => setTimeout(r, 20));
    await c.outboxFlushed();
    const left = await storage.getItem("rtc-outbox:page");
    const pending = c.pending;
    await c.close();
    return { pending, left };
  })()`);
  assert.deepEqual(after, { pending: 0, left: null }, "sent, and nothing left to send");
  const reader = await Client.connect(broker.url);
  const info = await reader.topicInfo("page.outbox");
  assert.equal(info.messages, 3, "each stored once");
  const got = await take(await reader.subscribe("page.outbox", { start: "first" }), 3);
  assert.deepEqual(got.map((m) => [m.text, m.msgId]), [["a", "page-a"], ["b", "page-b"], ["c", "page-c"]]);
  await reader.close();
});
