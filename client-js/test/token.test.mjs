// Token refresh before expiry: against a broker that takes HS256 JWTs, a client with a
// tokenProvider and tokens of 4 s gets a new token before each one expires and hands it
// to the connection (AuthRefresh), so the broker never closes it: it stays connected,
// on its first connection, well past the first token's expiry.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Client } from "../dist/index.js";
import { jwtExpiry } from "../dist/client.js";
import { brokerForTests, take, until } from "./broker.mjs";

const SECRET = "client-js token test secret, 32 bytes or more";
const b64url = (v) => Buffer.from(typeof v === "string" ? v : JSON.stringify(v)).toString("base64url");

/** An HS256 JWT for user `sub`, valid for `seconds`. */
function jwt(sub, seconds) {
  const head = b64url({ alg: "HS256", typ: "JWT" });
  const claims = b64url({ sub, exp: Math.floor(Date.now() / 1000) + seconds, publish: ["tok.>"], subscribe: ["tok.>"] });
  const sig = createHmac("sha256", SECRET).update(`${head}.${claims}`).digest("base64url");
  return `${head}.${claims}.${sig}`;
}

const broker = brokerForTests(() => {
  const config = join(mkdtempSync(join(tmpdir(), "rtc-js-jwt-")), "rtc.toml");
  writeFileSync(config, `[jwt]\nhs256_secret = "${SECRET}"\n`);
  return ["--config", config];
});

test("a JWT's expiry is read from its claims", () => {
  const t = jwt("ana", 60);
  assert.ok(Math.abs(jwtExpiry(t) - (Date.now() + 60_000)) < 2000);
  assert.equal(jwtExpiry("an opaque token"), 0);
});

test("the connection gets a fresh token before each expires, and is never closed for it", async () => {
  let issued = 0;
  const first = jwt("ana", 4);
  const c = await Client.connect(broker.url, {
    token: first,
    tokenProvider: () => {
      issued++;
      return jwt("ana", 4);
    },
  });
  const states = [];
  c.onState((s) => states.push(s));
  const sub = await c.subscribe("tok.x");
  // The first token expires after 4 s (the broker allows 5 s of skew): three refreshes
  // take the connection past 9 s.
  await until(() => issued >= 3, 20000, "three refreshes");
  await until(() => Date.now() > jwtExpiry(first) + 6000, 20000, "past the first token's expiry");
  assert.equal((await c.publish("tok.x", "still here")).seq, 1);
  assert.equal((await take(sub, 1))[0].text, "still here");
  assert.deepEqual(states, [], "never reconnected");
  assert.equal(c.state, "connected");
  await c.close();
});
