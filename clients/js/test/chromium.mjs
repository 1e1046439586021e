// What the Chromium test scripts share (test/browser.mjs for the package,
// test/web_ui.mjs for the node's web UI): starting Debian's headless
// Chromium on a profile and driving it over CDP with playwright-core (no
// browser download), the check that fails a scenario, and the command line
// that runs one scenario and prints its `RESULT {json}`.
import { spawn } from "node:child_process";
import { accessSync, constants, mkdtempSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";

export const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
/** How long one step (a start, a page load, a wait) may take on a loaded
 * two-core machine. */
export const STEP_MS = 60_000;

export class CheckFailed extends Error {}
export function check(condition, message) {
  if (!condition) throw new CheckFailed(message);
}

/** Loaded with require, not import: importing this CommonJS bundle from
 * an ES module makes Node scan all of it for export names first, which
 * took as long again as loading it (~0.7 s a process, paid by every
 * scenario). Loaded on first use, while Chromium starts. */
function playwright() {
  return createRequire(import.meta.url)("playwright-core");
}

/** Starts Chromium on `profile` (with `extraArgs`) and connects to it.
 * `kill()` ends it with SIGKILL, as a crash would, and is
 * also how a scenario ends it: its profile is thrown away, so there is
 * nothing to shut down cleanly. */
export async function startChromium(profile, extraArgs = []) {
  const args = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--remote-debugging-port=0", ...extraArgs, `--user-data-dir=${profile}`, "about:blank",
  ];
  // Its own process group, so that a kill ends the renderers too.
  const child = spawn(CHROMIUM, args, { stdio: ["ignore", "ignore", "pipe"], detached: true });
  const exited = child.exitCode !== null ? Promise.resolve() : new Promise((ok) => child.on("exit", ok));
  const killAll = () => {
    try {
      process.kill(-child.pid, "SIGKILL");
    } catch {
      // Already gone.
    }
  };
  const endpoint = new Promise((ok, fail) => {
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
  try {
    const { chromium } = playwright();
    const browser = await chromium.connectOverCDP(await endpoint, { timeout: STEP_MS });
    const kill = async () => {
      killAll();
      await exited;
    };
    return { browser, kill };
  } catch (err) {
    killAll();
    throw err;
  }
}

/** Where scenario profiles go: /dev/shm (memory) where there is one. A
 * profile on a disk that other builds keep busy took ~0.4 s to delete and
 * made every IndexedDB commit wait on the disk, which no scenario
 * measures: a kill (SIGKILL) leaves what reached the OS on tmpfs as on a
 * disk, and a power cut is not what any scenario simulates. */
function profiles() {
  try {
    accessSync("/dev/shm", constants.W_OK);
    return "/dev/shm";
  } catch {
    return tmpdir();
  }
}

/**
 * The command line of a scenario script:
 * `node test/<script>.mjs <scenario> [key=value ...]`. Runs
 * `scenarios[name]({ chromium, browser, profile, args, ...setup(args) })` on a
 * Chromium of its own (fresh profile, started with `chromiumArgs`), prints
 * `RESULT {json}` and exits 0, or prints why and exits 1; `setup` may
 * return `close()`, called at the end.
 */
export async function runScenario(scenarios, { chromiumArgs = [], setup = async () => ({}) } = {}) {
  const [name, ...rest] = process.argv.slice(2);
  const scenario = scenarios[name];
  if (!scenario) {
    console.error(`unknown scenario ${name}; known: ${Object.keys(scenarios).join(", ")}`);
    process.exit(2);
  }
  const args = Object.fromEntries(rest.map((kv) => [kv.slice(0, kv.indexOf("=")), kv.slice(kv.indexOf("=") + 1)]));
  const profile = mkdtempSync(join(profiles(), "pluresdb-chromium-"));
  let chromium;
  let extra;
  let code = 0;
  // Where a scenario's time goes (ms since this process started), on
  // stderr, which the Rust test prints with the scenario's output.
  const times = [];
  const mark = (what) => times.push(`${what} ${Math.round(performance.now())}`);
  try {
    extra = await setup(args);
    chromium = await startChromium(profile, chromiumArgs);
    mark("chromium up");
    const result = await scenario({ ...extra, chromium, browser: chromium.browser, profile, args });
    mark("scenario done");
    console.log(`RESULT ${JSON.stringify({ scenario: name, ...result })}`);
  } catch (err) {
    console.error(err instanceof CheckFailed ? `check failed: ${err.message}` : err);
    code = 1;
  } finally {
    await chromium?.kill().catch(() => {});
    extra?.close?.();
    rmSync(profile, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
    mark("ended");
    console.error(`times (ms since the process started): ${times.join(", ")}`);
  }
  process.exit(code);
}
