// Run by no-text-codec.test.mjs: the client on a host without TextEncoder and
// TextDecoder, as React Native's Hermes was, in the JSON mode (the binary mode's
// protobuf-es needs them: such a host installs a polyfill). Prints what it received.
// Node's own WebSocket (undici) needs them: it is loaded first, then they go.
const WebSocket = globalThis.WebSocket;
delete globalThis.TextEncoder;
delete globalThis.TextDecoder;
const url = process.argv[2];
const { Client } = await import("../dist/index.js");
const out = {};
for (const [mode, opts] of [["json", { WebSocket }]]) {
  const c = await Client.connect(url, opts);
  const topic = `hermes.${mode}`;
  await c.publish(topic, "ğüş 😀");
  await c.publish(topic, new Uint8Array([0, 255]));
  const sub = await c.subscribe(topic, { start: "first" });
  const got = [];
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`only ${got.length} messages`)), 10000);
    sub.onMessage((m) => {
      got.push([m.text, [...m.bytes]]);
      if (got.length === 2) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  out[mode] = got;
  await c.close();
}
console.log(JSON.stringify(out));
process.exit(0);
