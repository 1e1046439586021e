// PluresDB in a web page. The database is the Rust core compiled to wasm
// (crates/wasm): writes are signed operations with the page's own peer id,
// as a native node's are. Storage is IndexedDB: every committed batch is a
// journal entry, written in one IndexedDB transaction before the write's
// promise resolves, and replayed when the database is opened again.
import init, { Replica } from "../dist/pluresdb_wasm.js";

const STORES = { identity: "identity", journal: "journal" };
const IDENTITY_KEY = "key";
const LIST_PAGE = 1000;
const MAX_CHANNELS = 16;
/** How `connectPeer` retries: an attempt that has not linked within
 * `attemptTimeoutMs` is abandoned; the next starts after a delay that
 * doubles from `firstDelayMs` up to `maxDelayMs`, jittered by up to half
 * either way (two pages retrying each other do not collide again); after
 * `maxAttempts` the promise rejects. */
const PEER_RETRY = { attemptTimeoutMs: 20_000, firstDelayMs: 500, maxDelayMs: 30_000, maxAttempts: 8 };
/** Attempts at WebRTC to the node before the page stays on the WebSocket
 * (until the node offers it again on its next link). */
const NODE_WEBRTC_ATTEMPTS = 2;

let ready = null;

/** The DTLS certificate fingerprint an SDP names (`sha-256 AB:CD:...`,
 * SHA-256 preferred), or "" without one. Both ends bind both
 * fingerprints into the link's proofs (crates/link, socket.rs). */
function fingerprintOf(sdp) {
  const lines = [...(sdp ?? "").matchAll(/^a=fingerprint:(\S+)\s+(\S+)\s*$/gim)];
  const best = lines.find((m) => m[1].toLowerCase() === "sha-256") ?? lines[0];
  return best ? `${best[1]} ${best[2]}` : "";
}

/** Loads the wasm module once per page. */
function loadWasm(wasmUrl) {
  if (!ready) ready = init(wasmUrl ? { module_or_path: wasmUrl } : undefined);
  return ready;
}

function request(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

function done(tx) {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error ?? new Error("IndexedDB transaction aborted"));
  });
}

function openIdb(name) {
  const req = indexedDB.open(`pluresdb/${name}`, 1);
  req.onupgradeneeded = () => {
    req.result.createObjectStore(STORES.identity);
    req.result.createObjectStore(STORES.journal, { autoIncrement: true });
  };
  return request(req);
}

/** Holds the database's lock for as long as it is open: two tabs writing
 * one journal would each number their writes from the same point. */
function lockDatabase(name) {
  if (!globalThis.navigator?.locks) return Promise.resolve(() => {});
  return new Promise((resolve, reject) => {
    navigator.locks
      .request(`pluresdb/${name}`, { ifAvailable: true }, (lock) => {
        if (!lock) {
          reject(new Error(`database ${JSON.stringify(name)} is open in another tab or window`));
          return undefined;
        }
        return new Promise((release) => resolve(release));
      })
      .catch(reject);
  });
}

/**
 * Opens (creating on first use) the database `name` of this origin.
 * @param {string} name
 * @param {{wasmUrl?: string|URL}} [options]
 * @returns {Promise<Database>}
 */
export async function open(name, options = {}) {
  if (typeof name !== "string" || name.length === 0) throw new TypeError("open(name): name must be a non-empty string");
  await loadWasm(options.wasmUrl);
  const unlock = await lockDatabase(name);
  try {
    const idb = await openIdb(name);
    const tx = idb.transaction([STORES.identity, STORES.journal], "readonly");
    const [key, journal] = await Promise.all([
      request(tx.objectStore(STORES.identity).get(IDENTITY_KEY)),
      request(tx.objectStore(STORES.journal).getAll()),
    ]);
    const replica = new Replica(key ?? undefined, journal, Date.now());
    if (!key) {
      // The key is stored before the first write can be: a write signed by
      // a key that is then lost could never be continued.
      const keyTx = idb.transaction(STORES.identity, "readwrite", { durability: "strict" });
      keyTx.objectStore(STORES.identity).add(replica.identityKey(), IDENTITY_KEY);
      await done(keyTx);
    }
    return new Database(name, idb, replica, unlock, journal.length);
  } catch (err) {
    unlock();
    throw err;
  }
}

/** Deletes the database `name` of this origin (it must not be open). */
export async function destroy(name) {
  await request(indexedDB.deleteDatabase(`pluresdb/${name}`));
}

/** One open database. Create it with {@link open}. */
export class Database {
  #idb;
  #replica;
  #unlock;
  #pending = [];
  #tail = Promise.resolve();
  #failed = null;
  #watchers = new Set();
  #closed = false;
  #socket = null;
  #link = null;
  /** Direct links being made or up, by peer id: one RTCPeerConnection each. */
  #channels = new Map();
  /** The direct links `connectPeer` asked for and keeps retrying, by peer id. */
  #wanted = new Map();
  /** ICE servers for direct links (STUN/TURN: `[{urls: "stun:..."}]`); none by default. */
  iceServers = [];
  /** `"all"` (default) or `"relay"`: only TURN-relayed candidates (hides
   * the page's addresses; needs a TURN server in `iceServers`). */
  iceTransportPolicy = "all";
  /** How `connectPeer` retries (see PEER_RETRY); change before calling it. */
  peerRetry = { ...PEER_RETRY };
  /** Take WebRTC to the node when it offers it (the WebSocket stays as
   * the fallback, and carries sync again if WebRTC fails). */
  preferWebRtc = true;
  /** The node's peer id, once it offered WebRTC. */
  #nodePeer = null;
  /** The other pages linked to the node, as it last announced them. */
  #pages = [];
  #timer = undefined;
  #reconnectTimer = undefined;

  constructor(name, idb, replica, unlock, journalLength) {
    this.name = name;
    this.#idb = idb;
    this.#replica = replica;
    this.#unlock = unlock;
    this.journalLength = journalLength;
  }

  /** This page's peer id: the origin of its writes. */
  get peerId() {
    return this.#replica.peerId();
  }

  /** Creates or replaces node `id` with `value` (an object). */
  put(id, value) {
    return this.#write(() => this.#replica.put(id, JSON.stringify(value), Date.now()));
  }

  /** Sets the fields of `fields` on node `id`; `null` removes a field. */
  update(id, fields) {
    return this.#write(() => this.#replica.update(id, JSON.stringify(fields), Date.now()));
  }

  /** Deletes node `id`. */
  delete(id) {
    return this.#write(() => this.#replica.delete(id, Date.now()));
  }

  /** Node `id` (`{id, value, updated_at, conflicts?}`) or `null`. */
  async get(id) {
    this.#check();
    return JSON.parse(this.#replica.get(id));
  }

  /** Nodes whose id starts with `prefix`, in id order: all of them, or
   * `limit` after `after`. */
  async list(prefix = "", { after, limit } = {}) {
    this.#check();
    if (limit !== undefined) return JSON.parse(this.#replica.list(prefix, after, limit)).nodes;
    const nodes = [];
    let cursor = after;
    for (;;) {
      const page = JSON.parse(this.#replica.list(prefix, cursor, LIST_PAGE));
      nodes.push(...page.nodes);
      if (!page.next_after) return nodes;
      cursor = page.next_after;
    }
  }

  /** Follows the links named by `path` from node `id`: `{reached}`,
   * `{not_a_link}` or `{dangling}`. */
  async follow(id, path) {
    this.#check();
    return JSON.parse(this.#replica.follow(id, path));
  }

  /** Nodes under `prefix` whose fields hold concurrent values. */
  async conflicts(prefix = "", { limit = 100 } = {}) {
    this.#check();
    return JSON.parse(this.#replica.conflicts(prefix, limit));
  }

  /** Writes `value` to `field` of node `id`, superseding its concurrent values. */
  resolve(id, field, value) {
    return this.#write(() => this.#replica.resolve(id, field, JSON.stringify(value), Date.now()));
  }

  /** Calls `callback({id, op, node})` for each change to a node whose id
   * starts with `prefix`, after it is stored. Returns a function that stops it. */
  watch(prefix, callback) {
    const watcher = { prefix, callback };
    this.#watchers.add(watcher);
    return () => this.#watchers.delete(watcher);
  }

  /** `{peer_id, version_vector, pending_journal, link, peers, direct}`;
   * `link.state` is `none`, `connecting`, `connected` or `closed` (with its
   * `reason`); `direct` has each link `connectPeer` asked for:
   * `{state: "connecting" | "retrying" | "connected" | "failed", attempts,
   * last_error}`. */
  async status() {
    this.#check();
    const direct = {};
    for (const [peer, want] of this.#wanted) {
      direct[peer] = { state: want.state, attempts: want.attempts, last_error: want.lastError };
    }
    return { ...JSON.parse(this.#replica.status()), peers: await this.peers(), direct };
  }

  /** The peers this page is linked with now: the node (WebSocket) and
   * pages linked directly (WebRTC). */
  async peers() {
    const link = JSON.parse(this.#replica.status()).link;
    const peers = link.state === "connected" ? [{ peer_id: link.peer, transport: "websocket", url: this.#link?.url }] : [];
    for (const [peer, channel] of Object.entries(link.channels ?? {})) {
      if (channel.state === "connected") peers.push({ peer_id: peer, transport: "webrtc", ...(peer === this.#nodePeer ? { node: true } : {}) });
    }
    return peers;
  }

  /** The peer ids of the other pages linked to the same node now, as the
   * node announces them (each time a page joins or leaves): what
   * {@link connectPeer} takes. Empty without a link to a node. */
  async pages() {
    this.#check();
    return JSON.parse(this.#replica.status()).link.state === "connected" ? [...this.#pages] : [];
  }

  /** Waits for pending writes, then releases the database. */
  async close() {
    if (this.#closed) return;
    if (this.#link) this.disconnect();
    await this.#tail;
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#socket?.close(1000);
    for (const peer of [...this.#wanted.keys()]) this.#giveUp(peer, new Error(`database ${JSON.stringify(this.name)} closed`));
    for (const { pc } of this.#channels.values()) pc.close();
    this.#channels.clear();
    this.#idb.close();
    this.#unlock();
  }

  #check() {
    if (this.#closed) throw new Error(`database ${JSON.stringify(this.name)} is closed`);
    if (this.#failed) throw new Error(`database ${JSON.stringify(this.name)} stopped after a failed IndexedDB write (reopen it): ${this.#failed.message}`);
  }

  async #write(commit) {
    this.#check();
    const receipt = JSON.parse(commit());
    await this.#turn();
    return receipt;
  }

  /** Stores what the replica committed, then sends what it has for the
   * node: messages are taken together with the journal, so an
   * acknowledgement never leaves before the operations it acknowledges
   * are in IndexedDB. Group commit: each flush waits for the one before
   * it, then writes everything pending in one transaction, so concurrent
   * writes share transactions and each resolves once its entry is stored. */
  async #turn() {
    this.#pending.push(...this.#replica.takeJournal());
    const messages = this.#replica.takeMessages();
    const ended = JSON.parse(this.#replica.takeEnded());
    const signals = JSON.parse(this.#replica.takeSignals());
    const flush = this.#tail.then(() => this.#writePending());
    this.#tail = flush.catch(() => {});
    await flush;
    for (const [name, message] of messages) {
      const target = name === "node" ? this.#socket : this.#channels.get(name)?.channel;
      if (target && target.readyState === (name === "node" ? WebSocket.OPEN : "open")) target.send(message);
    }
    for (const [name, reason] of ended) {
      if (name === "node") {
        const socket = this.#socket;
        if (socket) {
          this.#socket = null;
          socket.close(1000);
          this.#scheduleReconnect();
        }
      } else {
        // Only an entry whose channel the replica ran: a newer attempt's
        // connection (not opened yet) is not the link that ended.
        const entry = this.#channels.get(name);
        if (entry?.opened) this.#attemptFailed(name, entry, `the link ended: ${reason}`);
      }
    }
    this.#settleWanted();
    for (const [from, text] of signals) this.#onSignal(from, text).catch((err) => console.warn("pluresdb: bad signal", err));
    this.#schedule();
  }

  #schedule() {
    clearTimeout(this.#timer);
    if (this.#closed) return;
    const due = this.#replica.nextTimeoutMs(Date.now());
    if (due === undefined) return;
    this.#timer = setTimeout(() => {
      if (this.#closed) return;
      this.#replica.handleTimeout(Date.now());
      this.#turn().catch((err) => console.error("pluresdb: storing failed", err));
    }, Math.max(0, Math.min(due, 60_000)));
  }

  /**
   * Links this page to a node and keeps syncing with it: `url` is the
   * node's browser WebSocket (`serve --browser-listen`, printed at start),
   * `ticket` a ticket from `pluresdb invite` (its secret is proved to the
   * node, and the node must prove it too). Reconnects after a lost link
   * (every 1 s, doubling to 30 s) until {@link disconnect}.
   */
  connect(url, ticket) {
    this.#check();
    this.#link = { url, ticket, delay: 1000 };
    this.#open();
  }

  /** Ends the link to the node; the page keeps working offline. */
  disconnect() {
    this.#link = null;
    if (this.#nodePeer) this.disconnectPeer(this.#nodePeer);
    clearTimeout(this.#reconnectTimer);
    this.#replica.disconnect("the page disconnected");
    this.#turn().catch(() => {});
  }

  #open() {
    const link = this.#link;
    if (!link || this.#closed) return;
    const socket = new WebSocket(link.url);
    socket.binaryType = "arraybuffer";
    this.#socket = socket;
    socket.onopen = () => {
      if (this.#socket !== socket) return;
      const nonce = crypto.getRandomValues(new Uint8Array(32));
      try {
        this.#replica.connect(link.ticket, nonce, Date.now());
      } catch (err) {
        console.error("pluresdb: cannot link", err);
        this.#link = null;
        socket.close();
        return;
      }
      this.#turn().catch(() => {});
    };
    socket.onmessage = (event) => {
      if (this.#socket !== socket || !(event.data instanceof ArrayBuffer)) return;
      this.#replica.handleMessage("node", new Uint8Array(event.data), Date.now());
      this.#turn().catch(() => {});
    };
    socket.onclose = (event) => {
      if (this.#socket !== socket) return;
      this.#socket = null;
      this.#replica.handleLost("node", `the socket closed (${event.code})`, Date.now());
      this.#turn().catch(() => {});
      this.#scheduleReconnect();
    };
  }

  /**
   * Opens a direct WebRTC link to the page `peerId` (linked to the same
   * node, which relays the signalling). Once up, the two pages sync over
   * it directly, and keep doing so without the node. Both prove their ids
   * and the network secret over the channel, as on every link.
   *
   * An attempt that fails (no answer, ICE or the handshake failing, the
   * channel closing) is dropped and retried after a jittered, doubling
   * delay (`peerRetry`), until the pages are linked (by this attempt or
   * by the other page's), {@link disconnectPeer}, or the database closes.
   * Resolves once linked; rejects after `peerRetry.maxAttempts` failed
   * attempts, naming the last reason. Calling it again while it retries
   * returns the same promise.
   * @returns {Promise<void>}
   */
  connectPeer(peerId) {
    this.#check();
    if (typeof peerId !== "string" || peerId.length === 0) throw new TypeError("connectPeer(peerId): peerId must be a peer id");
    if (peerId === this.peerId) throw new Error("connectPeer: that is this page's own peer id");
    return this.#want(peerId, this.peerRetry);
  }

  #want(peerId, retry) {
    const existing = this.#wanted.get(peerId);
    if (existing && existing.state !== "failed") return existing.promise;
    const want = { state: "connecting", attempts: 0, lastError: null, delay: retry.firstDelayMs, timer: undefined, retry };
    want.promise = new Promise((resolve, reject) => {
      want.resolve = resolve;
      want.reject = reject;
    });
    // The caller may not wait for it; a rejection is in status() too.
    want.promise.catch(() => {});
    this.#wanted.set(peerId, want);
    if (this.#linkedTo(peerId)) this.#settleWanted();
    else this.#attempt(peerId, want);
    return want.promise;
  }

  /** Stops retrying `peerId` and closes the direct link to it, if any. */
  disconnectPeer(peerId) {
    this.#giveUp(peerId, new Error(`disconnectPeer(${peerId}) was called`));
    const entry = this.#channels.get(peerId);
    if (entry) this.#attemptFailed(peerId, entry, "the page disconnected it");
  }

  #linkedTo(peerId) {
    return JSON.parse(this.#replica.status()).link.channels?.[peerId]?.state === "connected";
  }

  /** Resolves the wanted links that are up (by either page's attempt). */
  #settleWanted() {
    for (const [peer, want] of this.#wanted) {
      if (want.state === "connected" || want.state === "failed") {
        if (want.state === "connected" && !this.#linkedTo(peer)) {
          // The link was up and is gone: make it again.
          want.state = "retrying";
          want.delay = want.retry.firstDelayMs;
          want.attempts = 0;
          if (!this.#channels.has(peer)) this.#retryLater(peer, want);
        }
        continue;
      }
      if (this.#linkedTo(peer)) {
        clearTimeout(want.timer);
        want.state = "connected";
        want.lastError = null;
        want.resolve();
      }
    }
  }

  #giveUp(peerId, error) {
    const want = this.#wanted.get(peerId);
    if (!want) return;
    clearTimeout(want.timer);
    this.#wanted.delete(peerId);
    if (want.state !== "connected") want.reject(error);
  }

  /** One attempt: a new RTCPeerConnection, an offer, and a deadline. */
  #attempt(peerId, want) {
    if (this.#closed || this.#wanted.get(peerId) !== want) return;
    want.attempts += 1;
    want.state = want.attempts === 1 ? "connecting" : "retrying";
    let entry;
    try {
      entry = this.#newPeerConnection(peerId, true, undefined, want.retry.attemptTimeoutMs);
    } catch (err) {
      this.#attemptEnded(peerId, want, err.message);
      return;
    }
    this.#wireChannel(peerId, entry, entry.pc.createDataChannel("pluresdb", { ordered: true }), true);
    entry.pc
      .createOffer()
      .then((offer) => entry.pc.setLocalDescription(offer))
      .then(() => {
        if (!this.#signal(peerId, entry, { type: "offer", sdp: entry.pc.localDescription.sdp })) {
          this.#attemptFailed(peerId, entry, entry.signalError ?? "cannot signal");
        }
      })
      .catch((err) => this.#attemptFailed(peerId, entry, `cannot offer: ${err.message}`));
  }

  /** Drops `entry` (if it is still the one for `peerId`), then lets the
   * wanted link retry. */
  #attemptFailed(peerId, entry, reason) {
    if (this.#channels.get(peerId) !== entry) return;
    this.#channels.delete(peerId);
    clearTimeout(entry.deadline);
    entry.pc.close();
    if (entry.opened) {
      this.#replica.handleLost(peerId, reason, Date.now());
      this.#turn().catch(() => {});
    }
    const want = this.#wanted.get(peerId);
    if (want) this.#attemptEnded(peerId, want, reason);
  }

  #attemptEnded(peerId, want, reason) {
    want.lastError = reason;
    if (this.#linkedTo(peerId)) return this.#settleWanted();
    if (want.attempts >= want.retry.maxAttempts) {
      want.state = "failed";
      this.#wanted.set(peerId, want);
      want.reject(new Error(`no direct link to ${peerId} after ${want.attempts} attempts: ${reason}`));
      return undefined;
    }
    want.state = "retrying";
    this.#retryLater(peerId, want);
    return undefined;
  }

  #retryLater(peerId, want) {
    if (this.#closed) return;
    const jittered = want.delay * (0.5 + Math.random());
    want.delay = Math.min(want.delay * 2, want.retry.maxDelayMs);
    clearTimeout(want.timer);
    want.timer = setTimeout(() => {
      if (this.#channels.has(peerId) || this.#linkedTo(peerId)) return this.#settleWanted();
      return this.#attempt(peerId, want);
    }, jittered);
  }

  #newPeerConnection(peerId, initiator, attemptId, timeoutMs = this.peerRetry.attemptTimeoutMs) {
    if (this.#channels.size >= MAX_CHANNELS) throw new Error(`at most ${MAX_CHANNELS} direct links`);
    const pc = new RTCPeerConnection({ iceServers: this.iceServers, iceTransportPolicy: this.iceTransportPolicy });
    // Signals carry the attempt's id: an answer or candidate of an
    // abandoned attempt is not applied to a newer one.
    const entry = { pc, channel: null, candidates: [], initiator, opened: false, attempt: attemptId ?? crypto.randomUUID() };
    this.#channels.set(peerId, entry);
    // Without an answer, or with ICE stuck, nothing else ends an attempt.
    entry.deadline = setTimeout(() => {
      if (!this.#linkedTo(peerId)) this.#attemptFailed(peerId, entry, `not linked within ${timeoutMs} ms`);
    }, timeoutMs);
    pc.onicecandidate = (event) => {
      if (event.candidate) this.#signal(peerId, entry, { type: "candidate", candidate: event.candidate.toJSON() });
    };
    pc.ondatachannel = (event) => this.#wireChannel(peerId, entry, event.channel, false);
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === "failed" || pc.connectionState === "closed") {
        this.#attemptFailed(peerId, entry, `WebRTC connection ${pc.connectionState}`);
      }
    };
    return entry;
  }

  #wireChannel(peerId, entry, channel, initiator) {
    channel.binaryType = "arraybuffer";
    entry.channel = channel;
    channel.onopen = () => {
      if (this.#channels.get(peerId) !== entry) return;
      try {
        const local = fingerprintOf(entry.pc.localDescription?.sdp);
        const remote = fingerprintOf(entry.pc.remoteDescription?.sdp);
        this.#replica.openChannel(peerId, initiator, crypto.getRandomValues(new Uint8Array(32)), local, remote, Date.now());
      } catch (err) {
        this.#attemptFailed(peerId, entry, `cannot link: ${err.message}`);
        return;
      }
      entry.opened = true;
      this.#turn().catch(() => {});
    };
    channel.onmessage = (event) => {
      if (this.#channels.get(peerId) !== entry || !(event.data instanceof ArrayBuffer)) return;
      this.#replica.handleMessage(peerId, new Uint8Array(event.data), Date.now());
      this.#turn().catch(() => {});
    };
    channel.onclose = () => this.#attemptFailed(peerId, entry, "the data channel closed");
  }

  /** Sends `message` for `entry` through the node; false (and
   * `entry.signalError`) when it cannot be sent. */
  #signal(peerId, entry, message) {
    try {
      this.#replica.sendSignal(peerId, JSON.stringify({ ...message, attempt: entry.attempt }));
    } catch (err) {
      entry.signalError = `cannot signal: ${err.message}`;
      return false;
    }
    this.#turn().catch(() => {});
    return true;
  }

  /** Signalling from page `from`, relayed by the node, or from the node
   * itself (it offers WebRTC, answers the page's offer, or refuses it). */
  async #onSignal(from, text) {
    const message = JSON.parse(text);
    if (message?.type === "pages" && from === JSON.parse(this.#replica.status()).link.peer && Array.isArray(message.pages)) {
      this.#pages = message.pages.filter((id) => typeof id === "string" && id !== this.peerId);
      return;
    }
    if (message?.type === "webrtc" && from === JSON.parse(this.#replica.status()).link.peer) {
      // The node takes WebRTC: link to it over a data channel too, and
      // sync there; the WebSocket stays for signalling and as the fallback.
      this.#nodePeer = from;
      if (this.preferWebRtc) this.#want(from, { ...this.peerRetry, maxAttempts: NODE_WEBRTC_ATTEMPTS });
      return;
    }
    if (typeof message?.attempt !== "string") return;
    let entry = this.#channels.get(from);
    if (message.type === "error") {
      if (entry && entry.attempt === message.attempt) this.#attemptFailed(from, entry, `refused: ${message.message}`);
      return;
    }
    if (message.type === "offer") {
      if (entry && entry.initiator && !entry.opened && this.peerId < from) {
        // Both pages offered at once: the one with the smaller id keeps
        // its own offer, the other answers it.
        return;
      }
      if (entry) this.#attemptFailed(from, entry, "replaced by the other page's offer");
      entry = this.#newPeerConnection(from, false, message.attempt);
      try {
        await entry.pc.setRemoteDescription({ type: "offer", sdp: message.sdp });
        await entry.pc.setLocalDescription(await entry.pc.createAnswer());
        this.#signal(from, entry, { type: "answer", sdp: entry.pc.localDescription.sdp });
        for (const candidate of entry.candidates.splice(0)) await entry.pc.addIceCandidate(candidate);
      } catch (err) {
        this.#attemptFailed(from, entry, `cannot answer: ${err.message}`);
      }
      return;
    }
    if (!entry || entry.attempt !== message.attempt) return;
    if (message.type === "answer") {
      await entry.pc.setRemoteDescription({ type: "answer", sdp: message.sdp });
      for (const candidate of entry.candidates.splice(0)) await entry.pc.addIceCandidate(candidate);
    } else if (message.type === "candidate") {
      if (entry.pc.remoteDescription) await entry.pc.addIceCandidate(message.candidate);
      else entry.candidates.push(message.candidate);
    }
  }

  #scheduleReconnect() {
    const link = this.#link;
    if (!link || this.#closed) return;
    clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = setTimeout(() => this.#open(), link.delay);
    link.delay = Math.min(link.delay * 2, 30_000);
  }

  async #writePending() {
    if (this.#failed) throw this.#failed;
    const entries = this.#pending.splice(0);
    if (entries.length === 0) return;
    try {
      const tx = this.#idb.transaction(STORES.journal, "readwrite", { durability: "strict" });
      const store = tx.objectStore(STORES.journal);
      for (const entry of entries) store.add(entry);
      await done(tx);
      this.journalLength += entries.length;
    } catch (err) {
      // Memory now holds writes that are not stored: refuse further use;
      // reopening rebuilds from what IndexedDB has.
      this.#failed = err instanceof Error ? err : new Error(String(err));
      throw this.#failed;
    }
    this.#emit();
  }

  #emit() {
    const changes = JSON.parse(this.#replica.takeChanges());
    if (this.#watchers.size === 0) return;
    for (const change of changes) {
      for (const { prefix, callback } of this.#watchers) {
        if (change.missed !== undefined || change.id.startsWith(prefix)) {
          try {
            callback(change);
          } catch (err) {
            console.error("pluresdb watch callback failed", err);
          }
        }
      }
    }
  }
}
