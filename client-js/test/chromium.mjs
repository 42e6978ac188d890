// Headless Chromium for the browser test: Debian's package (installed by
// scripts/ensure-chromium.sh when missing), a profile of its own, and a minimal Chrome
// DevTools Protocol client over the page's WebSocket: evaluate an expression (awaiting
// its promise) and reload the page.
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));

/** The browser's path; installs it when missing (throws when it cannot). */
export function chromium() {
  return execFileSync("bash", [join(here, "../../scripts/ensure-chromium.sh")], { stdio: ["ignore", "pipe", "inherit"] })
    .toString()
    .trim();
}

/** Opens `url` in headless Chromium; resolves with { eval, reload, close } once DevTools answers. */
export async function openPage(url) {
  const profile = mkdtempSync(join(tmpdir(), "rtc-js-chromium-"));
  // The flags the machine notes give: no sandbox as root, and no background traffic to
  // hosts a closed network refuses.
  const child = spawn(
    chromium(),
    ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--remote-debugging-port=0", `--user-data-dir=${profile}`, url],
    // A process group of its own, so that stopping it stops its renderers too (they
    // would go on writing to the profile as it is removed).
    { stdio: "ignore", detached: true },
  );
  const exited = new Promise((r) => child.once("exit", r));
  const stop = async () => {
    try {
      process.kill(-child.pid, "SIGKILL");
    } catch {
      // Already gone.
    }
    await exited;
    rmSync(profile, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
  };
  try {
    const port = await poll(() => readFileSync(join(profile, "DevToolsActivePort"), "utf8").split("\n")[0], 60000, "DevToolsActivePort");
    const target = await poll(async () => {
      const list = await (await fetch(`http://127.0.0.1:${port}/json/list`)).json();
      return list.find((t) => t.type === "page" && t.url.startsWith(url.split("?")[0]));
    }, 30000, "the page in DevTools");
    const ws = new WebSocket(target.webSocketDebuggerUrl);
    await new Promise((resolve, reject) => {
      ws.onopen = resolve;
      ws.onerror = () => reject(new Error("cannot open the DevTools WebSocket"));
    });
    let nextId = 1;
    const waiting = new Map();
    ws.onmessage = (ev) => {
      const msg = JSON.parse(ev.data);
      const w = waiting.get(msg.id);
      if (!w) return;
      waiting.delete(msg.id);
      if (msg.error) w.reject(new Error(`${JSON.stringify(msg.error)}`));
      else w.resolve(msg.result);
    };
    const call = (method, params = {}) =>
      new Promise((resolve, reject) => {
        const id = nextId++;
        waiting.set(id, { resolve, reject });
        ws.send(JSON.stringify({ id, method, params }));
      });
    const page = {
      /** The value of `expression` (a promise is awaited); throws what the page threw. */
      async eval(expression) {
        const r = await call("Runtime.evaluate", { expression, awaitPromise: true, returnByValue: true });
        if (r.exceptionDetails) throw new Error(`the page threw: ${r.exceptionDetails.exception?.description ?? r.exceptionDetails.text}`);
        return r.result.value;
      },
      /** Waits until `expression` is true in the page. */
      until(expression, ms = 30000) {
        return poll(async () => (await page.eval(`!!(${expression})`).catch(() => false)) || undefined, ms, expression);
      },
      /** Reloads the page and waits for its new document to be ready. */
      async reload() {
        await page.eval("window.__before_reload = true");
        await call("Page.reload", { ignoreCache: true });
        await page.until("!window.__before_reload && window.__ready");
      },
      close() {
        ws.close();
        return stop();
      },
    };
    await page.until("window.__ready");
    return page;
  } catch (e) {
    await stop();
    throw e;
  }
}

/** The first defined, non-throwing value of `f()`, within `ms`. */
async function poll(f, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      const v = await f();
      if (v !== undefined && v !== "") return v;
    } catch {
      // Not there yet.
    }
    if (Date.now() > deadline) throw new Error(`${what} did not come within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
