// The PluresDB web UI: pages over the node's public HTTP API and its
// `/changes` WebSocket, and nothing else (what it shows is in
// /openapi.json). Preact + htm (vendor/), no build step.
import { html, render, useState, useEffect, useRef, useCallback } from "/ui/vendor/preact-htm.js";

const TOKEN_KEY = "pluresdb.api-token";
const PAGE_SIZE = 50;
/** The Live page keeps this many changes; older ones are dropped. */
const LIVE_KEEP = 500;
const STATUS_REFRESH_MS = 2000;

// ---- The API ----

/** An answer other than 2xx, with the API's `error` text. */
class ApiFailure extends Error {
  constructor(status, message, data) {
    super(message);
    this.status = status;
    this.data = data;
  }
}

/** Who wants to know that the API asked for a token (the token form). */
const tokenListeners = new Set();

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

/** Calls the API; JSON in and out. A 401 opens the token form. */
function api(method, path, body) {
  return apiRaw(method, path, body === undefined ? undefined : JSON.stringify(body), "application/json");
}

/** Calls the API with a body of `type` (a string); JSON out. */
async function apiRaw(method, path, body, type) {
  const headers = { Accept: "application/json" };
  const t = token();
  if (t) headers.Authorization = `Bearer ${t}`;
  if (body !== undefined) headers["Content-Type"] = type;
  const answer = await fetch(path, { method, headers, body });
  const text = await answer.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!answer.ok) {
    const message = (data && typeof data.error === "string" && data.error) || text || answer.statusText;
    if (answer.status === 401) tokenListeners.forEach((listener) => listener(message));
    throw new ApiFailure(answer.status, `${answer.status}: ${message}`, data);
  }
  return data;
}

/** Opens `/changes` for `prefix`; the token, if any, as the subprotocol
 * `bearer.<token>` (a browser cannot set headers on a WebSocket). */
function openChanges(prefix) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const query = prefix ? `?prefix=${encodeURIComponent(prefix)}` : "";
  const t = token();
  return new WebSocket(`${scheme}://${location.host}/changes${query}`, t ? [`bearer.${t}`] : []);
}

/** Runs `load` now and every `ms`, keeping the last answer or error. */
function usePolled(load, ms, deps = []) {
  const [state, setState] = useState({ data: null, error: null });
  useEffect(() => {
    let stopped = false;
    const once = () =>
      load().then(
        (data) => !stopped && setState({ data, error: null }),
        (err) => !stopped && setState((s) => ({ data: s.data, error: err.message })),
      );
    once();
    const timer = ms ? setInterval(once, ms) : null;
    return () => {
      stopped = true;
      if (timer) clearInterval(timer);
    };
  }, deps);
  return state;
}

/** Where JSON.parse stopped, as "line L, column C", from its message. */
function jsonError(text, err) {
  const at = /position (\d+)/.exec(err.message);
  if (!at) return err.message;
  const before = text.slice(0, Number(at[1])).split("\n");
  return `${err.message} (line ${before.length}, column ${before[before.length - 1].length + 1})`;
}

/** The value of `text` as a node value (a JSON object), or the reason not. */
function parseValue(text) {
  let value;
  try {
    value = JSON.parse(text);
  } catch (err) {
    return { error: `Not JSON: ${jsonError(text, err)}` };
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    return { error: "A node's value must be a JSON object, like {\"name\": \"Ada\"}." };
  }
  return { value };
}

const short = (id) => (id && id.length > 16 ? `${id.slice(0, 8)}…${id.slice(-6)}` : id ?? "");
const when = (ms) => (ms == null ? "—" : new Date(ms).toLocaleString());
/** A byte count for people: 950 B, 12.3 KB, 4.0 MB (powers of 1024). */
function bytes(n) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) (n /= 1024), i++;
  return i ? `${n.toFixed(1)} ${units[i]}` : `${n} B`;
}

// ---- Pages ----

/** A small line chart of `values` (oldest first), scaled to its maximum. */
function Sparkline({ values, label, unit, id = label }) {
  const width = 300;
  const height = 48;
  const peak = Math.max(0, ...values);
  // The scale: at least 1 a second, so a quiet node draws a flat line.
  const scale = Math.max(1, peak);
  const step = values.length > 1 ? width / (values.length - 1) : width;
  const points = values.map((v, i) => `${(i * step).toFixed(1)},${(height - (v / scale) * (height - 2) - 1).toFixed(1)}`).join(" ");
  const last = values.length ? values[values.length - 1] : 0;
  return html`<figure class="spark" data-testid=${`rate-${id}`}>
    <svg width=${width} height=${height} viewBox=${`0 0 ${width} ${height}`} role="img" aria-label=${label}>
      <line x1="0" y1=${height - 0.5} x2=${width} y2=${height - 0.5} stroke="currentColor" stroke-opacity="0.25" />
      <polyline points=${points} fill="none" stroke="currentColor" stroke-width="1.5" />
    </svg>
    <figcaption>${label}: <b>${last.toFixed(1)}</b> ${unit} (peak <span data-peak=${peak}>${peak.toFixed(1)}</span>)</figcaption>
  </figure>`;
}

/** Per second, each bucket of GET /status/rates, oldest first: `read(b)`
 * picks the count. The current bucket may be short: it counts as at least
 * a second, so one write just after a bucket began is not a spike. */
const perSecond = (buckets, read) => buckets.map((b) => (read(b) * 1000) / Math.max(1000, b.duration_ms));

/** The rate in each bucket of GET /status/rates as a bar where its time
 * falls in the last `spanMs` (now at the right), scaled to the peak. */
function RateBars({ buckets, read, label, unit, id, spanMs }) {
  const width = 300;
  const height = 48;
  const rates = perSecond(buckets, read);
  const peak = Math.max(0, ...rates);
  const scale = Math.max(1, peak);
  const x = (ago) => width - (Math.min(ago, spanMs) / spanMs) * width;
  const last = rates.length ? rates[rates.length - 1] : 0;
  return html`<figure class="spark" data-testid=${`rate-${id}`}>
    <svg width=${width} height=${height} viewBox=${`0 0 ${width} ${height}`} role="img" aria-label=${label}>
      <line x1="0" y1=${height - 0.5} x2=${width} y2=${height - 0.5} stroke="currentColor" stroke-opacity="0.25" />
      ${buckets.map((b, i) => {
        const left = x(b.started_ms_ago);
        const bar = Math.max(1.5, x(b.started_ms_ago - b.duration_ms) - left - 0.5);
        const tall = rates[i] > 0 ? Math.max(1, (rates[i] / scale) * (height - 2)) : 0;
        return html`<rect x=${left.toFixed(1)} y=${(height - 1 - tall).toFixed(1)} width=${bar.toFixed(1)} height=${tall.toFixed(1)} fill="currentColor" />`;
      })}
    </svg>
    <figcaption>${label}: <b>${last.toFixed(1)}</b> ${unit} now (peak <span data-peak=${peak}>${peak.toFixed(1)}</span>)</figcaption>
  </figure>`;
}

function StatusPage() {
  const health = usePolled(() => api("GET", "/health"), STATUS_REFRESH_MS);
  const status = usePolled(() => api("GET", "/status"), STATUS_REFRESH_MS);
  // The node's version is the API document's (`info.version`).
  const doc = usePolled(() => api("GET", "/openapi.json"), 0);
  const h = health.data;
  const s = status.data;
  const store = s?.store ?? h?.store;
  // The node keeps the counts of the last 15 minutes (10 s buckets): the
  // charts show them whenever the page opened.
  const rates = usePolled(() => api("GET", "/status/rates"), STATUS_REFRESH_MS);
  const peers = usePolled(() => api("GET", "/peers"), STATUS_REFRESH_MS);
  const peerList = peers.data?.peers ?? [];
  const buckets = rates.data?.buckets ?? [];
  // The span charted: the node's whole history (15 minutes), so that the
  // bars keep their places as time passes.
  const spanMs = 15 * 60_000;
  const bars = (id, label, unit, read) => html`<${RateBars} id=${id} label=${label} unit=${unit} read=${read} buckets=${buckets} spanMs=${spanMs} />`;
  return html`
    <section>
      <h2>Node</h2>
      ${health.error && html`<p class="error">${health.error}</p>`}
      <dl>
        <dt>Peer id</dt><dd class="mono" data-testid="peer-id">${h?.peer_id ?? "…"}</dd>
        <dt>Version</dt><dd data-testid="version">${doc.data?.info?.version ?? "…"}</dd>
        <dt>Health</dt><dd class=${h?.status === "ok" ? "ok" : "error"}>${h?.status ?? "…"}</dd>
        <dt>Operations held</dt><dd data-testid="operations">${h?.operations ?? "…"}</dd>
        <dt>Uptime</dt><dd>${s ? `${s.uptime_s} s` : "…"}</dd>
      </dl>
    </section>
    <section>
      <h2>Sync</h2>
      ${status.error && html`<p class="error">${status.error}</p>`}
      <dl>
        <dt>Sync engine</dt><dd>${s ? (s.is_active ? "running" : "stopped") : "…"}</dd>
        <dt>Transports</dt><dd>${s ? s.transports.join(", ") || "none (API only)" : "…"}</dd>
        <dt>Peers connected</dt><dd>${s?.peers_connected ?? "…"}</dd>
        <dt>Operations not yet acknowledged</dt><dd>${s?.pending_operations ?? "…"}</dd>
        <dt>Operations sent / received</dt><dd>${s ? `${s.traffic.ops_sent} / ${s.traffic.ops_received}` : "…"}</dd>
        <dt>Bytes sent / received</dt><dd>${s ? `${s.traffic.bytes_sent} / ${s.traffic.bytes_received}` : "…"}</dd>
        <dt>Messages refused</dt><dd>${s?.traffic.errors ?? "…"}</dd>
      </dl>
      <h3>Pending per peer <span class="muted">(operations each has not acknowledged)</span></h3>
      ${peers.error && html`<p class="error">${peers.error}</p>`}
      ${peerList.length
        ? html`<table data-testid="status-pending">
            <tr><th>Peer</th><th>Connected</th><th>Pending</th><th>Last sync</th></tr>
            ${peerList.map(
              (p) => html`<tr key=${p.peer_id}>
                <td class="mono" title=${p.peer_id} data-peer=${p.peer_id}>${short(p.peer_id)}</td>
                <td>${p.connected ? "yes" : "no"}</td>
                <td data-pending=${p.pending_operations}>${p.pending_operations}</td>
                <td>${when(p.last_sync_ms)}</td>
              </tr>`,
            )}
          </table>`
        : html`<p class="muted">No peer yet.</p>`}
    </section>
    <section>
      <h2>Rates over the last 15 minutes <span class="muted">(${rates.data?.step_s ?? 10} s steps, kept by the node; now at the right)</span></h2>
      ${rates.error && html`<p class="error">${rates.error}</p>`}
      <div class="row" data-testid="rates" data-buckets=${buckets.length}>
        ${bars("writes", "writes on this node", "/s", (b) => b.local_ops)}
        ${bars("applied", "operations from peers applied", "/s", (b) => b.remote_ops)}
        ${bars("sent", "operations sent to peers", "/s", (b) => b.ops_sent)}
        ${bars("traffic", "sync traffic, both ways", "B/s", (b) => b.bytes_sent + b.bytes_received)}
      </div>
    </section>
    <section>
      <h2>Store</h2>
      ${store
        ? html`<dl>
            <dt>Writable</dt><dd class=${store.writable ? "ok" : "error"}>${store.writable ? "yes" : `no: ${store.fault ?? ""} ${store.reason ?? ""}`}</dd>
            <dt>Faults since start</dt><dd>${store.faults}</dd>
            <dt>Recoveries</dt><dd>${store.recoveries}</dd>
            <dt>Writes refused</dt><dd>${store.writes_refused}</dd>
          </dl>`
        : html`<p class="muted">…</p>`}
    </section>
  `;
}

/** Connect to a peer by address (POST /peers). */
function ConnectForm({ onChange }) {
  const [address, setAddress] = useState("");
  const [message, setMessage] = useState({ error: null, ok: null });
  const submit = async (e) => {
    e.preventDefault();
    if (!address.trim()) return;
    setMessage({ error: null, ok: "Connecting…" });
    try {
      const connected = await api("POST", "/peers", { address: address.trim() });
      setMessage({ error: null, ok: `Connected to ${connected.peer_id}.` });
      onChange();
    } catch (err) {
      setMessage({ error: err.message, ok: null });
    }
  };
  return html`<form class="row" onSubmit=${submit}>
    <label>Connect to <input data-testid="connect-address" value=${address} onInput=${(e) => setAddress(e.target.value)} placeholder="host:port" /></label>
    <button type="submit" data-testid="connect">Connect</button>
    ${message.error && html`<span class="error" data-testid="connect-error">${message.error}</span>`}
    ${message.ok && html`<span class="ok">${message.ok}</span>`}
  </form>`;
}

function PeersPage() {
  const [generation, setGeneration] = useState(0);
  const [failure, setFailure] = useState(null);
  const peers = usePolled(() => api("GET", "/peers"), STATUS_REFRESH_MS, [generation]);
  const refresh = () => setGeneration((g) => g + 1);
  const disconnect = async (peer) => {
    try {
      await api("DELETE", `/peers/${encodeURIComponent(peer)}`);
      setFailure(null);
    } catch (err) {
      setFailure(err.message);
    }
    refresh();
  };
  const list = peers.data?.peers ?? [];
  const connected = list.filter((p) => p.connected);
  const known = list.filter((p) => !p.connected);
  const rows = (ps) =>
    ps.map(
      (p) => html`<tr key=${p.peer_id}>
        <td class="mono" title=${p.peer_id} data-peer=${p.peer_id}>${short(p.peer_id)}</td>
        <td>${p.transport ?? "—"}</td>
        <td class="mono">${p.address ?? "—"}</td>
        <td class="mono" title=${p.relay ?? ""}>${p.relay ? short(p.relay) : "direct"}</td>
        <td>${p.rtt_ms == null ? "—" : `${p.rtt_ms.toFixed(1)} ms`}</td>
        <td data-last-sync=${p.last_sync_ms ?? ""}>${when(p.last_sync_ms)}</td>
        <td data-pending=${p.pending_operations}>${p.pending_operations} ops</td>
        <td data-bytes-sent=${p.bytes_sent} data-bytes-received=${p.bytes_received}
          title=${`${p.ops_sent} operations sent, ${p.ops_received} received${p.errors ? `; ${p.errors} messages refused` : ""}`}>
          ${bytes(p.bytes_sent)} / ${bytes(p.bytes_received)} <span class="muted">(${p.ops_sent} / ${p.ops_received} ops)</span></td>
        <td>${p.connected && html`<button class="danger" onClick=${() => disconnect(p.peer_id)}>Disconnect</button>`}</td>
      </tr>`,
    );
  const head = html`<tr><th>Peer</th><th>Transport</th><th>Address</th><th>Relay</th><th>Round trip</th><th>Last sync</th><th>It lacks</th><th>Traffic out / in</th><th></th></tr>`;
  return html`
    ${peers.error && html`<p class="error">${peers.error}</p>`}
    ${failure && html`<p class="error">${failure}</p>`}
    <${ConnectForm} onChange=${refresh} />
    <section>
      <h2>Connected (${connected.length})</h2>
      ${connected.length ? html`<table data-testid="peers-connected">${head}${rows(connected)}</table>` : html`<p class="muted">No peer is connected.</p>`}
    </section>
    <section>
      <h2>Known, not connected (${known.length})</h2>
      ${known.length ? html`<table>${head}${rows(known)}</table>` : html`<p class="muted">None.</p>`}
    </section>
    <${Discovered} onConnect=${refresh} />
    <${Network} />
  `;
}

/** Peers found (mDNS, bootstrap, exchange) and how; connect to one. */
function Discovered({ onConnect }) {
  const found = usePolled(() => api("GET", "/peers/discovered"), STATUS_REFRESH_MS);
  const [failure, setFailure] = useState(null);
  const connect = async (address) => {
    try {
      await api("POST", "/peers", { address });
      setFailure(null);
      onConnect();
    } catch (err) {
      setFailure(err.message);
    }
  };
  const peers = found.data?.peers ?? [];
  return html`<section>
    <h2>Discovered (${peers.length})</h2>
    ${found.error && html`<p class="error">${found.error}</p>`}
    ${failure && html`<p class="error">${failure}</p>`}
    ${found.data && !found.data.discovering && html`<p class="muted">This node does not look for peers.</p>`}
    ${peers.length > 0 &&
    html`<table data-testid="peers-discovered">
      <tr><th>Peer</th><th>Address</th><th>Found by</th><th>Same network</th><th>Last seen</th><th></th></tr>
      ${peers.map(
        (p) => html`<tr key=${p.peer_id ?? p.address}>
          <td class="mono" title=${p.peer_id ?? ""}>${p.peer_id ? short(p.peer_id) : "—"}</td>
          <td class="mono">${p.address}</td>
          <td>${p.methods.join(", ")}${p.via ? html` <span class="muted" title=${p.via}>(via ${short(p.via)})</span>` : ""}</td>
          <td>${p.same_network ? "yes" : "no"}</td>
          <td>${new Date(p.last_seen).toLocaleString()}</td>
          <td>${!p.connected && p.same_network && html`<button class="plain" onClick=${() => connect(p.address)}>Connect</button>`}</td>
        </tr>`,
      )}
    </table>`}
  </section>`;
}

/** What each access mode admits (PUT /trust/mode). */
const ACCESS_MODES = {
  secret: "holders of the network secret, and the allowlist",
  allowlist: "only the allowlist",
  open: "anyone",
};

/** Who may sync with this node: the access mode and the allowlist, shown
 * (GET /trust) and changed (PUT /trust/mode, PUT|DELETE
 * /trust/peers/{id}: these always need the token, which the page asks
 * for on their 401). */
function Trust() {
  const [generation, setGeneration] = useState(0);
  const trust = usePolled(() => api("GET", "/trust"), STATUS_REFRESH_MS, [generation]);
  const [mode, setMode] = useState(null); // the mode chosen in the form, not applied yet
  const [peer, setPeer] = useState("");
  const [message, setMessage] = useState({ error: null, ok: null });
  const t = trust.data;
  const change = async (what, method, path, body) => {
    try {
      await api(method, path, body);
      setMessage({ error: null, ok: what });
      return true;
    } catch (err) {
      setMessage({ error: err.message, ok: null });
      return false;
    } finally {
      setGeneration((g) => g + 1);
    }
  };
  const setAccess = (e) => {
    e.preventDefault();
    const chosen = mode ?? t?.mode;
    if (chosen) change(`Access mode: ${chosen}.`, "PUT", "/trust/mode", { mode: chosen }).then((ok) => ok && setMode(null));
  };
  const allow = async (e) => {
    e.preventDefault();
    const id = peer.trim();
    if (!id) return;
    if (await change(`Allowed ${id}.`, "PUT", `/trust/peers/${encodeURIComponent(id)}`)) setPeer("");
  };
  const remove = (id) => change(`Removed ${id}.`, "DELETE", `/trust/peers/${encodeURIComponent(id)}`);
  return html`<div data-testid="trust">
    ${trust.error && html`<p class="error">${trust.error}</p>`}
    ${t &&
    html`<form class="row" onSubmit=${setAccess}>
        <label>Who may join
          <select data-testid="trust-mode" value=${mode ?? t.mode} onChange=${(e) => setMode(e.target.value)}>
            ${Object.entries(ACCESS_MODES).map(([name, who]) => html`<option value=${name}>${name}: ${who}</option>`)}
          </select></label>
        <button class="plain" type="submit" data-testid="trust-mode-set" disabled=${!mode || mode === t.mode}>Set</button>
        <span class="muted">now: <b data-testid="trust-mode-now">${t.mode}</b></span>
      </form>
      <h3>Allowlist <span class="muted">(peers admitted by their id, whether or not they hold the network secret)</span></h3>
      ${t.allowlist.length
        ? html`<ul data-testid="allowlist">${t.allowlist.map(
            (id) => html`<li key=${id}><span class="mono" data-allowed=${id}>${id}</span>
              <button class="plain" data-remove=${id} onClick=${() => remove(id)}>Remove</button></li>`,
          )}</ul>`
        : html`<p class="muted" data-testid="allowlist-empty">Empty.</p>`}
      <form class="row" onSubmit=${allow}>
        <label>Allow a peer <input data-testid="allow-peer" class="mono" size="56" value=${peer} onInput=${(e) => setPeer(e.target.value)} placeholder="peer id (pluresdb id on that node)" /></label>
        <button class="plain" type="submit" data-testid="allow-add">Allow</button>
      </form>`}
    ${message.error && html`<p class="error" data-testid="trust-error">${message.error}</p>`}
    ${message.ok && html`<p class="ok">${message.ok}</p>`}
  </div>`;
}

/** The node's network: who may join (trust mode, allowlist), its listen
 * addresses and network tag. */
function Network() {
  const network = usePolled(() => api("GET", "/network"), 0);
  const n = network.data;
  return html`<section>
    <h2>Network</h2>
    ${network.error && html`<p class="error">${network.error}</p>`}
    <${Trust} />
    ${n &&
    html`<dl data-testid="network">
      <dt>Listening on</dt><dd class="mono">${n.listen_addresses.join(", ") || "nothing (API only)"}</dd>
      <dt>Transports</dt><dd>${n.transports.join(", ") || "none"}</dd>
      <dt>Network tag</dt><dd class="mono">${n.network_tag}</dd>
    </dl>`}
    <${Invite} />
  </section>`;
}

/** An invite ticket (GET /network/invite: it always needs the token, as
 * it carries the network secret). */
function Invite() {
  const [addresses, setAddresses] = useState("");
  const [ticket, setTicket] = useState(null);
  const [failure, setFailure] = useState(null);
  const make = async (e) => {
    e.preventDefault();
    // The node draws the QR code too (an SVG beside the ticket), so the
    // page ships no encoder and the code always matches the ticket.
    const query = new URLSearchParams({ qr: "svg" });
    if (addresses.trim()) query.set("addresses", addresses.trim());
    try {
      let answer;
      try {
        answer = await api("GET", `/network/invite?${query}`);
      } catch (err) {
        // A ticket naming many addresses may not fit in a QR code: the
        // ticket alone is still worth having.
        if (!(err.status === 400 && /QR code/.test(err.message))) throw err;
        query.delete("qr");
        answer = { ...(await api("GET", `/network/invite?${query}`)), qr_error: err.message };
      }
      setTicket(answer);
      setFailure(null);
    } catch (err) {
      setTicket(null);
      setFailure(err.message);
    }
  };
  return html`<form class="row" onSubmit=${make}>
      <label>Invite from <input data-testid="invite-addresses" value=${addresses} onInput=${(e) => setAddresses(e.target.value)} placeholder="host:port, … (default: listen addresses)" size="36" /></label>
      <button class="plain" type="submit" data-testid="make-invite">Make an invite ticket</button>
    </form>
    ${failure && html`<p class="error">${failure}</p>`}
    ${ticket &&
    html`<p class="muted">The ticket carries the network secret: give it only to nodes you trust (<span class="mono">pluresdb serve --join-file FILE</span>).</p>
      <div class="row invite">
        <textarea readonly class="ticket" data-testid="invite-ticket" onFocus=${(e) => e.target.select()}>${ticket.ticket}</textarea>
        ${ticket.qr_svg && html`<img data-testid="invite-qr" alt="The ticket as a QR code" title="Scan with a phone" src=${`data:image/svg+xml;base64,${btoa(ticket.qr_svg)}`} />`}
      </div>
      ${ticket.qr_error && html`<p class="muted" data-testid="invite-no-qr">No QR code: ${ticket.qr_error.replace(/^400: /, "")}</p>`}`}`;
}

/** The ids under a prefix, a page at a time, reloaded when a change under
 * the prefix arrives. */
function NodeList({ prefix, selected, onOpen, version }) {
  const [pages, setPages] = useState([""]); // the `after` of each page seen
  const [answer, setAnswer] = useState({ data: null, error: null });
  const after = pages[pages.length - 1];
  useEffect(() => setPages([""]), [prefix]);
  useEffect(() => {
    let stopped = false;
    const query = new URLSearchParams({ prefix, limit: String(PAGE_SIZE) });
    if (after) query.set("after", after);
    api("GET", `/nodes?${query}`).then(
      (data) => !stopped && setAnswer({ data, error: null }),
      (err) => !stopped && setAnswer({ data: null, error: err.message }),
    );
    return () => {
      stopped = true;
    };
  }, [prefix, after, version]);
  const nodes = answer.data?.nodes ?? [];
  const next = answer.data?.next_after;
  return html`
    <section>
      <h2>Nodes${prefix ? ` under “${prefix}”` : ""}</h2>
      ${answer.error && html`<p class="error">${answer.error}</p>`}
      ${answer.data && !nodes.length && html`<p class="muted">No node${prefix ? " with this prefix" : ""}.</p>`}
      <table data-testid="node-list">
        ${nodes.map(
          (n) => html`<tr key=${n.id}><td class="mono">
            <a class="node" onClick=${() => onOpen(n.id)} data-id=${n.id}>${n.id === selected ? html`<b>${n.id}</b>` : n.id}</a>
          </td></tr>`,
        )}
      </table>
      <div class="row" style="margin-top:.6rem">
        <button class="plain" disabled=${pages.length === 1} onClick=${() => setPages(pages.slice(0, -1))}>Previous</button>
        <span class="muted">page ${pages.length}</span>
        <button class="plain" disabled=${!next} onClick=${() => setPages([...pages, next])}>Next</button>
      </div>
    </section>
  `;
}

/** One node: its JSON, editable; save (PUT) or delete. `id` null: a new node. */
/** A node's operations, oldest first (GET /nodes/{id}/history). */
function History({ id, version }) {
  const [answer, setAnswer] = useState({ data: null, error: null });
  useEffect(() => {
    let stopped = false;
    api("GET", `/nodes/${encodeURIComponent(id)}/history`).then(
      (data) => !stopped && setAnswer({ data, error: null }),
      (err) => !stopped && setAnswer({ data: null, error: err.message }),
    );
    return () => {
      stopped = true;
    };
  }, [id, version]);
  if (answer.error) return html`<p class="error">${answer.error}</p>`;
  if (!answer.data) return null;
  return html`<h2>History</h2>
    <table data-testid="history">
      <tr><th>Type</th><th>Origin</th><th>Seq</th><th>Timestamp</th></tr>
      ${answer.data.map(
        (op) => html`<tr key=${op.op}><td>${op.type}</td><td class="mono" title=${op.origin}>${short(op.origin)}</td><td>${op.seq}</td><td class="mono">${op.timestamp}</td></tr>`,
      )}
    </table>`;
}

function NodeEditor({ id, onSaved, onDeleted, onOpen }) {
  const [newId, setNewId] = useState("");
  const [text, setText] = useState("{\n  \n}");
  const [node, setNode] = useState(null);
  const [message, setMessage] = useState({ error: null, ok: null });
  const [saves, setSaves] = useState(0);
  useEffect(() => {
    if (id == null) {
      setNode(null);
      setText("{\n  \n}");
      return;
    }
    let stopped = false;
    api("GET", `/nodes/${encodeURIComponent(id)}`).then(
      (n) => {
        if (stopped) return;
        setNode(n);
        setText(JSON.stringify(n.value, null, 2));
      },
      (err) => !stopped && setMessage({ error: err.message, ok: null }),
    );
    return () => {
      stopped = true;
    };
  }, [id, saves]);
  const target = id ?? newId.trim();
  const save = async () => {
    if (!target) return setMessage({ error: "Give the node an id.", ok: null });
    const parsed = parseValue(text);
    if (parsed.error) return setMessage({ error: parsed.error, ok: null });
    try {
      await api("PUT", `/nodes/${encodeURIComponent(target)}`, parsed.value);
      setMessage({ error: null, ok: `Saved ${target}.` });
      setSaves((n) => n + 1);
      onSaved(target);
    } catch (err) {
      setMessage({ error: err.message, ok: null });
    }
  };
  const remove = async () => {
    if (!confirm(`Delete ${id}?`)) return;
    try {
      await api("DELETE", `/nodes/${encodeURIComponent(id)}`);
      onDeleted(id);
    } catch (err) {
      setMessage({ error: err.message, ok: null });
    }
  };
  return html`
    <section>
      <h2>${id == null ? "New node" : html`Node <span class="mono">${id}</span>`}</h2>
      ${id == null &&
      html`<div class="row"><label>Id <input data-testid="new-id" value=${newId} onInput=${(e) => setNewId(e.target.value)} placeholder="user:1" /></label></div>`}
      ${node && html`<p class="muted">Updated ${node.updated_at}</p>`}
      <textarea data-testid="editor" spellcheck="false" value=${text} onInput=${(e) => setText(e.target.value)}></textarea>
      ${message.error && html`<p class="error" data-testid="editor-error">${message.error}</p>`}
      ${message.ok && html`<p class="ok">${message.ok}</p>`}
      <div class="row">
        <button data-testid="save" onClick=${save}>${id == null ? "Create" : "Save"}</button>
        ${id != null && html`<button class="danger" onClick=${remove}>Delete</button>`}
      </div>
      ${node?.links?.length
        ? html`<h2>Links</h2><ul>${node.links.map(
            (l) => html`<li><span class="muted">${l.field}</span> → ${l.exists
              ? html`<a class="node mono" data-link=${l.to} onClick=${() => onOpen(l.to)}>${l.to}</a>`
              : html`<span class="mono">${l.to}</span> <span class="error">(missing)</span>`}</li>`,
          )}</ul>`
        : null}
      ${id != null && html`<${History} id=${id} version=${node?.updated_at} />`}
    </section>
  `;
}

/** Changes arriving within this are shown together (an import sends
 * thousands a second: one reload or re-render each would swamp the page). */
const COALESCE_MS = 250;

/** Counts bursts of changes under `prefix` (a number that grows at most
 * once per COALESCE_MS), so a list reloads. */
function useChangeCount(prefix) {
  const [count, setCount] = useState(0);
  useEffect(() => {
    let socket;
    let stopped = false;
    let retry;
    let pending = null;
    const connect = () => {
      socket = openChanges(prefix);
      socket.onmessage = (event) => {
        const message = JSON.parse(event.data);
        if (message.type === "change" && pending === null) {
          pending = setTimeout(() => {
            pending = null;
            setCount((c) => c + 1);
          }, COALESCE_MS);
        }
      };
      socket.onclose = () => {
        if (!stopped) retry = setTimeout(connect, 2000);
      };
    };
    connect();
    return () => {
      stopped = true;
      clearTimeout(retry);
      clearTimeout(pending);
      socket.close();
    };
  }, [prefix]);
  return count;
}

/** An import request carries at most this many bytes (the API takes 2 MiB)
 * and lines (as the CLI's batches), so a file of any size goes in parts. */
const IMPORT_PART_BYTES = 1024 * 1024;
const IMPORT_PART_LINES = 1000;

/** The API takes a body of at most this (a line longer than it cannot be
 * imported). */
const IMPORT_MAX_BODY = 2 * 1024 * 1024;

/** The parts of an NDJSON file, found by reading it as a stream (only a
 * chunk of it is in memory at a time): each is { start, end, firstLine,
 * lines }, a byte range of whole lines (the last line of the file may lack
 * its newline), at most IMPORT_PART_BYTES and IMPORT_PART_LINES unless one
 * line alone is longer. The caller sends `file.slice(start, end)`. */
async function* importParts(file) {
  const reader = file.stream().getReader();
  let scanned = 0; // bytes of the file read so far
  let start = 0; // where the current part starts
  let lastEnd = 0; // just after the last newline in the current part
  let lines = 0; // whole lines in the current part, up to lastEnd
  let line = 1; // the number of the current part's first line
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      for (let i = value.indexOf(10); i !== -1; i = value.indexOf(10, i + 1)) {
        const end = scanned + i + 1;
        if (lines > 0 && (end - start > IMPORT_PART_BYTES || lines >= IMPORT_PART_LINES)) {
          yield { start, end: lastEnd, firstLine: line, lines };
          [start, line, lines] = [lastEnd, line + lines, 0];
        }
        [lines, lastEnd] = [lines + 1, end];
      }
      scanned += value.length;
    }
    // What follows the last newline is a last line without one.
    const tail = scanned > lastEnd ? 1 : 0;
    if (lines > 0 && tail && (scanned - start > IMPORT_PART_BYTES || lines >= IMPORT_PART_LINES)) {
      yield { start, end: lastEnd, firstLine: line, lines };
      [start, line, lines] = [lastEnd, line + lines, 0];
    }
    if (scanned > start) yield { start, end: scanned, firstLine: line, lines: lines + tail };
  } finally {
    // The import stopped early: read no further.
    reader.cancel().catch(() => {});
  }
}

/** 1.5 MB, 320 KB: bytes for a progress line. */
const megabytes = (n) => (n >= 1e6 ? `${(n / 1e6).toFixed(1)} MB` : `${Math.ceil(n / 1e3)} KB`);

/** Import an NDJSON file (in parts, with a progress bar) and export the
 * nodes under the prefix as NDJSON (`{"id": ..., "value": {...}}` a line,
 * what `pluresdb import` and POST /import read). */
function ImportExport({ prefix, onImported }) {
  const [onError, setOnError] = useState("stop");
  const [progress, setProgress] = useState(null); // { done, total } in bytes, and lines read
  const [report, setReport] = useState(null);
  const [exporting, setExporting] = useState(null);
  const importFile = async (file) => {
    if (!file) return;
    // Part by part as the file is read: a file larger than memory allows
    // is never held whole, and each part is one request.
    const result = { imported: 0, skipped: 0, errors: [], stopped: null };
    setReport(null);
    setProgress({ done: 0, total: file.size, lines: 0 });
    for await (const part of importParts(file)) {
      if (part.end - part.start > IMPORT_MAX_BODY) {
        const error = `longer than ${IMPORT_MAX_BODY} bytes, the most the API takes`;
        if (onError === "stop") {
          result.stopped = `line ${part.firstLine} is ${error}`;
          break;
        }
        result.skipped += 1;
        result.errors.push({ line: part.firstLine, error });
        setProgress({ done: part.end, total: file.size, lines: part.firstLine + part.lines - 1 });
        continue;
      }
      const query = new URLSearchParams({ on_error: onError, first_line: String(part.firstLine) });
      try {
        const answer = await apiRaw("POST", `/import?${query}`, file.slice(part.start, part.end), "application/x-ndjson");
        result.imported += answer.imported;
        result.skipped += answer.skipped;
        result.errors.push(...answer.errors);
      } catch (err) {
        if (err.data && typeof err.data.imported === "number") result.imported += err.data.imported;
        result.stopped = err.message;
        break;
      }
      setProgress({ done: part.end, total: file.size, lines: part.firstLine + part.lines - 1 });
    }
    setReport({ ...result, file: file.name });
    onImported();
  };
  const exportNodes = async () => {
    const lines = [];
    let after = null;
    setExporting("Exporting…");
    try {
      do {
        const query = new URLSearchParams({ prefix, limit: "1000" });
        if (after) query.set("after", after);
        const page = await api("GET", `/nodes?${query}`);
        for (const n of page.nodes) lines.push(JSON.stringify({ id: n.id, value: n.value }));
        after = page.next_after;
        setExporting(`Exporting… ${lines.length} nodes`);
      } while (after);
    } catch (err) {
      setExporting(`Export failed: ${err.message}`);
      return;
    }
    const link = document.createElement("a");
    link.href = URL.createObjectURL(new Blob(lines.map((l) => `${l}\n`), { type: "application/x-ndjson" }));
    link.download = `pluresdb${prefix ? `-${prefix.replace(/[^A-Za-z0-9_-]+/g, "_")}` : ""}.ndjson`;
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
    setExporting(`Exported ${lines.length} nodes.`);
  };
  return html`<section>
    <h2>Import and export (NDJSON)</h2>
    <div class="row">
      <label>Import a file <input type="file" accept=".ndjson,.jsonl,.json,application/x-ndjson" data-testid="import-file"
        onChange=${(e) => importFile(e.target.files[0]).finally(() => (e.target.value = ""))} /></label>
      <label>Bad lines <select value=${onError} onChange=${(e) => setOnError(e.target.value)} data-testid="import-on-error">
        <option value="stop">stop the import</option><option value="skip">skip them</option></select></label>
      ${progress && html`<progress data-testid="import-progress" value=${progress.done} max=${progress.total}></progress>
        <span class="muted">${megabytes(progress.done)} / ${megabytes(progress.total)}, ${progress.lines} lines</span>`}
    </div>
    ${report && html`<div data-testid="import-report">
      <p class=${report.stopped ? "error" : "ok"}>${report.file}: ${report.imported} imported, ${report.skipped} skipped${report.stopped ? `; stopped: ${report.stopped}` : "."}</p>
      ${report.errors.length > 0 && html`<ul class="error">${report.errors.slice(0, 20).map((e) => html`<li>line ${e.line}: ${e.error}</li>`)}</ul>
        ${report.errors.length > 20 && html`<p class="muted">and ${report.errors.length - 20} more</p>`}`}
    </div>`}
    <div class="row">
      <button class="plain" data-testid="export" onClick=${exportNodes}>Export ${prefix ? `“${prefix}”` : "every node"}</button>
      ${exporting && html`<span class="muted" data-testid="export-state">${exporting}</span>`}
    </div>
  </section>`;
}

function DataPage() {
  const [prefix, setPrefix] = useState("");
  const [typed, setTyped] = useState("");
  const [selected, setSelected] = useState(hashParam("id")); // null: the new-node form
  const [version, setVersion] = useState(0);
  const changes = useChangeCount(prefix);
  return html`
    <div class="row">
      <form class="row" onSubmit=${(e) => (e.preventDefault(), setPrefix(typed))}>
        <label>Id prefix <input data-testid="prefix" value=${typed} onInput=${(e) => setTyped(e.target.value)} placeholder="user:" /></label>
        <button class="plain" type="submit">Browse</button>
      </form>
      <button class="plain" onClick=${() => setSelected(null)}>New node</button>
    </div>
    <${ImportExport} prefix=${prefix} onImported=${() => setVersion((v) => v + 1)} />
    <div class="columns">
      <${NodeList} prefix=${prefix} selected=${selected} onOpen=${setSelected} version=${version + changes} />
      <${NodeEditor}
        key=${selected ?? "\u0000new"}
        id=${selected}
        onSaved=${(id) => (setSelected(id), setVersion((v) => v + 1))}
        onDeleted=${() => (setSelected(null), setVersion((v) => v + 1))}
        onOpen=${setSelected}
      />
    </div>
  `;
}

/** Every field with concurrent values, the values side by side (who wrote
 * each and when); "Keep this" resolves the field to that value. */
function ConflictsPage() {
  const [pages, setPages] = useState([""]);
  const [generation, setGeneration] = useState(0);
  const [failure, setFailure] = useState(null);
  const after = pages[pages.length - 1];
  const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
  if (after) query.set("after", after);
  const answer = usePolled(() => api("GET", `/conflicts?${query}`), 0, [after, generation]);
  const resolve = async (id, field, value) => {
    try {
      await api("POST", `/nodes/${encodeURIComponent(id)}/resolve`, { field, value });
      setFailure(null);
    } catch (err) {
      setFailure(err.message);
    }
    setGeneration((g) => g + 1);
  };
  const nodes = answer.data?.nodes ?? [];
  const next = answer.data?.next_after;
  const origin = (op) => op.slice(0, op.lastIndexOf("/"));
  return html`
    ${answer.error && html`<p class="error">${answer.error}</p>`}
    ${failure && html`<p class="error" data-testid="resolve-error">${failure}</p>`}
    ${answer.data && !nodes.length && html`<p class="muted" data-testid="no-conflicts">No conflicts${pages.length > 1 ? " on this page" : ""}.</p>`}
    ${nodes.map(
      (n) => html`<section key=${n.id} data-testid="conflict-node" data-id=${n.id}>
        <h2>Node <span class="mono">${n.id}</span></h2>
        ${Object.entries(n.conflicts).map(
          ([field, values]) => html`<h3 class="muted">${field}</h3>
            <table data-field=${field}>
              <tr><th>Value</th><th>Written by</th><th>When</th><th></th></tr>
              ${values.map(
                (v) => html`<tr key=${v.op}>
                  <td class="mono">${JSON.stringify(v.value)}</td>
                  <td class="mono" title=${v.op}>${short(origin(v.op))}</td>
                  <td class="mono" title=${v.timestamp}>${when(Number.parseInt(v.timestamp, 10))}</td>
                  <td><button data-op=${v.op} onClick=${() => resolve(n.id, field, v.value)}>Keep this</button></td>
                </tr>`,
              )}
            </table>`,
        )}
      </section>`,
    )}
    <div class="row">
      <button class="plain" disabled=${pages.length === 1} onClick=${() => setPages(pages.slice(0, -1))}>Previous</button>
      <span class="muted">page ${pages.length}</span>
      <button class="plain" disabled=${!next} onClick=${() => setPages([...pages, next])}>Next</button>
    </div>
  `;
}

/** The graph page reads at most this many nodes (out-links, N hops) and
 * scans at most this many for links in. */
const GRAPH_MAX_NODES = 60;
const GRAPH_SCAN_NODES = 10_000;
/** A click on a node waits this long for a second one (a double-click). */
const DOUBLE_CLICK_MS = 250;

/** The neighbourhood of `root`: links out to `hops`, links in from a scan
 * of the first GRAPH_SCAN_NODES ids (the API has no reverse index). */
async function neighbourhood(root, hops) {
  const nodes = new Map(); // id -> { id, hop, exists, dir }
  const edges = [];
  let frontier = [root];
  nodes.set(root, { id: root, hop: 0, exists: true, dir: "root" });
  for (let hop = 1; hop <= hops && frontier.length; hop++) {
    const next = [];
    for (const id of frontier) {
      if (nodes.size >= GRAPH_MAX_NODES) break;
      let doc;
      try {
        doc = await api("GET", `/nodes/${encodeURIComponent(id)}`);
      } catch (err) {
        if (err.status === 404) {
          nodes.get(id).exists = false;
          continue;
        }
        throw err;
      }
      for (const link of doc.links) {
        edges.push({ from: id, to: link.to, field: link.field });
        if (!nodes.has(link.to) && nodes.size < GRAPH_MAX_NODES) {
          nodes.set(link.to, { id: link.to, hop, exists: link.exists, dir: "out" });
          if (link.exists) next.push(link.to);
        }
      }
    }
    frontier = next;
  }
  let scanned = 0;
  let after = null;
  do {
    const query = new URLSearchParams({ limit: "1000" });
    if (after) query.set("after", after);
    const page = await api("GET", `/nodes?${query}`);
    for (const n of page.nodes) {
      for (const link of n.links) {
        if (link.to === root && n.id !== root) {
          edges.push({ from: n.id, to: root, field: link.field });
          if (!nodes.has(n.id) && nodes.size < GRAPH_MAX_NODES) nodes.set(n.id, { id: n.id, hop: 1, exists: true, dir: "in" });
        }
      }
    }
    scanned += page.nodes.length;
    after = page.next_after;
  } while (after && scanned < GRAPH_SCAN_NODES);
  const kept = edges.filter((e) => nodes.has(e.from) && nodes.has(e.to));
  return { nodes: [...nodes.values()], edges: kept, scanned, complete: !after };
}

/** Places nodes on rings by hop (links in on the left half of ring 1). */
function layout(nodes) {
  const byHop = new Map();
  for (const n of nodes) {
    const key = n.dir === "in" ? "in" : n.hop;
    byHop.set(key, [...(byHop.get(key) ?? []), n]);
  }
  const at = new Map();
  for (const [key, ring] of byHop) {
    ring.forEach((n, i) => {
      if (key === 0) return at.set(n.id, { x: 0, y: 0 });
      const radius = key === "in" ? 150 : 150 * key;
      const [from, span] = key === "in" ? [Math.PI * 0.6, Math.PI * 0.8] : [-Math.PI * 0.4, Math.PI * 0.8 * (ring.length > 8 ? 2.2 : 1)];
      const angle = ring.length === 1 ? from + span / 2 : from + (span * i) / (ring.length - 1);
      at.set(n.id, { x: radius * Math.cos(angle), y: radius * Math.sin(angle) });
    });
  }
  return at;
}

function GraphPage() {
  const [typed, setTyped] = useState(hashParam("id") ?? "");
  const [hops, setHops] = useState(2);
  const [root, setRoot] = useState(hashParam("id"));
  const [graph, setGraph] = useState({ data: null, error: null });
  const [view, setView] = useState({ x: -450, y: -300, scale: 1 });
  const drag = useRef(null);
  useEffect(() => {
    if (!root) return;
    let stopped = false;
    setGraph({ data: null, error: null });
    neighbourhood(root, hops).then(
      (data) => {
        if (stopped) return;
        setGraph({ data, error: null });
        // Fit the view to the nodes.
        const points = [...layout(data.nodes).values()];
        const xs = points.map((p) => p.x);
        const ys = points.map((p) => p.y);
        const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
        const scale = Math.min(1.5, 900 / (x1 - x0 + 200), 600 / (y1 - y0 + 120));
        setView({ x: (x0 + x1) / 2 - 450, y: (y0 + y1) / 2 - 300, scale });
      },
      (err) => !stopped && setGraph({ data: null, error: err.message }),
    );
    return () => {
      stopped = true;
    };
  }, [root, hops]);
  const g = graph.data;
  const at = g ? layout(g.nodes) : new Map();
  const w = 900 / view.scale;
  const h = 600 / view.scale;
  const onWheel = (e) => {
    e.preventDefault();
    const factor = e.deltaY < 0 ? 1.2 : 1 / 1.2;
    setView((v) => ({ ...v, scale: Math.min(5, Math.max(0.2, v.scale * factor)) }));
  };
  const onDown = (e) => (drag.current = { x: e.clientX, y: e.clientY, moved: 0 });
  const onMove = (e) => {
    if (!drag.current || !(e.buttons & 1)) return (drag.current = null);
    // Screen pixels to drawing units: the drawing is scaled to fit the
    // element ("meet"), so the larger of the two ratios. The graph then
    // follows the pointer exactly.
    const box = e.currentTarget.getBoundingClientRect();
    const units = Math.max(w / box.width, h / box.height);
    const [px, py] = [e.clientX - drag.current.x, e.clientY - drag.current.y];
    drag.current = { x: e.clientX, y: e.clientY, moved: drag.current.moved + Math.abs(px) + Math.abs(py) };
    setView((v) => ({ ...v, x: v.x - px * units, y: v.y - py * units }));
  };
  // A click recentres on a node, a double-click opens it: the click waits
  // a moment for a second one, so a double-click does not first recentre
  // (which would move the node away from under the pointer). A drag that
  // ends on a node is no click.
  const clickTimer = useRef(null);
  // How far the last drag moved (the click comes after the mouseup).
  const lastDrag = useRef(0);
  useEffect(() => () => clearTimeout(clickTimer.current), []);
  const onNodeClick = (n, e) => {
    clearTimeout(clickTimer.current);
    const dragged = lastDrag.current > 3;
    if (e.detail > 1 || dragged || !n.exists || n.id === root) return;
    clickTimer.current = setTimeout(() => (setTyped(n.id), setRoot(n.id)), DOUBLE_CLICK_MS);
  };
  const onNodeDblClick = (n) => {
    clearTimeout(clickTimer.current);
    if (n.exists) location.hash = `#/data?id=${encodeURIComponent(n.id)}`;
  };
  const endDrag = () => {
    lastDrag.current = drag.current?.moved ?? 0;
    drag.current = null;
  };
  return html`
    <form class="row" onSubmit=${(e) => (e.preventDefault(), setRoot(typed.trim() || null))}>
      <label>Node <input data-testid="graph-id" value=${typed} onInput=${(e) => setTyped(e.target.value)} placeholder="user:1" /></label>
      <label>Hops <select value=${hops} onChange=${(e) => setHops(Number(e.target.value))}>${[1, 2, 3].map((n) => html`<option value=${n}>${n}</option>`)}</select></label>
      <button type="submit">Show</button>
      <span class="muted">Drag to pan, wheel to zoom; click a node to centre on it, double-click to open it.</span>
    </form>
    ${graph.error && html`<p class="error">${graph.error}</p>`}
    ${g &&
    html`<p class="muted" data-testid="graph-summary">${g.nodes.length} nodes, ${g.edges.length} links; links in found among ${g.scanned} nodes${g.complete ? " (all)" : ` (the first ${g.scanned}: not all)`}.</p>`}
    <section>
      <svg class="graph" data-testid="graph" width="100%" height="500" viewBox=${`${view.x + (900 - w) / 2} ${view.y + (600 - h) / 2} ${w} ${h}`}
        onWheel=${onWheel} onMouseDown=${onDown} onMouseMove=${onMove} onMouseUp=${endDrag} onMouseLeave=${endDrag}>
        <defs><marker id="arrow" viewBox="0 0 10 10" refX="5" refY="5" markerWidth="8" markerHeight="8" orient="auto"><path d="M 0 0 L 10 5 L 0 10 z" fill="#8a94a0" /></marker></defs>
        ${g?.edges.map((e) => {
          // Drawn from the tail to the head; the arrow at the middle.
          const a = at.get(e.from);
          const b = at.get(e.to);
          return html`<g key=${`${e.from}|${e.field}|${e.to}`}>
            <polyline points=${`${a.x},${a.y} ${(a.x + b.x) / 2},${(a.y + b.y) / 2} ${b.x},${b.y}`} fill="none" stroke="#8a94a0" marker-mid="url(#arrow)" />
            <text x=${(a.x + b.x) / 2} y=${(a.y + b.y) / 2 - 4} class="edge">${e.field}</text>
          </g>`;
        })}
        ${g?.nodes.map((n) => {
          const p = at.get(n.id);
          const cls = `gnode ${n.dir}${n.exists ? "" : " missing"}`;
          return html`<g key=${n.id} class=${cls} data-node=${n.id} data-missing=${n.exists ? "no" : "yes"} transform=${`translate(${p.x},${p.y})`}
            onClick=${(e) => onNodeClick(n, e)} onDblClick=${() => onNodeDblClick(n)}>
            <circle r="16" />
            <text y="32">${n.id}${n.exists ? "" : " (missing)"}</text>
          </g>`;
        })}
      </svg>
    </section>
  `;
}

function LivePage() {
  const [typed, setTyped] = useState("");
  const [prefix, setPrefix] = useState("");
  const [changes, setChanges] = useState([]);
  const [state, setState] = useState("connecting");
  const seen = useRef(0);
  // Changes per second over the last minute.
  const [perSecond, setPerSecond] = useState([]);
  useEffect(() => {
    let counted = seen.current;
    const timer = setInterval(() => {
      const now = seen.current;
      setPerSecond((r) => [...r, now - counted].slice(-60));
      counted = now;
    }, 1000);
    return () => clearInterval(timer);
  }, [prefix]);
  useEffect(() => {
    setChanges([]);
    setState("connecting");
    const socket = openChanges(prefix);
    let arrived = [];
    let flush = null;
    socket.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (message.type === "subscribed") setState("live");
      else if (message.type === "change") {
        seen.current += 1;
        arrived.unshift({ key: seen.current, op: message.op, at: Date.now() });
        arrived.length = Math.min(arrived.length, LIVE_KEEP);
        flush ??= setTimeout(() => {
          const batch = arrived;
          arrived = [];
          flush = null;
          setChanges((list) => [...batch, ...list].slice(0, LIVE_KEEP));
        }, COALESCE_MS);
      } else if (message.type === "lagged") setState(`fell behind (${message.missed} changes missed); reopen the page to resubscribe`);
      else if (message.type === "error") setState(`error: ${message.error}`);
    };
    socket.onclose = (event) => setState((s) => (s.startsWith("fell behind") ? s : `closed (${event.code}${event.reason ? `: ${event.reason}` : ""})`));
    socket.onerror = () => setState("the WebSocket failed (see the browser console)");
    return () => {
      clearTimeout(flush);
      socket.close();
    };
  }, [prefix]);
  return html`
    <form class="row" onSubmit=${(e) => (e.preventDefault(), setPrefix(typed))}>
      <label>Id prefix <input data-testid="live-prefix" value=${typed} onInput=${(e) => setTyped(e.target.value)} placeholder="(every node)" /></label>
      <button class="plain" type="submit">Watch</button>
      <span class="muted" data-testid="live-state">${state}</span>
    </form>
    <section><${Sparkline} values=${perSecond} label="changes" unit="/s" /></section>
    <section>
      <h2>Changes as they are applied${prefix ? ` under “${prefix}”` : ""} (newest first, last ${LIVE_KEEP})</h2>
      <table data-testid="live-changes">
        <tr><th>Seen</th><th>Type</th><th>Node</th><th>Origin</th><th>Seq</th><th>Timestamp</th></tr>
        ${changes.map(
          (c) => html`<tr key=${c.key}>
            <td>${new Date(c.at).toLocaleTimeString()}</td>
            <td>${c.op.type}</td>
            <td class="mono">${c.op.node_id}</td>
            <td class="mono" title=${c.op.origin}>${short(c.op.origin)}</td>
            <td class="mono">${c.op.seq}</td>
            <td class="mono">${c.op.timestamp}</td>
          </tr>`,
        )}
      </table>
    </section>
  `;
}

// ---- The frame ----

const PAGES = { status: ["Status", StatusPage], peers: ["Peers", PeersPage], data: ["Data", DataPage], graph: ["Graph", GraphPage], conflicts: ["Conflicts", ConflictsPage], live: ["Live", LivePage] };

/** `#/page?key=value`: the page's name. */
function currentPage() {
  const name = location.hash.replace(/^#\/?/, "").split("?")[0];
  return PAGES[name] ? name : "status";
}

/** A parameter of the hash (`#/data?id=user:1`), or null. */
function hashParam(key) {
  const query = location.hash.split("?")[1];
  return query ? new URLSearchParams(query).get(key) : null;
}

/** Asks for the API token (off loopback, or with --require-token) and keeps
 * it in sessionStorage: for this tab, until it closes. */
function TokenForm({ reason, onDone }) {
  const [value, setValue] = useState("");
  const submit = (e) => {
    e.preventDefault();
    if (!value.trim()) return;
    sessionStorage.setItem(TOKEN_KEY, value.trim());
    onDone();
  };
  return html`<section>
    <h2>API token</h2>
    <p>${reason}</p>
    <p class="muted">The token is in <span class="mono">api.token</span> in the node's data directory. It is kept for this tab only.</p>
    <form class="row" onSubmit=${submit}>
      <input type="password" autocomplete="off" data-testid="token" value=${value} onInput=${(e) => setValue(e.target.value)} />
      <button type="submit">Use token</button>
    </form>
  </section>`;
}

function App() {
  const [page, setPage] = useState(currentPage());
  const [tokenWanted, setTokenWanted] = useState(null);
  const [generation, setGeneration] = useState(0);
  useEffect(() => {
    const onHash = () => setPage(currentPage());
    addEventListener("hashchange", onHash);
    const onToken = (message) => setTokenWanted(token() ? `The token was refused: ${message}` : "This node wants its API token.");
    tokenListeners.add(onToken);
    return () => {
      removeEventListener("hashchange", onHash);
      tokenListeners.delete(onToken);
    };
  }, []);
  const tokenDone = useCallback(() => {
    setTokenWanted(null);
    setGeneration((g) => g + 1);
  }, []);
  const [, Page] = PAGES[page];
  return html`
    <header>
      <h1>PluresDB</h1>
      <nav>${Object.entries(PAGES).map(([name, [title]]) => html`<a href=${`#/${name}`} class=${name === page ? "active" : ""}>${title}</a>`)}</nav>
    </header>
    <main>
      ${tokenWanted && html`<${TokenForm} reason=${tokenWanted} onDone=${tokenDone} />`}
      <${Page} key=${`${page}:${generation}`} />
    </main>
  `;
}

render(html`<${App} />`, document.getElementById("app"));
