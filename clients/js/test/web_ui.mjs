// The node's web UI (crates/server/ui, served at `/` of the API) in
// Debian's headless Chromium, driven over CDP by playwright-core (no
// browser download):
//   node test/web_ui.mjs <scenario> api=127.0.0.1:PORT [peer_id=... cli=... data_dir=... token=...]
// Prints one line `RESULT {json}` and exits 0 when the scenario's checks
// hold; a failed check exits 1 with the reason. tests/web_ui.rs starts the
// node and runs each scenario.
import { spawnSync } from "node:child_process";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { isDeepStrictEqual } from "node:util";
import { gzipSync } from "node:zlib";
import { CheckFailed, check, runScenario, STEP_MS } from "./chromium.mjs";

/** The budget for the first load, gzipped. */
const FIRST_LOAD_BUDGET = 300 * 1024;

/** A page on the UI that records console errors and uncaught exceptions. */
async function openUi(context, base, hash, problems) {
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_MS);
  page.on("console", (m) => m.type() === "error" && problems.push(`console error on ${hash}: ${m.text()}`));
  page.on("pageerror", (err) => problems.push(`page error on ${hash}: ${err.message}`));
  await page.goto(`${base}/${hash}`);
  return page;
}

/** A screenshot for docs/ui (`screenshots=DIR`); a page in a background
 * tab is not painted, so it comes to the front first. */
async function shoot(page, path, options = {}) {
  await page.bringToFront();
  await page.screenshot({ path, ...options });
}

/** Bytes of everything the first load fetches, and gzipped (level 9). */
async function firstLoadWeight(base) {
  let bytes = 0;
  let gzipped = 0;
  for (const path of ["/", "/ui/app.js", "/ui/style.css", "/ui/vendor/preact-htm.js"]) {
    const answer = await fetch(`${base}${path}`);
    check(answer.ok, `GET ${path}: ${answer.status}`);
    const body = Buffer.from(await answer.arrayBuffer());
    bytes += body.length;
    gzipped += gzipSync(body, { level: 9 }).length;
  }
  return { bytes, gzipped };
}

const scenarios = {
  /** Status shows the node's peer id; a node created on the Data page
   * (after a refused, invalid value) is listed there and arrives on the
   * Live page; a write made outside the UI appears on both without a
   * reload; no page logs an error. */
  async status_data_live({ browser, base, args }) {
    const problems = [];
    const context = await browser.newContext();
    const status = await openUi(context, base, "#/status", problems);
    await status.locator(`[data-testid=peer-id]:text-is("${args.peer_id}")`).waitFor();
    // The version comes from /openapi.json, fetched beside /health.
    await status.locator("[data-testid=version]", { hasText: /^\d+\.\d+\.\d+$/ }).waitFor();
    const timing = await status.evaluate(() => ({
      first_contentful_paint_ms: performance.getEntriesByName("first-contentful-paint")[0]?.startTime ?? null,
      dom_content_loaded_ms: performance.getEntriesByType("navigation")[0]?.domContentLoadedEventEnd ?? null,
    }));

    const peers = await openUi(context, base, "#/peers", problems);
    await peers.getByText("No peer is connected.").waitFor();

    const live = await openUi(context, base, "#/live", problems);
    await live.locator("[data-testid=live-prefix]").fill("ui:");
    await live.getByRole("button", { name: "Watch" }).click();
    await live.locator('[data-testid=live-state]:text-is("live")').waitFor();

    const data = await openUi(context, base, "#/data", problems);
    await data.locator("[data-testid=new-id]").fill("ui:1");
    await data.locator("[data-testid=editor]").fill('{"name": }');
    await data.locator("[data-testid=save]").click();
    const refusal = await data.locator("[data-testid=editor-error]").textContent();
    check(refusal.includes("Not JSON"), `the invalid value was answered with ${JSON.stringify(refusal)}`);
    await data.locator("[data-testid=editor]").fill("[1, 2]");
    await data.locator("[data-testid=save]").click();
    await data.locator('[data-testid=editor-error]:has-text("must be a JSON object")').waitFor();
    await data.locator("[data-testid=editor]").fill('{"name": "Ada", "friend": {"#": "ui:2"}}');
    await data.locator("[data-testid=save]").click();
    await data.locator('[data-testid=node-list] a[data-id="ui:1"]').waitFor();
    await live.locator('[data-testid=live-changes] td:text-is("ui:1")').waitFor();
    // The rate chart counted it within a second.
    await live.waitForFunction(() => Number(document.querySelector("[data-testid=rate-changes] [data-peak]")?.dataset.peak) >= 1);
    // The saved node is open, its link to a missing node marked.
    await data.getByText("(missing)").waitFor();

    // A write made with the CLI (through the running node's API).
    const put = spawnSync(args.cli, ["--data-dir", args.data_dir, "put", "ui:2", '{"name":"Grace"}'], { encoding: "utf8", timeout: STEP_MS });
    check(put.status === 0, `pluresdb put ui:2 failed (${put.status}): ${put.stderr}`);
    await data.locator('[data-testid=node-list] a[data-id="ui:2"]').waitFor();
    await live.locator('[data-testid=live-changes] td:text-is("ui:2")').waitFor();
    const stored = await (await fetch(`${base}/nodes/ui:1`)).json();
    check(stored.value.name === "Ada", `the node the UI saved is ${JSON.stringify(stored)}`);

    // Edit ui:1 (now that ui:2 exists its link is live): saved, and the
    // edit (a PUT: it replaces the value) is the operation its history
    // shows; follow the link to ui:2.
    await data.locator('[data-testid=node-list] a[data-id="ui:1"]').click();
    await data.locator('[data-testid=editor]').fill('{"name": "Ada Lovelace", "friend": {"#": "ui:2"}}');
    await data.locator("[data-testid=save]").click();
    await data.getByText("Saved ui:1.").waitFor();
    const edited = await (await fetch(`${base}/nodes/ui:1`)).json();
    check(edited.value.name === "Ada Lovelace", `the edited node is ${JSON.stringify(edited)}`);
    await data.locator(`[data-testid=history] td:text-is("${edited.updated_at}")`).waitFor();
    if (args.screenshots) await shoot(data, join(args.screenshots, "data.png"));
    await data.locator('a[data-link="ui:2"]').click();
    await data.waitForFunction(() => document.querySelector("[data-testid=editor]")?.value.includes("Grace"));

    // The server's own refusal (an id with a control character) is shown.
    await data.getByRole("button", { name: "New node" }).click();
    await data.locator("[data-testid=new-id]").fill("bad\u0001id");
    await data.locator("[data-testid=editor]").fill('{"a": 1}');
    await data.locator("[data-testid=save]").click();
    await data.locator('[data-testid=editor-error]:has-text("400")').waitFor();
    // Chromium logs that refused request as a console error: that one only
    // is expected.
    const refused = problems.findIndex((p) => p.startsWith("console error on #/data") && p.includes("status of 400"));
    check(refused >= 0, `the refused write was not seen: ${problems.join("\n")}`);
    problems.splice(refused, 1);

    // Delete ui:2: gone from the list, the deletion seen on Live.
    await data.locator('[data-testid=node-list] a[data-id="ui:2"]').click();
    data.once("dialog", (dialog) => dialog.accept());
    await data.getByRole("button", { name: "Delete" }).click();
    await data.locator('[data-testid=node-list] a[data-id="ui:2"]').waitFor({ state: "detached" });
    await live.locator('[data-testid=live-changes] tr:has(td:text-is("delete")) td:text-is("ui:2")').waitFor();
    check((await fetch(`${base}/nodes/ui:2`)).status === 404, "ui:2 is still stored after its deletion");
    // The Status page's write rate saw those writes; so does a Status page
    // opened after them (the node keeps the last minutes' counts): 4
    // writes (create, the CLI's put, edit, delete), none from peers.
    const writesCharted = () => Number(document.querySelector("[data-testid=rate-writes] [data-peak]")?.dataset.peak) > 0;
    await status.waitForFunction(writesCharted);
    await status.reload();
    await status.waitForFunction(writesCharted);
    const rates = await (await fetch(`${base}/status/rates`)).json();
    const counted = (field) => rates.buckets.reduce((n, b) => n + b[field], 0);
    check(counted("local_ops") === 4 && counted("remote_ops") === 0, `the node counted ${counted("local_ops")} writes: ${JSON.stringify(rates)}`);
    if (args.screenshots) {
      await shoot(status, join(args.screenshots, "status.png"));
      await shoot(live, join(args.screenshots, "live.png"));
    }

    check(problems.length === 0, problems.join("\n"));
    const weight = await firstLoadWeight(base);
    check(weight.gzipped < FIRST_LOAD_BUDGET, `the first load is ${weight.gzipped} bytes gzipped, over ${FIRST_LOAD_BUDGET}`);
    await context.close();
    return { first_load_bytes: weight.bytes, first_load_gzip_bytes: weight.gzipped, ...timing };
  },

  /** The Peers page of node A connects to node B by its address (the
   * form posts to /peers) and lists it connected over QUIC. */
  async peers_connect({ browser, base, args }) {
    const problems = [];
    const context = await browser.newContext();
    const peers = await openUi(context, base, "#/peers", problems);
    await peers.getByText("No peer is connected.").waitFor();
    await peers.locator("[data-testid=connect-address]").fill(args.address_b);
    await peers.getByRole("button", { name: "Connect" }).click();
    const row = peers.locator(`[data-testid=peers-connected] tr:has(td[data-peer="${args.peer_b}"])`);
    await row.waitFor();
    const transport = await row.locator("td:nth-child(2)").textContent();
    check(transport === "quic", `B is listed with transport ${JSON.stringify(transport)}`);
    // Per peer: when it last synced, what it lacks, the bytes each way. A
    // write on A reaches B; B's row then shows a sync, nothing lacking and
    // bytes both ways, as A's /peers answers them.
    const put = async (id) => {
      const answer = await fetch(`${base}/nodes/${id}`, { method: "PUT", headers: { "Content-Type": "application/json" }, body: "{\"n\": 1}" });
      check(answer.ok, `PUT ${id} on A: ${answer.status}`);
    };
    const onB = async (id) => {
      for (const deadline = Date.now() + STEP_MS; Date.now() < deadline; await new Promise((ok) => setTimeout(ok, 100))) {
        if ((await fetch(`http://${args.api_b}/nodes/${id}`)).ok) return;
      }
      throw new CheckFailed(`${id} did not reach B`);
    };
    await put("p:1");
    await onB("p:1");
    const synced = await peers.waitForFunction((peer) => {
      const cells = document.querySelector(`[data-testid=peers-connected] tr:has(td[data-peer="${peer}"])`);
      const sync = cells?.querySelector("[data-last-sync]")?.dataset.lastSync;
      const pending = cells?.querySelector("[data-pending]")?.dataset.pending;
      const traffic = cells?.querySelector("[data-bytes-sent]")?.dataset;
      return sync && pending === "0" && Number(traffic.bytesSent) > 0 && Number(traffic.bytesReceived) > 0
        ? { sync: Number(sync), sent: Number(traffic.bytesSent), received: Number(traffic.bytesReceived) }
        : null;
    }, args.peer_b);
    const shown = await synced.jsonValue();
    const listed = (await (await fetch(`${base}/peers`)).json()).peers.find((p) => p.peer_id === args.peer_b);
    check(
      shown.sync <= listed.last_sync_ms && shown.sent <= listed.bytes_sent && shown.received <= listed.bytes_received && shown.sync > Date.now() - 10 * 60_000,
      `the page shows ${JSON.stringify(shown)}, A's /peers ${JSON.stringify(listed)}`,
    );
    // Cut off (A admits only its empty allowlist for a while, so B cannot
    // dial back), B lacks what A writes next: 3 operations, shown on its
    // row among the known peers; admitted and connected again, it catches
    // up.
    const mode = async (name) => {
      const answer = await fetch(`${base}/trust/mode`, {
        method: "PUT",
        headers: { "Content-Type": "application/json", Authorization: `Bearer ${args.token}` },
        body: JSON.stringify({ mode: name }),
      });
      check(answer.ok, `PUT /trust/mode ${name}: ${answer.status}`);
    };
    await mode("allowlist");
    await row.waitFor({ state: "detached" });
    for (const id of ["p:2", "p:3", "p:4"]) await put(id);
    await peers.locator(`tr:has(td[data-peer="${args.peer_b}"]) td[data-pending="3"]`).waitFor();
    // The Status page lists what each peer has not acknowledged too.
    const status = await openUi(context, base, "#/status", problems);
    await status.locator(`[data-testid=status-pending] tr:has(td[data-peer="${args.peer_b}"]) td[data-pending="3"]`).waitFor();
    await status.close();
    await mode("secret");
    await peers.locator("[data-testid=connect-address]").fill(args.address_b);
    await peers.locator("[data-testid=connect]").click();
    await row.locator('td[data-pending="0"]').waitFor();
    await onB("p:4");
    // A's network: the trust mode, and A's own QUIC address.
    const network = await peers.locator("[data-testid=network]").textContent();
    check(network.includes(args.address_a), `the network section reads ${JSON.stringify(network)}`);
    await peers.locator('[data-testid=trust-mode-now]:text-is("secret")').waitFor();
    // An invite always needs the token, even on loopback: the page asks
    // for it, then makes the ticket.
    await peers.locator("[data-testid=make-invite]").click();
    await peers.locator("[data-testid=token]").fill(args.token);
    await peers.getByRole("button", { name: "Use token" }).click();
    await peers.locator("[data-testid=make-invite]").click();
    const ticket = await peers.locator("[data-testid=invite-ticket]").inputValue();
    check(ticket.length > 40, `the ticket shown is ${JSON.stringify(ticket)}`);
    // The QR code as the page draws it: its pixels, grey levels a row at a
    // time, for the test to decode (tests/web_ui.rs) and compare with the
    // ticket `pluresdb invite` prints.
    const qr = await peers.locator("[data-testid=invite-qr]").evaluate(async (img) => {
      await img.decode();
      const canvas = document.createElement("canvas");
      [canvas.width, canvas.height] = [img.naturalWidth, img.naturalHeight];
      const context = canvas.getContext("2d");
      context.drawImage(img, 0, 0);
      const rgba = context.getImageData(0, 0, canvas.width, canvas.height).data;
      const grey = [];
      for (let i = 0; i < rgba.length; i += 4) grey.push(Math.round((rgba[i] + rgba[i + 1] + rgba[i + 2]) / 3));
      return { width: canvas.width, height: canvas.height, grey };
    });
    check(qr.width > 0 && qr.grey.length === qr.width * qr.height, `the QR code drawn is ${qr.width}x${qr.height}`);
    await writeFile(args.qr_pixels, Buffer.from(qr.grey));
    // A ticket too long for a QR code (12 addresses of 200 characters) is
    // still made and shown, with why there is no code.
    await peers.locator("[data-testid=invite-addresses]").fill(Array(12).fill(`${"a".repeat(196)}:1`).join(","));
    await peers.locator("[data-testid=make-invite]").click();
    await peers.locator("[data-testid=invite-no-qr]", { hasText: "does not fit in a QR code" }).waitFor();
    const long = await peers.locator("[data-testid=invite-ticket]").inputValue();
    check(long.length > 3000 && long !== ticket && (await peers.locator("[data-testid=invite-qr]").count()) === 0, `the long ticket shown is ${long.length} characters`);
    // Back to the ticket of A's own addresses, for the screenshot.
    await peers.locator("[data-testid=invite-addresses]").fill("");
    await peers.locator("[data-testid=make-invite]").click();
    await peers.locator("[data-testid=invite-qr]").waitFor();
    if (args.screenshots) await shoot(peers, join(args.screenshots, "peers.png"), { fullPage: true });
    // The API's 401 before the token was given and its 400 for the ticket
    // too long for a QR code are expected; nothing else.
    for (const status of ["status of 401", "status of 400"]) {
      const at = problems.findIndex((p) => p.includes(status));
      check(at >= 0, `no ${status} logged: ${problems.join("\n")}`);
      problems.splice(at, 1);
    }
    check(problems.length === 0, problems.join("\n"));
    await context.close();
    return { connected: 1, ticket, qr_width: qr.width, qr_height: qr.height };
  },

  /** The Peers page changes whom node A admits, and A's behaviour
   * follows: S (another network, which admits A) is refused while A is in
   * secret mode; once the page allows S's id, A connects to it; once the
   * page removes it, A drops the link and refuses it again; with the mode switched to open, A
   * connects again. A bad peer id is refused with the API's 400. */
  async trust_changed({ browser, base, args }) {
    const problems = [];
    const context = await browser.newContext();
    const page = await openUi(context, base, "#/peers", problems);
    const trustNow = async () => (await fetch(`${base}/trust`)).json();
    const connectS = async () => {
      await page.locator("[data-testid=connect-address]").fill(args.address_s);
      await page.locator("[data-testid=connect]").click();
    };
    const connected = page.locator(`[data-testid=peers-connected] tr:has(td[data-peer="${args.peer_s}"])`);
    const refused = async () => {
      await connectS();
      const error = page.locator("[data-testid=connect-error]");
      await error.waitFor();
      const text = await error.textContent();
      check(text.includes("502") && text.includes("secret"), `connecting to S was answered ${JSON.stringify(text)}`);
      check((await connected.count()) === 0, "S is listed connected after a refusal");
    };
    await page.locator('[data-testid=trust-mode-now]:text-is("secret")').waitFor();
    await page.locator("[data-testid=allowlist-empty]").waitFor();
    await refused();

    // Allow S: the change needs the token, which the page asks for.
    await page.locator("[data-testid=allow-peer]").fill(args.peer_s);
    await page.locator("[data-testid=allow-add]").click();
    await page.locator("[data-testid=token]").fill(args.token);
    await page.getByRole("button", { name: "Use token" }).click();
    await page.locator("[data-testid=allow-peer]").fill(args.peer_s);
    await page.locator("[data-testid=allow-add]").click();
    await page.locator(`[data-testid=allowlist] [data-allowed="${args.peer_s}"]`).waitFor();
    check(isDeepStrictEqual((await trustNow()).allowlist, [args.peer_s]), `A's allowlist is ${JSON.stringify(await trustNow())}`);
    await connectS();
    await connected.waitFor();

    // A bad peer id: the API's 400, shown; the allowlist unchanged.
    await page.locator("[data-testid=allow-peer]").fill("not-a-peer");
    await page.locator("[data-testid=allow-add]").click();
    await page.locator('[data-testid=trust-error]:has-text("400")').waitFor();
    check((await trustNow()).allowlist.length === 1, "a bad id changed the allowlist");

    // Remove S: A drops the link it no longer admits, and refuses S again.
    await page.locator(`[data-remove="${args.peer_s}"]`).click();
    await page.locator("[data-testid=allowlist-empty]").waitFor();
    check((await trustNow()).allowlist.length === 0, "S is still on A's allowlist");
    await connected.waitFor({ state: "detached" });
    await refused();

    // Open: anyone may sync with A.
    await page.locator("[data-testid=trust-mode]").selectOption("open");
    await page.locator("[data-testid=trust-mode-set]").click();
    await page.locator('[data-testid=trust-mode-now]:text-is("open")').waitFor();
    check((await trustNow()).mode === "open", `A's mode is ${JSON.stringify(await trustNow())}`);
    await connectS();
    await connected.waitFor();

    // Expected console errors: the two refusals (502), the 401 before the
    // token, the bad id (400); nothing else.
    const expected = ["status of 502", "status of 502", "status of 401", "status of 400"];
    for (const status of expected) {
      const at = problems.findIndex((p) => p.includes(status));
      check(at >= 0, `no ${status} logged: ${problems.join("\n")}`);
      problems.splice(at, 1);
    }
    check(problems.length === 0, problems.join("\n"));
    await context.close();
    return { refused: 2, connected: 2 };
  },

  /** The Conflicts page shows user:1's two concurrent names side by side
   * with who wrote each; "Keep this" on one resolves the field: the
   * conflict is gone and the node has that value. */
  async conflict_resolved({ browser, base, args }) {
    const problems = [];
    const context = await browser.newContext();
    const page = await openUi(context, base, "#/conflicts", problems);
    const field = page.locator('[data-testid=conflict-node][data-id="user:1"] table[data-field="name"]');
    await field.waitFor();
    const values = await field.locator("tr td:first-child").allTextContents();
    check(values.length === 2 && values.includes('"Alice"') && values.includes('"Alicia"'), `the values shown are ${JSON.stringify(values)}`);
    const writers = await field.locator("tr td:nth-child(2)").allTextContents();
    check(new Set(writers).size === 2, `the writers shown are ${JSON.stringify(writers)}`);
    if (args.screenshots) await shoot(page, join(args.screenshots, "conflicts.png"));
    await field.locator("tr").filter({ has: page.locator("td", { hasText: /^"Alicia"$/ }) }).locator("button").click();
    await page.locator("[data-testid=no-conflicts]").waitFor();
    const node = await (await fetch(`${base}/nodes/user:1`)).json();
    check(node.value.name === "Alicia" && !node.conflicts?.name, `after resolving, user:1 is ${JSON.stringify(node)}`);
    check(problems.length === 0, problems.join("\n"));
    await context.close();
    return { resolved: 1 };
  },

  /** The Data page imports an NDJSON file of 2,500 lines (7.4 MB: more
   * than one part of 1 MiB; one line bad, one longer than the API takes,
   * the last without its newline, values with multi-byte characters) as
   * a stream, without ever reading it whole, in parts with a progress bar
   * that moves by bytes; it skips and names the two bad lines; then it
   * exports the prefix as NDJSON, which holds every imported node. */
  async import_export({ browser, base, args }) {
    const problems = [];
    const context = await browser.newContext({ acceptDownloads: true });
    const data = await openUi(context, base, "#/data", problems);
    const text = (n) => `${"é€😀".repeat(n % 7)}${"x".repeat(2000)}`;
    const lines = Array.from({ length: 2500 }, (_, i) => JSON.stringify({ id: `imp:${String(i + 1).padStart(5, "0")}`, value: { n: i + 1, text: text(i) } }));
    lines[1499] = JSON.stringify({ id: "imp:huge", value: { text: "y".repeat(2_200_000) } });
    lines[1999] = '{"id": "imp:bad", "value": 5}';
    const file = Buffer.from(lines.join("\n"));
    check(file.length > 2 * 1024 * 1024, `the file is ${file.length} bytes: not more than one part`);
    // Reading the whole file at once (text(), arrayBuffer(), a
    // FileReader) fails the import; the progress bar's values are kept.
    await data.evaluate(() => {
      const whole = () => {
        throw new Error("the page read the whole file at once");
      };
      Blob.prototype.text = whole;
      Blob.prototype.arrayBuffer = whole;
      FileReader.prototype.readAsText = whole;
      FileReader.prototype.readAsArrayBuffer = whole;
      window.progressSeen = [];
      new MutationObserver(() => {
        const bar = document.querySelector("[data-testid=import-progress]");
        const value = bar && Number(bar.getAttribute("value"));
        if (bar && value !== window.progressSeen.at(-1)) window.progressSeen.push(value);
      }).observe(document.body, { subtree: true, childList: true, attributes: true, attributeFilter: ["value"] });
    });
    await data.locator("[data-testid=import-on-error]").selectOption("skip");
    await data.locator("[data-testid=import-file]").setInputFiles({ name: "nodes.ndjson", mimeType: "application/x-ndjson", buffer: file });
    const report = data.locator("[data-testid=import-report]");
    await report.waitFor();
    const reported = await report.textContent();
    check(
      reported.includes("2498 imported, 2 skipped") && reported.includes("line 1500:") && reported.includes("line 2000:"),
      `the import report is ${JSON.stringify(reported.slice(0, 500))}`,
    );
    const progress = data.locator("[data-testid=import-progress]");
    check(
      Number(await progress.getAttribute("value")) === file.length && Number(await progress.getAttribute("max")) === file.length,
      "the progress bar is not full",
    );
    const seen = await data.evaluate(() => window.progressSeen);
    const between = seen.filter((v) => v > 0 && v < file.length);
    check(between.length >= 4 && seen.every((v, i) => i === 0 || v > seen[i - 1]), `the progress bar went ${JSON.stringify(seen)}`);
    const stored = await (await fetch(`${base}/nodes?prefix=imp:&limit=10000`)).json();
    check(stored.nodes.length === 2498, `${stored.nodes.length} nodes under imp: after the import`);
    const last = stored.nodes.find((n) => n.id === "imp:02500");
    check(last?.value.text === text(2499), "the last line (no newline, multi-byte text) was not imported intact");
    check(stored.nodes.every((n) => n.value.text === text(n.value.n - 1)), "a value cut between two parts");

    await data.locator("[data-testid=prefix]").fill("imp:");
    await data.getByRole("button", { name: "Browse" }).click();
    await data.locator('[data-testid=node-list] a[data-id="imp:00001"]').waitFor();
    const [download] = await Promise.all([data.waitForEvent("download"), data.locator("[data-testid=export]").click()]);
    const exported = (await readFile(await download.path(), "utf8")).split("\n").filter(Boolean).map((l) => JSON.parse(l));
    check(exported.length === 2498 && exported.every((l) => l.id.startsWith("imp:") && typeof l.value.n === "number"), `the export has ${exported.length} lines`);
    check(problems.length === 0, problems.join("\n"));
    await context.close();
    return { imported: 2498, exported: exported.length, file_bytes: file.length, progress_steps: between.length };
  },

  /** The Graph page shows a node's links out (two hops, a missing target
   * marked) and in; a click recentres on a neighbour, a double-click opens
   * it on the Data page. */
  async graph({ browser, base, args }) {
    const problems = [];
    const put = async (id, value) => {
      const answer = await fetch(`${base}/nodes/${id}`, { method: "PUT", headers: { "Content-Type": "application/json" }, body: JSON.stringify(value) });
      check(answer.ok, `PUT ${id}: ${answer.status}`);
    };
    await put("g:c", { name: "c" });
    await put("g:b", { next: { "#": "g:c" }, gone: { "#": "g:zz" } });
    await put("g:a", { next: { "#": "g:b" } });
    await put("g:d", { points: { "#": "g:a" } });
    const context = await browser.newContext();
    const page = await openUi(context, base, "#/graph?id=g:a", problems);
    await page.locator("[data-testid=graph-summary]").waitFor();
    const shown = await page.locator("[data-node]").evaluateAll((els) => Object.fromEntries(els.map((e) => [e.dataset.node, e.dataset.missing])));
    const expected = { "g:a": "no", "g:b": "no", "g:c": "no", "g:d": "no", "g:zz": "yes" };
    check(isDeepStrictEqual(shown, expected), `the graph of g:a shows ${JSON.stringify(shown)}`);
    if (args.screenshots) await shoot(page, join(args.screenshots, "graph.png"));

    // Zoom: one wheel notch up over the drawing makes it 1.2 times larger
    // (a node's circle grows so); down makes it smaller again.
    const svg = page.locator("[data-testid=graph]");
    const circle = page.locator('[data-node="g:a"] circle');
    const before = await circle.boundingBox();
    const frame = await svg.boundingBox();
    await page.mouse.move(frame.x + 5, frame.y + 5);
    await page.mouse.wheel(0, -100);
    await page.waitForFunction((width) => document.querySelector('[data-node="g:a"] circle').getBoundingClientRect().width > width * 1.1, before.width);
    const zoomed = await circle.boundingBox();
    const ratio = zoomed.width / before.width;
    check(Math.abs(ratio - 1.2) < 0.05, `one notch zoomed by ${ratio}`);
    // Pan: a drag from an empty corner moves every node with the pointer,
    // and is no click (the centre stays g:a).
    const [dx, dy] = [120, -60];
    await page.mouse.move(frame.x + 5, frame.y + frame.height - 5);
    await page.mouse.down();
    await page.mouse.move(frame.x + 5 + dx, frame.y + frame.height - 5 + dy, { steps: 6 });
    await page.mouse.up();
    const panned = await circle.boundingBox();
    const moved = [panned.x - zoomed.x, panned.y - zoomed.y];
    check(Math.abs(moved[0] - dx) <= 2 && Math.abs(moved[1] - dy) <= 2, `a drag of ${dx},${dy} moved g:a by ${moved}`);
    const other = await page.locator('[data-node="g:b"] circle').boundingBox();
    check(other.width === panned.width, "nodes are not all drawn at one scale");
    await page.mouse.move(frame.x + 5, frame.y + 5);
    await page.mouse.wheel(0, 100);
    await page.waitForFunction((width) => document.querySelector('[data-node="g:a"] circle').getBoundingClientRect().width < width * 0.9, zoomed.width);
    check((await page.locator('[data-node="g:a"].root').count()) === 1, "panning or zooming recentred the graph");

    // Recentre on g:b: g:a now links in, g:c and g:zz out.
    await page.locator('[data-node="g:b"]').click();
    await page.locator('[data-node="g:a"].in').waitFor();
    await page.locator('[data-node="g:c"]').dblclick();
    await page.waitForFunction(() => document.querySelector("[data-testid=editor]")?.value.includes('"name": "c"'));
    check(problems.length === 0, problems.join("\n"));
    await context.close();
    return { nodes: Object.keys(shown).length };
  },

  /** With the token required, the page loads, asks for the token once,
   * keeps it for the tab (sessionStorage) and then shows the node. */
  async token_asked_once({ browser, base, args }) {
    const problems = [];
    const context = await browser.newContext();
    const page = await context.newPage();
    page.setDefaultTimeout(STEP_MS);
    // The API's 401s before the token is given are expected; nothing else.
    page.on("console", (m) => m.type() === "error" && !m.text().includes("401") && problems.push(`console error: ${m.text()}`));
    page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
    await page.goto(`${base}/#/status`);
    await page.locator("[data-testid=token]").fill(args.token);
    await page.getByRole("button", { name: "Use token" }).click();
    await page.locator(`[data-testid=peer-id]:text-is("${args.peer_id}")`).waitFor();
    check((await page.locator("[data-testid=token]").count()) === 0, "the token form is still shown");
    await page.goto(`${base}/#/peers`);
    await page.reload();
    await page.getByText("No peer is connected.").waitFor();
    check((await page.locator("[data-testid=token]").count()) === 0, "the token was asked again after a reload");
    check(problems.length === 0, problems.join("\n"));
    await context.close();
    return { asked: 1 };
  },
};

await runScenario(scenarios, { setup: async (args) => ({ base: `http://${args.api}` }) });
