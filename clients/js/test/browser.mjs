// Runs one browser scenario against the package in Debian's headless
// Chromium (driven over CDP by playwright-core; no browser download):
//   node test/browser.mjs <scenario> [key=value ...]
// Prints one line `RESULT {json}` and exits 0 when the scenario's checks
// hold; any failed check exits 1 with the reason. tests/browser.rs runs
// every scenario in the README's test command.
import { chromium } from "playwright-core";
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { isDeepStrictEqual } from "node:util";
import { gzipSync } from "node:zlib";
import { serve } from "./serve.mjs";

const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const STEP_MS = 60_000;
const pkg = resolve(dirname(fileURLToPath(import.meta.url)), "..");

class CheckFailed extends Error {}
function check(condition, message) {
  if (!condition) throw new CheckFailed(message);
}

/** Starts Chromium on `profile` and connects to it; `kill()` ends it with
 * SIGKILL, as a crash or a power cut would. */
async function startChromium(profile) {
  const args = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--remote-debugging-port=0", `--user-data-dir=${profile}`, "about:blank",
  ];
  // Its own process group, so that a kill ends the renderers too.
  const child = spawn(CHROMIUM, args, { stdio: ["ignore", "ignore", "pipe"], detached: true });
  const killAll = () => {
    try {
      process.kill(-child.pid, "SIGKILL");
    } catch {
      // Already gone.
    }
  };
  const endpoint = await new Promise((ok, fail) => {
    let seen = "";
    const timer = setTimeout(() => fail(new Error(`chromium did not start within ${STEP_MS} ms:\n${seen}`)), STEP_MS);
    child.stderr.on("data", (chunk) => {
      seen += chunk;
      const match = /DevTools listening on (ws:\/\/\S+)/.exec(seen);
      if (match) {
        clearTimeout(timer);
        ok(match[1]);
      }
    });
    child.on("exit", (code) => fail(new Error(`chromium exited (${code}) before listening:\n${seen}`)));
  });
  const browser = await chromium.connectOverCDP(endpoint, { timeout: STEP_MS });
  const exited = child.exitCode !== null ? Promise.resolve() : new Promise((ok) => child.on("exit", ok));
  return {
    browser,
    async kill() {
      killAll();
      await exited;
    },
    async close() {
      await browser.close().catch(() => {});
      killAll();
      await exited;
    },
  };
}

/** A page of `context` on the test page, with the package loaded. */
async function openPage(context, base) {
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_MS);
  page.on("pageerror", (err) => console.error(`page error: ${err.message}`));
  await page.goto(`${base}/test/page.html`);
  await page.waitForFunction(() => window.ready === true);
  return page;
}

const scenarios = {
  /** A page writes 1,000 records with no network, reloads, and still has
   * them all, as the same peer, continuing its own sequence. */
  async offline_writes_survive_reload({ chromium: c, base }) {
    const page = await openPage(c.browser.contexts()[0], base);
    const first = await page.evaluate(async () => {
      const db = await pluresdb.open("offline");
      const receipts = [];
      for (let i = 0; i < 1000; i++) receipts.push(await db.put(`rec:${String(i).padStart(4, "0")}`, { i, text: `record ${i}` }));
      return { peerId: db.peerId, last: receipts[999], distinct: new Set(receipts.map((r) => r.op)).size };
    });
    check(first.distinct === 1000, `1,000 writes gave ${first.distinct} distinct operations`);
    check(first.last.op === `${first.peerId}/1000`, `the last write is ${first.last.op}, not ${first.peerId}/1000`);
    await page.reload();
    await page.waitForFunction(() => window.ready === true);
    const after = await page.evaluate(async () => {
      const db = await pluresdb.open("offline");
      const nodes = await db.list("rec:");
      const next = await db.put("rec:next", { i: -1 });
      return { peerId: db.peerId, count: nodes.length, wrong: nodes.filter((n, i) => n.value.i !== i || n.value.text !== `record ${i}`).length, next };
    });
    check(after.peerId === first.peerId, `the reloaded page is ${after.peerId}, not ${first.peerId}`);
    check(after.count === 1000, `after the reload the page has ${after.count} of 1,000 records`);
    check(after.wrong === 0, `${after.wrong} records came back with other values`);
    check(after.next.op === `${first.peerId}/1001`, `the next write is ${after.next.op}, not ${first.peerId}/1001`);
    return { records: after.count };
  },

  /** A write whose promise resolved is in IndexedDB: Chromium killed with
   * SIGKILL right after, then started again on the same profile, has it. */
  async acknowledged_writes_survive_a_browser_kill({ chromium: c, base, profile }) {
    const page = await openPage(c.browser.contexts()[0], base);
    const acked = await page.evaluate(async () => {
      const db = await pluresdb.open("crash");
      let acked = 0;
      for (let i = 0; i < 200; i++) {
        await db.put(`k:${i}`, { i });
        acked = i + 1;
      }
      // Concurrent writes share transactions; each resolves once stored.
      await Promise.all(Array.from({ length: 300 }, (_, i) => db.put(`c:${i}`, { i })));
      return acked + 300;
    });
    await c.kill();
    const again = await startChromium(profile);
    try {
      const page2 = await openPage(again.browser.contexts()[0], base);
      const count = await page2.evaluate(async () => {
        const db = await pluresdb.open("crash");
        return (await db.list("k:")).length + (await db.list("c:")).length;
      });
      check(count === acked, `${acked} writes were acknowledged before the kill; ${count} came back`);
      return { acknowledged: acked, after_restart: count };
    } finally {
      await again.close();
    }
  },

  /** Bad input is refused with a clear error and the database keeps
   * working; a second tab on the same database is refused. */
  async bad_input_is_refused_and_the_database_keeps_working({ chromium: c, base }) {
    const context = c.browser.contexts()[0];
    const page = await openPage(context, base);
    const result = await page.evaluate(async () => {
      const db = await pluresdb.open("bad");
      const refusals = [];
      for (const attempt of [() => db.put("n:1", 42), () => db.put("", {}), () => db.update("n:1", ["x"]), () => db.resolve("nope", "f", 1), () => db.list("", { limit: 0 })]) {
        try {
          await attempt();
          refusals.push(null);
        } catch (err) {
          refusals.push(String(err.message ?? err));
        }
      }
      const ok = await db.put("n:1", { fine: true });
      return { refusals, ok, value: await db.get("n:1") };
    });
    check(result.refusals.every((r) => typeof r === "string" && r.length > 0), `not every bad call was refused: ${JSON.stringify(result.refusals)}`);
    check(result.value?.value?.fine === true, `the database stopped working after bad input: ${JSON.stringify(result.value)}`);
    const second = await openPage(context, base);
    const refused = await second.evaluate(async () => {
      try {
        await pluresdb.open("bad");
        return null;
      } catch (err) {
        return String(err.message);
      }
    });
    check(refused?.includes("another tab"), `a second tab opened the same database: ${refused}`);
    return { refusals: result.refusals, second_tab: refused };
  },

  /** watch(prefix) sees stored local changes under its prefix only, with
   * the node after the change (null after a delete). */
  async watch_sees_stored_changes({ chromium: c, base }) {
    const page = await openPage(c.browser.contexts()[0], base);
    const seen = await page.evaluate(async () => {
      const db = await pluresdb.open("watch");
      const seen = [];
      const stop = db.watch("todo:", (change) => seen.push([change.id, change.node?.value ?? null]));
      await db.put("todo:1", { text: "milk" });
      await db.put("other:1", { text: "not watched" });
      await db.update("todo:1", { done: true });
      await db.delete("todo:1");
      stop();
      await db.put("todo:2", { text: "after stop" });
      return seen;
    });
    const expected = [["todo:1", { text: "milk" }], ["todo:1", { text: "milk", done: true }], ["todo:1", null]];
    check(isDeepStrictEqual(seen, expected), `watch saw ${JSON.stringify(seen)}`);
    return { changes: seen.length };
  },

  /** The example app: a note added through its form is listed, survives a
   * reload, and can be ticked done. */
  async example_app_keeps_notes({ chromium: c, base }) {
    const page = await c.browser.contexts()[0].newPage();
    page.setDefaultTimeout(STEP_MS);
    page.on("pageerror", (err) => console.error(`page error: ${err.message}`));
    await page.goto(`${base}/example/`);
    await page.waitForFunction(() => document.querySelector("#status").textContent.startsWith("peer "));
    await page.fill("#text", "buy milk");
    await page.click("#add button");
    await page.waitForFunction(() => document.querySelectorAll("#notes li").length === 1);
    await page.reload();
    await page.waitForFunction(() => document.querySelectorAll("#notes li").length === 1);
    const text = await page.textContent("#notes li span");
    check(text === "buy milk", `after a reload the app lists ${JSON.stringify(text)}`);
    await page.click("#notes li input[type=checkbox]");
    await page.waitForFunction(() => document.querySelector("#notes li")?.className === "done");
    return { notes: 1 };
  },

  /** Figures for the note: durable writes per second (one at a time, and
   * concurrent), reopen time, and the wasm size. Checks only that the
   * records are there. */
  async figures({ chromium: c, base, args }) {
    const n = Number(args.records ?? 1000);
    const page = await openPage(c.browser.contexts()[0], base);
    const figures = await page.evaluate(async (n) => {
      const db = await pluresdb.open("figures");
      let start = performance.now();
      for (let i = 0; i < n; i++) await db.put(`seq:${i}`, { i, text: "a record of about a hundred bytes, as the native benchmarks write them" });
      const sequential = n / ((performance.now() - start) / 1000);
      start = performance.now();
      await Promise.all(Array.from({ length: n }, (_, i) => db.put(`con:${i}`, { i, text: "a record of about a hundred bytes, as the native benchmarks write them" })));
      const concurrent = n / ((performance.now() - start) / 1000);
      await db.close();
      start = performance.now();
      const again = await pluresdb.open("figures");
      const count = (await again.list("seq:")).length + (await again.list("con:")).length;
      return { sequential_per_s: Math.round(sequential), concurrent_per_s: Math.round(concurrent), reopen_ms: Math.round(performance.now() - start), count };
    }, n);
    check(figures.count === 2 * n, `${figures.count} of ${2 * n} records after reopening`);
    const wasm = readFileSync(join(pkg, "dist", "pluresdb_wasm_bg.wasm"));
    return { ...figures, wasm_bytes: wasm.length, wasm_gzip_bytes: gzipSync(wasm, { level: 9 }).length };
  },
};

const [name, ...rest] = process.argv.slice(2);
const scenario = scenarios[name];
if (!scenario) {
  console.error(`unknown scenario ${name}; known: ${Object.keys(scenarios).join(", ")}`);
  process.exit(2);
}
const args = Object.fromEntries(rest.map((kv) => kv.split("=", 2)));
const profile = mkdtempSync(join(tmpdir(), "pluresdb-chromium-"));
const server = await serve();
let c;
let code = 0;
try {
  c = await startChromium(profile);
  const result = await scenario({ chromium: c, base: server.url, profile, args });
  console.log(`RESULT ${JSON.stringify({ scenario: name, ...result })}`);
} catch (err) {
  console.error(err instanceof CheckFailed ? `check failed: ${err.message}` : err);
  code = 1;
} finally {
  await c?.close().catch(() => {});
  server.close();
  rmSync(profile, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
}
process.exit(code);
