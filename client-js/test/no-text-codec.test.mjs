// The client where the host has no TextEncoder / TextDecoder (React Native's Hermes
// until recently): a process that removes both before loading the client publishes
// and reads back text and bytes in the JSON mode, against the real broker.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { fileURLToPath } from "node:url";
import { brokerForTests } from "./broker.mjs";

const broker = brokerForTests();

test("text and bytes travel without the host's TextEncoder and TextDecoder", async () => {
  const script = fileURLToPath(new URL("./no-text-codec.mjs", import.meta.url));
  const { stdout } = await promisify(execFile)(process.execPath, ["--experimental-websocket", script, broker.url], { timeout: 60000 });
  const got = JSON.parse(stdout.trim().split("\n").pop());
  const want = [
    ["ğüş 😀", [...new TextEncoder().encode("ğüş 😀")]],
    ["\u0000\ufffd", [0, 255]],
  ];
  assert.deepEqual(got, { json: want });
});
