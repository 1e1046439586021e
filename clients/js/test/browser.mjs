// Runs one browser scenario against the package in Debian's headless
// Chromium (driven over CDP by playwright-core; no browser download):
//   node test/browser.mjs <scenario> [key=value ...]
// Prints one line `RESULT {json}` and exits 0 when the scenario's checks
// hold; any failed check exits 1 with the reason. tests/browser.rs runs
// every scenario in the README's test command.
import { readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { isDeepStrictEqual } from "node:util";
import { gzipSync } from "node:zlib";
import { CheckFailed, check, runScenario, startChromium, STEP_MS } from "./chromium.mjs";
import { serve } from "./serve.mjs";

const pkg = resolve(dirname(fileURLToPath(import.meta.url)), "..");
/** WebRTC between pages of this one machine: loopback candidates, and
 * plain addresses rather than mDNS names nothing here resolves. */
const CHROMIUM_ARGS = ["--allow-loopback-in-peer-connection", "--disable-features=WebRtcHideLocalIpsWithMdns"];

/** A page of `context` on the test page, with the package loaded. */
async function openPage(context, base) {
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_MS);
  page.on("pageerror", (err) => console.error(`page error: ${err.message}`));
  await page.goto(`${base}/test/page.html`);
  await page.waitForFunction(() => window.ready === true);
  return page;
}

/** Node's API (no Origin header: the CLI's view, not a page's). */
async function api(address, method, path, body) {
  const response = await fetch(`http://${address}${path}`, {
    method,
    headers: body ? { "content-type": "application/json" } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await response.text();
  if (response.status === 404) return null;
  check(response.ok, `${method} ${path}: ${response.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

/** The node's /changes feed under `prefix`; `next(match)` waits for a
 * matching message. */
async function subscribeChanges(address, prefix) {
  const socket = new WebSocket(`ws://${address}/changes?prefix=${encodeURIComponent(prefix)}`);
  const seen = [];
  const waiters = [];
  socket.onmessage = (event) => {
    const message = JSON.parse(event.data);
    seen.push(message);
    for (const waiter of [...waiters]) if (waiter.match(message)) waiter.ok(message);
  };
  await new Promise((ok, fail) => {
    socket.onopen = ok;
    socket.onerror = () => fail(new Error(`cannot open ${address}/changes`));
  });
  return {
    next(match) {
      const found = seen.find(match);
      if (found) return Promise.resolve(found);
      return new Promise((ok, fail) => {
        const waiter = { match, ok: (m) => { clearTimeout(timer); waiters.splice(waiters.indexOf(waiter), 1); ok(m); } };
        const timer = setTimeout(() => fail(new CheckFailed(`no matching change on the node's /changes within ${STEP_MS} ms`)), STEP_MS);
        waiters.push(waiter);
      });
    },
    close: () => socket.close(),
  };
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
    const again = await startChromium(profile, CHROMIUM_ARGS);
    try {
      const page2 = await openPage(again.browser.contexts()[0], base);
      const count = await page2.evaluate(async () => {
        const db = await pluresdb.open("crash");
        return (await db.list("k:")).length + (await db.list("c:")).length;
      });
      check(count === acked, `${acked} writes were acknowledged before the kill; ${count} came back`);
      return { acknowledged: acked, after_restart: count };
    } finally {
      await again.kill();
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

  /** A page linked to a node (args: url, ticket, api) syncs both ways: a
   * page write arrives on the node's /changes as the page's operation, a
   * node write (HTTP) arrives in the page's watch. */
  async page_and_node_sync_both_ways({ chromium: c, base, args }) {
    const page = await openPage(c.browser.contexts()[0], base);
    const changes = await subscribeChanges(args.api, "page:");
    const peerId = await page.evaluate(async ({ url, ticket }) => {
      window.db = await pluresdb.open("sync");
      db.connect(url, ticket);
      await waitFor(async () => (await db.status()).link.state === "connected", "the link");
      return db.peerId;
    }, args);
    const peers = await page.evaluate(() => db.peers());
    check(peers.length === 1 && peers[0].transport === "websocket", `the page's peers: ${JSON.stringify(peers)}`);
    await page.evaluate(() => db.put("page:1", { from: "page" }));
    const change = await changes.next((c) => JSON.stringify(c).includes("page:1"));
    check(JSON.stringify(change).includes(peerId), `the node's change does not name the page as origin: ${JSON.stringify(change)}`);
    await api(args.api, "PUT", "/nodes/node:1", { from: "node" });
    const seen = await page.evaluate(() => waitFor(async () => (await db.get("node:1"))?.value?.from === "node", "node:1 in the page"));
    changes.close();
    return { peer_id: peerId, node_write_in_page: seen, page_write_on_node: true };
  },

  /** Two pages in separate browser contexts (separate storage and
   * identities), both linked to the node: each one's write reaches the
   * other through the node, which relays between its peers. */
  async two_pages_sync_through_the_node({ chromium: c, base, args }) {
    const pages = [];
    for (const name of ["a", "b"]) {
      const context = await c.browser.newContext();
      const page = await openPage(context, base);
      await page.evaluate(async ({ url, ticket }) => {
        window.db = await pluresdb.open("shared");
        db.connect(url, ticket);
        await waitFor(async () => (await db.status()).link.state === "connected", "the link");
      }, args);
      pages.push(page);
    }
    const [a, b] = pages;
    const ids = await Promise.all(pages.map((p) => p.evaluate(() => db.peerId)));
    check(ids[0] !== ids[1], "the two contexts have one identity");
    await a.evaluate(() => db.put("shared:a", { by: "a" }));
    await b.evaluate(() => waitFor(async () => (await db.get("shared:a"))?.value?.by === "a", "a's write in b"));
    await b.evaluate(() => db.put("shared:b", { by: "b" }));
    await a.evaluate(() => waitFor(async () => (await db.get("shared:b"))?.value?.by === "b", "b's write in a"));
    return { pages: ids };
  },

  /** Two pages (separate contexts) linked to the node open a direct
   * WebRTC link (the node relays the signalling), then the node is
   * stopped (args.node_pid, SIGTERM): the pages keep syncing both ways. */
  async two_pages_keep_syncing_over_webrtc_without_the_node({ chromium: c, base, args }) {
    const pages = [];
    for (const name of ["a", "b"]) {
      const context = await c.browser.newContext();
      const page = await openPage(context, base);
      await page.evaluate(async ({ url, ticket }) => {
        window.db = await pluresdb.open("direct");
        db.connect(url, ticket);
        await waitFor(async () => (await db.status()).link.state === "connected", "the link");
      }, args);
      pages.push(page);
    }
    const [a, b] = pages;
    const [aId, bId] = await Promise.all(pages.map((p) => p.evaluate(() => db.peerId)));
    // The node announces its linked pages: a learns b's id from it.
    const announced = await a.evaluate(async () => {
      await waitFor(async () => (await db.pages()).length === 1, "the node's list of pages");
      return (await db.pages())[0];
    });
    check(announced === bId, `the node announced ${announced}, b is ${bId}`);
    await a.evaluate((peer) => db.connectPeer(peer), announced);
    await a.evaluate((peer) => waitFor(async () => (await db.status()).link.channels[peer]?.state === "connected", "the direct link in a"), bId);
    await b.evaluate((peer) => waitFor(async () => (await db.status()).link.channels[peer]?.state === "connected", "the direct link in b"), aId);
    const transports = await a.evaluate(async () => (await db.peers()).filter((p) => !p.node).map((p) => p.transport).sort());
    check(JSON.stringify(transports) === JSON.stringify(["webrtc", "websocket"]), `a's peers: ${transports}`);
    process.kill(Number(args.node_pid), "SIGTERM");
    for (const page of pages) {
      await page.evaluate(() => waitFor(async () => (await db.status()).link.state !== "connected", "the node gone"));
    }
    await a.evaluate(() => db.put("direct:a", { by: "a" }));
    await b.evaluate(() => waitFor(async () => (await db.get("direct:a"))?.value?.by === "a", "a's write in b over WebRTC"));
    await b.evaluate(() => db.put("direct:b", { by: "b" }));
    await a.evaluate(() => waitFor(async () => (await db.get("direct:b"))?.value?.by === "b", "b's write in a over WebRTC"));
    const still = await a.evaluate((peer) => db.status().then((s) => s.link.channels[peer]?.state), bId);
    const pagesAfterStop = await a.evaluate(() => db.pages());
    return { pages: [aId, bId], announced, pages_after_stop: pagesAfterStop, direct_link: still, node_link_after_stop: await a.evaluate(() => db.status().then((s) => s.link.state)) };
  },

  /** A direct link whose first attempt cannot succeed: page b is off the
   * node when a calls connectPeer, so the node drops a's offer (it relays
   * only to linked pages). a's attempt times out and is dropped, status
   * says so, and once b is back a later attempt links them. */
  async direct_link_retries_after_a_failed_attempt({ chromium: c, base, args }) {
    const pages = [];
    for (const name of ["a", "b"]) {
      const context = await c.browser.newContext();
      const page = await openPage(context, base);
      await page.evaluate(async ({ url, ticket }) => {
        window.db = await pluresdb.open("retry");
        db.connect(url, ticket);
        await waitFor(async () => (await db.status()).link.state === "connected", "the link");
      }, args);
      pages.push(page);
    }
    const [a, b] = pages;
    const [aId, bId] = await Promise.all(pages.map((p) => p.evaluate(() => db.peerId)));
    await b.evaluate(() => db.disconnect());
    const deadline = Date.now() + STEP_MS;
    while ((await api(args.api, "GET", "/peers")).peers.some((p) => p.peer_id === bId && p.connected)) {
      check(Date.now() < deadline, "the node still lists page b after it disconnected");
      await new Promise((ok) => setTimeout(ok, 50));
    }
    // While b is away no attempt can link (the node drops a's offers), so
    // attempts end at a short deadline and are retried often.
    const failed = await a.evaluate(async (peer) => {
      await waitFor(async () => !(await db.pages()).includes(peer), "b gone from the node's list of pages");
      db.peerRetry = { ...db.peerRetry, attemptTimeoutMs: 500, firstDelayMs: 100, maxDelayMs: 400, maxAttempts: 50 };
      window.linking = db.connectPeer(peer);
      await waitFor(async () => (await db.status()).direct[peer]?.last_error != null, "a's first attempt to fail");
      return (await db.status()).direct[peer];
    }, bId);
    check(failed.state === "retrying" && /not linked within/.test(failed.last_error), `a's first attempt: ${JSON.stringify(failed)}`);
    await b.evaluate(async ({ url, ticket }) => {
      db.connect(url, ticket);
      await waitFor(async () => (await db.status()).link.state === "connected", "b's link again");
    }, args);
    const linked = await a.evaluate(async (peer) => {
      // Once the node says b is back, attempts get time enough to link on
      // a loaded machine (one already under way may still end early and
      // be retried).
      await waitFor(async () => (await db.pages()).includes(peer), "b announced by the node again");
      db.peerRetry.attemptTimeoutMs = 60000;
      await window.linking;
      return (await db.status()).direct[peer];
    }, bId);
    check(linked.state === "connected" && linked.attempts >= 2, `a's direct link: ${JSON.stringify(linked)}`);
    await b.evaluate((peer) => waitFor(async () => (await db.status()).link.channels[peer]?.state === "connected", "the direct link in b"), aId);
    await a.evaluate(() => db.put("retried:a", { by: "a" }));
    await b.evaluate(() => waitFor(async () => (await db.get("retried:a"))?.value?.by === "a", "a's write in b"));
    const transports = await b.evaluate(async () => (await db.peers()).filter((p) => !p.node).map((p) => p.transport).sort());
    check(JSON.stringify(transports) === JSON.stringify(["webrtc", "websocket"]), `b's peers: ${transports}`);
    return { first_attempt: failed, linked };
  },

  /** A page linked to a node that offers WebRTC (the default with
   * --browser-listen) opens a data channel to it and syncs there: the
   * page lists the node over WebRTC, a page write reaches the node, a
   * node write reaches the page. Returns the node's /peers entry for the
   * page. */
  async page_and_node_sync_over_webrtc({ chromium: c, base, args }) {
    const page = await openPage(c.browser.contexts()[0], base);
    const linked = await page.evaluate(async ({ url, ticket }) => {
      window.db = await pluresdb.open("rtc-node");
      db.connect(url, ticket);
      await waitFor(async () => (await db.status()).link.state === "connected", "the WebSocket link");
      const node = (await db.status()).link.peer;
      await waitFor(async () => (await db.status()).direct[node]?.state === "connected", "WebRTC to the node");
      return { node, peers: await db.peers() };
    }, args);
    check(linked.peers.some((p) => p.peer_id === linked.node && p.transport === "webrtc"), `the page's peers: ${JSON.stringify(linked.peers)}`);
    const pageId = await page.evaluate(() => db.peerId);
    let entry;
    const deadline = Date.now() + STEP_MS;
    for (;;) {
      entry = (await api(args.api, "GET", "/peers")).peers.find((p) => p.peer_id === pageId && p.connected);
      if (entry?.transport === "webrtc") break;
      check(Date.now() < deadline, `the node lists the page as ${JSON.stringify(entry)}`);
      await new Promise((ok) => setTimeout(ok, 50));
    }
    await page.evaluate(() => db.put("rtc:page", { by: "page" }));
    for (;;) {
      if ((await api(args.api, "GET", "/nodes/rtc:page"))?.value?.by === "page") break;
      check(Date.now() < deadline + STEP_MS, "the page's write did not reach the node");
      await new Promise((ok) => setTimeout(ok, 50));
    }
    await api(args.api, "PUT", "/nodes/rtc:node", { by: "node" });
    await page.evaluate(() => waitFor(async () => (await db.get("rtc:node"))?.value?.by === "node", "the node's write in the page"));
    const still = await page.evaluate((node) => db.status().then((s) => s.direct[node].state), linked.node);
    check(still === "connected", `WebRTC to the node is ${still}`);
    return { node_lists_page_as: entry.transport, page_lists_node_as: "webrtc" };
  },

  /** WebRTC between the page and the node cannot connect: the page
   * allows only relayed candidates (iceTransportPolicy "relay") and has no
   * TURN server, as on a network that lets no UDP through. Its attempts
   * to the node fail, it says so, and sync goes on over the WebSocket
   * both ways. */
  async page_falls_back_to_websocket_without_udp({ chromium: c, base, args }) {
    const page = await openPage(c.browser.contexts()[0], base);
    const failed = await page.evaluate(async ({ url, ticket }) => {
      window.db = await pluresdb.open("rtc-fallback");
      // No attempt can connect here whatever its deadline (no candidate
      // can be gathered), so a short one only ends them sooner.
      db.peerRetry = { ...db.peerRetry, attemptTimeoutMs: 500, firstDelayMs: 100 };
      db.iceTransportPolicy = "relay";
      db.connect(url, ticket);
      await waitFor(async () => (await db.status()).link.state === "connected", "the WebSocket link");
      const node = (await db.status()).link.peer;
      await waitFor(async () => ["failed", "connected"].includes((await db.status()).direct[node]?.state), "WebRTC to the node to fail");
      return (await db.status()).direct[node];
    }, args);
    await page.evaluate(() => db.put("fallback:page", { by: "page" }));
    const deadline = Date.now() + STEP_MS;
    for (;;) {
      if ((await api(args.api, "GET", "/nodes/fallback:page"))?.value?.by === "page") break;
      check(Date.now() < deadline, "the page's write did not reach the node");
      await new Promise((ok) => setTimeout(ok, 50));
    }
    await api(args.api, "PUT", "/nodes/fallback:node", { by: "node" });
    await page.evaluate(() => waitFor(async () => (await db.get("fallback:node"))?.value?.by === "node", "the node's write in the page"));
    const pageId = await page.evaluate(() => db.peerId);
    const entry = (await api(args.api, "GET", "/peers")).peers.find((p) => p.peer_id === pageId && p.connected);
    const transports = await page.evaluate(async () => (await db.peers()).map((p) => p.transport));
    check(failed.state === "failed", `WebRTC to the node: ${JSON.stringify(failed)}`);
    return { webrtc_to_node: failed, node_lists_page_as: entry?.transport, page_transports: transports };
  },

  /** A page syncs, goes offline, writes while the node writes too,
   * reloads (its offline writes are in IndexedDB), reconnects: both hold
   * everything, nothing acknowledged is lost. */
  async offline_page_converges_after_reconnecting({ chromium: c, base, args }) {
    const page = await openPage(c.browser.contexts()[0], base);
    await page.evaluate(async ({ url, ticket }) => {
      window.db = await pluresdb.open("offline-sync");
      db.connect(url, ticket);
      await waitFor(async () => (await db.status()).link.state === "connected", "the link");
      await db.put("before:1", { n: 1 });
      db.disconnect();
      for (let i = 0; i < 50; i++) await db.put(`pageoff:${i}`, { i });
    }, args);
    for (let i = 0; i < 50; i++) await api(args.api, "PUT", `/nodes/nodeoff:${i}`, { i });
    await page.reload();
    await page.waitForFunction(() => window.ready === true);
    const inPage = await page.evaluate(async ({ url, ticket }) => {
      window.db = await pluresdb.open("offline-sync");
      const offline = (await db.list("pageoff:")).length;
      db.connect(url, ticket);
      await waitFor(async () => (await db.list("nodeoff:")).length === 50, "the node's writes in the page");
      return { offline_after_reload: offline, from_node: (await db.list("nodeoff:")).length };
    }, args);
    check(inPage.offline_after_reload === 50, `after the reload the page had ${inPage.offline_after_reload} of its 50 offline writes`);
    const deadline = Date.now() + STEP_MS;
    let onNode = 0;
    while (Date.now() < deadline) {
      onNode = (await api(args.api, "GET", "/nodes?prefix=pageoff:&limit=1000")).nodes.length;
      if (onNode === 50) break;
      await new Promise((ok) => setTimeout(ok, 50));
    }
    check(onNode === 50, `the node has ${onNode} of the page's 50 offline writes`);
    const before = await api(args.api, "GET", "/nodes/before:1");
    check(before?.value?.n === 1, "the write made before going offline is on the node");
    return { ...inPage, on_node: onNode };
  },

  /** A page whose ticket has another secret is refused, and says why. */
  async page_without_the_secret_is_refused({ chromium: c, base, args }) {
    const page = await openPage(c.browser.contexts()[0], base);
    const link = await page.evaluate(async ({ url, ticket }) => {
      window.db = await pluresdb.open("refused");
      db.connect(url, ticket);
      await waitFor(async () => (await db.status()).link.state === "closed", "the refusal");
      const link = (await db.status()).link;
      db.disconnect();
      return link;
    }, args);
    check(/access_denied|proof/.test(link.reason ?? ""), `the page was not refused access_denied: ${JSON.stringify(link)}`);
    return { reason: link.reason };
  },

  /** Figures with a node (args: url, ticket, api; records), over the
   * WebSocket link and over WebRTC to the node, one after the other
   * against the same node: page-to-node write latency (page write to the
   * node's /changes, measured by this harness, so it includes one CDP
   * round trip) and node-to-page sync of `records` records imported on
   * the node. Checks only that all arrive and which link carried them. */
  async node_figures({ chromium: c, base, args }) {
    const n = Number(args.records ?? 10000);
    const figures = {};
    for (const transport of ["websocket", "webrtc"]) {
      const page = await openPage(await c.browser.newContext(), base);
      const changes = await subscribeChanges(args.api, `lat${transport}:`);
      await page.evaluate(async ({ url, ticket, transport }) => {
        window.db = await pluresdb.open(`figures-node-${transport}`);
        db.preferWebRtc = transport === "webrtc";
        db.connect(url, ticket);
        await waitFor(async () => (await db.status()).link.state === "connected", "the link");
        if (transport === "webrtc") {
          const node = (await db.status()).link.peer;
          await waitFor(async () => (await db.status()).direct[node]?.state === "connected", "WebRTC to the node");
        }
      }, { ...args, transport });
      const pageId = await page.evaluate(() => db.peerId);
      const listed = (await api(args.api, "GET", "/peers")).peers.find((p) => p.peer_id === pageId && p.connected);
      check(listed?.transport === transport, `the node lists the page as ${JSON.stringify(listed)}, not ${transport}`);
      const latencies = [];
      for (let i = 0; i < 200; i++) {
        const start = performance.now();
        await page.evaluate(({ i, transport }) => db.put(`lat${transport}:${i}`, { i }), { i, transport });
        await changes.next((m) => JSON.stringify(m).includes(`"lat${transport}:${i}"`));
        latencies.push(performance.now() - start);
      }
      changes.close();
      latencies.sort((a, b) => a - b);
      const lines = Array.from({ length: n }, (_, i) => JSON.stringify({ id: `bulk${transport}:${i}`, value: { i, text: "a record of about a hundred bytes, as the native benchmarks write them" } })).join("\n");
      const start = performance.now();
      const imported = await fetch(`http://${args.api}/import`, { method: "POST", headers: { "content-type": "application/x-ndjson" }, body: lines });
      check(imported.ok, `import: ${imported.status} ${await imported.text()}`);
      await page.evaluate(({ n, transport }) => waitFor(async () => (await db.list(`bulk${transport}:`)).length === n, "the bulk records", 300000), { n, transport });
      const syncMs = performance.now() - start;
      const still = (await api(args.api, "GET", "/peers")).peers.find((p) => p.peer_id === pageId && p.connected);
      check(still?.transport === transport, `after the bulk sync the node lists the page as ${JSON.stringify(still)}`);
      figures[transport] = {
        write_latency_ms_p50: Number(latencies[99].toFixed(2)),
        write_latency_ms_p99: Number(latencies[197].toFixed(2)),
        node_to_page_records: n,
        node_to_page_ms: Math.round(syncMs),
        node_to_page_per_s: Math.round(n / (syncMs / 1000)),
      };
      await page.evaluate(() => db.close());
    }
    return figures;
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

await runScenario(scenarios, {
  chromiumArgs: CHROMIUM_ARGS,
  setup: async () => {
    const server = await serve();
    return { base: server.url, close: server.close };
  },
});
