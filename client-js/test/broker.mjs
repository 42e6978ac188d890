// Test helpers: the real rtc-broker binary on 127.0.0.1 ports of its own (its path in
// RTC_BROKER_BIN, else the workspace's debug build), and a TCP proxy that can cut every
// connection through it.
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer, connect } from "node:net";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { before, after } from "node:test";

const here = dirname(fileURLToPath(import.meta.url));
export const BROKER_BIN = process.env.RTC_BROKER_BIN ?? join(here, "../../target/debug/rtc-broker");

/** Starts a broker; resolves with { http, tcp, url, stop() } once it listens. */
export async function startBroker(extra = []) {
  const dir = mkdtempSync(join(tmpdir(), "rtc-js-"));
  const child = spawn(BROKER_BIN, ["--tcp", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data-dir", join(dir, "data"), "--log", "warn", ...extra], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  child.stderr.on("data", (d) => (stderr += d));
  const addrs = await new Promise((resolve, reject) => {
    let out = "";
    const found = {};
    const timer = setTimeout(() => reject(new Error(`the broker did not start: ${stderr}`)), 20000);
    child.stdout.on("data", (d) => {
      out += d;
      for (const line of out.split("\n")) {
        const m = line.match(/^listening (tcp|http) (\S+)/);
        if (m) found[m[1]] = m[2];
      }
      if (found.tcp && found.http) {
        clearTimeout(timer);
        resolve(found);
      }
    });
    child.on("exit", (code) => reject(new Error(`the broker exited (${code}): ${stderr}`)));
  });
  return {
    http: addrs.http,
    tcp: addrs.tcp,
    url: `ws://${addrs.http}/v1/ws`,
    async stop() {
      child.kill("SIGTERM");
      await new Promise((r) => (child.exitCode !== null ? r() : child.on("exit", r)));
      rmSync(dir, { recursive: true, force: true });
    },
    /** SIGKILL, as a crash would. */
    async kill() {
      child.kill("SIGKILL");
      await new Promise((r) => (child.exitCode !== null || child.signalCode !== null ? r() : child.on("exit", r)));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A redis-server on a free loopback port with nothing saved, installed first by the
 *  project's scripts/ensure-redis.sh when missing; resolves with { url, stop() }. */
export async function startRedis() {
  const bin = execFileSync("bash", [join(here, "../../scripts/ensure-redis.sh")], { encoding: "utf8" }).trim();
  const port = await new Promise((resolve) => {
    const probe = createServer();
    probe.listen(0, "127.0.0.1", () => {
      const p = probe.address().port;
      probe.close(() => resolve(p));
    });
  });
  const dir = mkdtempSync(join(tmpdir(), "rtc-js-redis-"));
  const child = spawn(bin, ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  await new Promise((resolve, reject) => {
    let out = "";
    const timer = setTimeout(() => reject(new Error(`redis-server did not start: ${out}`)), 20000);
    child.stdout.on("data", (d) => {
      out += d;
      if (out.includes("Ready to accept connections")) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.on("exit", (code) => reject(new Error(`redis-server exited (${code}): ${out}`)));
  });
  return {
    url: `redis://127.0.0.1:${port}`,
    async stop() {
      child.kill("SIGKILL");
      await new Promise((r) => (child.exitCode !== null || child.signalCode !== null ? r() : child.on("exit", r)));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A broker for this file's tests: started before them (with the arguments `extra()`
 *  gives), stopped after them. Its `url`, `http` and `tcp` are read once it runs. */
export function brokerForTests(extra = () => []) {
  let broker;
  before(async () => {
    broker = await startBroker(extra());
  });
  after(async () => {
    await broker?.stop();
  });
  return {
    get url() {
      return broker.url;
    },
    get http() {
      return broker.http;
    },
    get tcp() {
      return broker.tcp;
    },
  };
}

/** A TCP proxy to `target` ("host:port"): `cut()` closes every connection through it;
 *  `refuse(on)` closes new ones at once; `block({ws, sse})` answers 403 to WebSocket
 *  upgrades and to SSE requests, as a proxy that does not pass them would. */
export async function startProxy(target) {
  const [host, port] = [target.slice(0, target.lastIndexOf(":")), Number(target.slice(target.lastIndexOf(":") + 1))];
  const sockets = new Set();
  let refusing = false;
  let blocked = { ws: false, sse: false };
  const server = createServer((client) => {
    if (refusing) return client.destroy();
    client.on("error", () => {});
    client.once("data", (first) => {
      const head = first.toString("latin1");
      if ((blocked.ws && /^upgrade:\s*websocket/im.test(head)) || (blocked.sse && head.startsWith("GET /v1/sse"))) {
        client.end("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
      }
      const upstream = connect(port, host);
      for (const s of [client, upstream]) {
        sockets.add(s);
        s.on("close", () => sockets.delete(s));
        s.on("error", () => {});
      }
      upstream.write(first);
      client.pipe(upstream);
      upstream.pipe(client);
      client.on("close", () => upstream.destroy());
      upstream.on("close", () => client.destroy());
    });
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const addr = `127.0.0.1:${server.address().port}`;
  return {
    addr,
    url: `ws://${addr}/v1/ws`,
    cut() {
      for (const s of sockets) s.destroy();
    },
    refuse(on) {
      refusing = on;
      if (on) this.cut();
    },
    block(what) {
      blocked = { ws: false, sse: false, ...what };
    },
    close() {
      this.cut();
      return new Promise((r) => server.close(r));
    },
  };
}

/** Waits until `f()` is true, for at most `ms`. */
export async function until(f, ms = 10000, what = "the condition") {
  const deadline = Date.now() + ms;
  while (!(await f())) {
    if (Date.now() > deadline) throw new Error(`${what} did not come within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The next `n` messages of a subscription, within `ms`. */
export async function take(sub, n, ms = 10000) {
  const out = [];
  const it = sub[Symbol.asyncIterator]();
  const deadline = Date.now() + ms;
  while (out.length < n) {
    const left = deadline - Date.now();
    if (left <= 0) throw new Error(`only ${out.length} of ${n} messages within ${ms} ms`);
    let timer;
    const r = await Promise.race([it.next(), new Promise((_, rej) => (timer = setTimeout(() => rej(new Error(`only ${out.length} of ${n} messages within ${ms} ms`)), left)))]);
    clearTimeout(timer);
    if (r.done) throw new Error(`the subscription ended after ${out.length} messages`);
    out.push(r.value);
  }
  return out;
}
