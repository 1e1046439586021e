// Types of the PluresDB browser package (src/index.js).

/** A node's properties; a property `{"#": "other:id"}` links to another node. */
export type Value = { [field: string]: unknown };

/** A node as the database shows it (the same shape as the HTTP API's). */
export interface Node {
  id: string;
  value: Value;
  /** Hybrid-logical-clock timestamp of the newest write in the value, `ms.counter`. */
  updated_at: string;
  /** Fields with concurrent values, each value oldest first. */
  conflicts?: { [field: string]: ConflictValue[] };
}

export interface ConflictValue {
  value: unknown;
  /** The operation that wrote it, `origin/seq`. */
  op: string;
  timestamp: string;
}

/** What a stored write was assigned. */
export interface Receipt {
  id: string;
  /** `peerId/seq`: this page's peer id and the write's sequence number. */
  op: string;
  timestamp: string;
}

export type Traversal =
  | { reached: Node }
  | { not_a_link: { from: Node; field: string; hop: number } }
  | { dangling: { from: Node; field: string; target: string; hop: number } };

/** A change delivered to `watch`: the node after it (`null` once deleted), or how many were missed. */
export type Change = { id: string; op: string; node: Node | null } | { missed: number };

export interface Status {
  peer_id: string;
  version_vector: { [origin: string]: number };
  /** Journal entries committed in memory and not yet in IndexedDB. */
  pending_journal: number;
  /** The link to a node: `connected` with its `peer`, or `closed` with the `reason`. */
  link: {
    state: "none" | "connecting" | "connected" | "closed";
    peer?: string;
    reason?: string;
    /** Direct (WebRTC) links to other pages, by peer id. */
    channels: { [peer: string]: { state: "connecting" | "connected" | "closed"; peer?: string; reason?: string } };
  };
  peers: Peer[];
  /** The direct links `connectPeer` asked for, by peer id. */
  direct: { [peer: string]: DirectLinkState };
}

export interface DirectLinkState {
  /** `retrying`: an attempt failed and the next waits its (jittered, doubling) delay; `failed`: gave up. */
  state: "connecting" | "retrying" | "connected" | "failed";
  /** Attempts made so far (reset when a link that was up is lost). */
  attempts: number;
  /** Why the last attempt failed, if one did. */
  last_error: string | null;
}

/** How `connectPeer` retries. */
export interface PeerRetry {
  /** An attempt not linked by then is dropped (default 20,000). */
  attemptTimeoutMs: number;
  /** The delay before the second attempt; it doubles, jittered by up to half either way (default 500). */
  firstDelayMs: number;
  /** The longest delay (default 30,000). */
  maxDelayMs: number;
  /** After this many failed attempts `connectPeer` rejects (default 8). */
  maxAttempts: number;
}

export interface Peer {
  peer_id: string;
  transport: "websocket" | "webrtc";
  url?: string;
}

export interface OpenOptions {
  /** Where the wasm file is, if not beside the glue in dist/. */
  wasmUrl?: string | URL;
}

/** Opens (creating on first use) the database `name` of this origin. */
export function open(name: string, options?: OpenOptions): Promise<Database>;

/** Deletes the database `name` of this origin; it must not be open. */
export function destroy(name: string): Promise<void>;

export class Database {
  readonly name: string;
  /** This page's peer id, the origin of its writes. */
  readonly peerId: string;
  /** Journal entries in IndexedDB. */
  readonly journalLength: number;
  /** Resolves once the write is stored in IndexedDB. */
  put(id: string, value: Value): Promise<Receipt>;
  update(id: string, fields: Value): Promise<Receipt>;
  delete(id: string): Promise<Receipt>;
  get(id: string): Promise<Node | null>;
  list(prefix?: string, options?: { after?: string; limit?: number }): Promise<Node[]>;
  follow(id: string, path: string[]): Promise<Traversal>;
  conflicts(prefix?: string, options?: { limit?: number }): Promise<{ id: string; conflicts: { [field: string]: ConflictValue[] } }[]>;
  resolve(id: string, field: string, value: unknown): Promise<Receipt>;
  /** Calls `callback` for each stored change under `prefix`; returns a function that stops it. */
  watch(prefix: string, callback: (change: Change) => void): () => void;
  /**
   * Links to a node and keeps syncing: `url` is its browser WebSocket
   * (`pluresdb serve --browser-listen ADDR`), `ticket` from `pluresdb invite`.
   * Reconnects after a lost link until `disconnect()`.
   */
  connect(url: string, ticket: string): void;
  /** Ends the link; the page keeps working offline. */
  disconnect(): void;
  /**
   * Opens a direct WebRTC link to page `peerId`, linked to the same node
   * (which relays the signalling); once up it keeps syncing without the node.
   * A failed attempt is dropped and retried (`peerRetry`) until linked,
   * `disconnectPeer`, or `close`; resolves once linked, rejects after
   * `peerRetry.maxAttempts` failed attempts with the last reason.
   */
  connectPeer(peerId: string): Promise<void>;
  /** Stops retrying `peerId` and closes the direct link to it. */
  disconnectPeer(peerId: string): void;
  /** The other pages linked to the same node now, as the node announces them. */
  pages(): Promise<string[]>;
  /** Take WebRTC to the node when it offers it (default true). */
  preferWebRtc: boolean;
  /** `"all"` (default) or `"relay"` (TURN only). */
  iceTransportPolicy: RTCIceTransportPolicy;
  /** ICE servers for direct links (STUN/TURN); none by default. */
  iceServers: RTCIceServer[];
  /** How `connectPeer` retries. */
  peerRetry: PeerRetry;
  status(): Promise<Status>;
  peers(): Promise<Peer[]>;
  close(): Promise<void>;
}
