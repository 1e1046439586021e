//! The command line: what `pluresdb --help` shows.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

const AFTER_HELP: &str = "\
Exit codes:
  0  success
  1  failure: storage error, data directory locked or corrupted
  2  invalid input: bad arguments, invalid JSON, a non-object value, a bad node id
  3  not found: the node (or the target of a followed link, or the peer) does not exist
  4  unavailable: the running node cannot do it (no network transport for connect)
  5  the store cannot write: the disk is full or an I/O error; nothing was written
     (a running node takes writes again by itself once space is freed: retry)

While a node runs on the data directory (`pluresdb serve`), every command goes
through its HTTP API; otherwise commands open the data directory directly.
Either way they behave the same.

Settings come from flags, then PLURESDB_* environment variables, then
pluresdb.toml in the data directory (or --config FILE), then defaults:
`pluresdb config show` prints what is in effect and where each came from.

Node values are JSON objects. A property {\"#\": \"other:id\"} is a link to another node.
Node ids are 1 to 512 bytes of UTF-8 without control characters; values are at most 1 MiB of JSON.";

/// PluresDB: a local-first, peer-to-peer graph database.
///
/// Every command works on the data directory (default ./pluresdb-data),
/// which is created on first use and holds one crash-safe database file.
#[derive(Debug, Parser)]
#[command(name = "pluresdb", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// Data directory of this replica.
    #[arg(long, short = 'd', global = true, env = "PLURESDB_DATA_DIR", default_value = "./pluresdb-data")]
    pub data_dir: PathBuf,

    /// Config file (default: pluresdb.toml in the data directory, if present).
    #[arg(long, global = true, env = "PLURESDB_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,

    /// How readers see concurrent writes to the same field [default:
    /// last-writer-wins; env: PLURESDB_RESOLVER; config: resolver].
    #[arg(long, global = true, value_enum)]
    pub resolver: Option<Resolver>,

    #[command(subcommand)]
    pub command: Command,
}

/// The built-in conflict resolvers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Resolver {
    /// The newest write wins (by hybrid-logical-clock time, then peer id).
    #[value(name = "last-writer-wins", alias = "lww")]
    LastWriterWins,
    /// The oldest of the concurrent writes wins.
    #[value(name = "first-writer-wins", alias = "fww")]
    FirstWriterWins,
    /// The newest is shown and all concurrent values are reported as conflicts.
    #[value(name = "keep-all")]
    KeepAll,
}

#[derive(Debug, Subcommand)]
// Parsed once per process: the size of `Serve`, the variant with every
// node setting, costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Run the node: serve the HTTP and WebSocket API until Ctrl-C or SIGTERM.
    ///
    /// Prints the peer id, the API address and the QUIC addresses (not a
    /// ticket: `pluresdb invite` makes one); GET /openapi.json on the API
    /// describes every route. On loopback the API needs no token (except to
    /// make invites or change the allowlist); bound to any other address,
    /// every route but /health needs the token that serve keeps in api.token
    /// in the data directory (`Authorization: Bearer <token>`, never in the
    /// URL). Requests must name the node in Host (its address, or a name in
    /// --api-host); web pages get in only from the node's own origin or one
    /// given with --allowed-origin. Peers connect over QUIC (UDP --port,
    /// default 34569), authenticated by their keys and the network secret.
    Serve {
        /// Address of the HTTP API; port 0 picks a free port [default:
        /// 127.0.0.1:34570; env: PLURESDB_API_ADDR; config: api_addr].
        #[arg(long)]
        api_addr: Option<std::net::SocketAddr>,
        /// Require the API token on every route but /health, even on
        /// loopback [env: PLURESDB_REQUIRE_TOKEN; config: require_token].
        #[arg(long)]
        require_token: bool,
        /// Let web pages of this origin use the API (scheme://host[:port],
        /// e.g. http://localhost:3000); repeat for several. Pages of other
        /// origins are refused (403) [env: PLURESDB_ALLOWED_ORIGINS,
        /// comma-separated; config: allowed_origins].
        #[arg(long = "allowed-origin", value_name = "ORIGIN")]
        allowed_origins: Vec<String>,
        /// A name the API answers to besides its own addresses (name, or
        /// name:port), e.g. a reverse proxy's; repeat for several. Requests
        /// naming another host are refused (403) [env: PLURESDB_API_HOSTS,
        /// comma-separated; config: api_hosts].
        #[arg(long = "api-host", value_name = "NAME")]
        api_hosts: Vec<String>,
        /// UDP port for peers (QUIC); 0 picks a free port.
        #[arg(long, default_value_t = pluresdb_net::DEFAULT_PORT)]
        port: u16,
        /// Address to listen on for peers.
        #[arg(long, default_value = "0.0.0.0")]
        bind: std::net::IpAddr,
        /// Connect to this node at start (host:port); repeat for several.
        /// Reconnects with backoff if the link drops; the peers it knows are
        /// learned from it and dialled too (peer exchange) [env:
        /// PLURESDB_BOOTSTRAP, comma-separated; config: bootstrap].
        #[arg(long, value_name = "HOST:PORT")]
        bootstrap: Vec<String>,
        /// Serve the API only, with no network transport.
        #[arg(long)]
        no_network: bool,
        /// Do not run the QUIC engine (peers reach the node over its other
        /// transports) [env: PLURESDB_QUIC=false; config: quic = false].
        #[arg(long)]
        no_quic: bool,
        /// Do not run the libp2p engine (TCP, QUIC-v1 and WebSocket, with
        /// the Kademlia DHT) [env: PLURESDB_LIBP2P=false; config: libp2p =
        /// false].
        #[arg(long)]
        no_libp2p: bool,
        /// Where the libp2p engine listens, as a multiaddr
        /// (/ip4/0.0.0.0/tcp/34571, /ip4/0.0.0.0/udp/34571/quic-v1,
        /// /ip4/0.0.0.0/tcp/34572/ws); repeat for several. Default: those
        /// three at --bind (every port 0 with --port 0) [env:
        /// PLURESDB_LIBP2P_LISTEN, comma-separated; config: libp2p_listen].
        #[arg(long = "libp2p-listen", value_name = "MULTIADDR")]
        libp2p_listen: Vec<String>,
        /// Take no part in the Kademlia DHT, and do not look for the
        /// network's nodes there [env: PLURESDB_DHT=false; config: dht =
        /// false].
        #[arg(long)]
        no_dht: bool,
        /// Serve as a circuit relay for the network's members (peers linked
        /// with this node after admission): for a node with a public
        /// address, so nodes behind NATs reach each other through it and
        /// hole-punch. Reservations and circuits are bounded (see
        /// docs/libp2p.md) [env: PLURESDB_RELAY=true; config: relay = true].
        #[arg(long)]
        relay: bool,
        /// Accept browser pages (the JS client, clients/js) over WebSocket
        /// at this address, e.g. 127.0.0.1:34573 (port 0: one from the OS,
        /// printed at start). Pages prove their peer id and the network
        /// secret as other peers do (docs/protocol.md, "WebSocket link").
        /// Default: off [env: PLURESDB_BROWSER_LISTEN; config:
        /// browser_listen].
        #[arg(long, value_name = "ADDR")]
        browser_listen: Option<std::net::SocketAddr>,
        /// Do not offer browser pages WebRTC (they stay on the WebSocket)
        /// [env: PLURESDB_WEBRTC=false; config: webrtc = false].
        #[arg(long)]
        no_webrtc: bool,
        /// The UDP address of the WebRTC engine for browser pages (with
        /// --browser-listen), e.g. 0.0.0.0:34574; port 0: one from the OS.
        /// Default: --browser-listen's IP, port 0 [env:
        /// PLURESDB_WEBRTC_LISTEN; config: webrtc_listen].
        #[arg(long, value_name = "ADDR")]
        webrtc_listen: Option<std::net::SocketAddr>,
        /// Do not announce this node or look for peers on the LAN with mDNS
        /// [env: PLURESDB_MDNS=false; config: mdns = false].
        #[arg(long)]
        no_mdns: bool,
        /// How far ahead of this node's clock a received timestamp may be
        /// and still take effect at once (later ones are kept and take
        /// effect when their time comes), and how far most peers' clocks
        /// may disagree with this node's before it writes with their time
        /// (e.g. 5m, 90s) [default: 5m; env: PLURESDB_MAX_CLOCK_DRIFT;
        /// config: max_clock_drift].
        #[arg(long, value_name = "DURATION")]
        max_clock_drift: Option<String>,
        /// Join the network of the node that printed this ticket (`pluresdb
        /// invite`): adopt its network secret and remember it as a peer.
        /// `-` reads the ticket from standard input, which keeps the secret
        /// out of the shell history and the process list.
        #[arg(long, value_name = "TICKET")]
        join: Option<String>,
        /// Join with the ticket in this file (as --join).
        #[arg(long, value_name = "FILE", conflicts_with = "join")]
        join_file: Option<PathBuf>,
    },
    /// Create a node or replace its whole value.
    ///
    /// Example: pluresdb put user:123 '{"name":"Alice","friend":{"#":"user:456"}}'
    Put {
        /// Node id, e.g. user:123.
        id: String,
        /// The value: a JSON object, or - to read it from standard input.
        value: String,
    },
    /// Set some fields of a node (creating it if needed); a field set to null is removed.
    Update {
        /// Node id.
        id: String,
        /// The fields to set: a JSON object, or - to read it from standard input.
        fields: String,
    },
    /// Show a node, or the node reached by following links from it.
    Get {
        /// Node id.
        id: String,
        /// Follow the link in this field; repeat to follow a path (--follow friend --follow employer).
        #[arg(long, short = 'f', value_name = "FIELD")]
        follow: Vec<String>,
    },
    /// List nodes in id order.
    List {
        /// Only ids that start with this prefix.
        #[arg(long, short = 'p', default_value = "")]
        prefix: String,
        /// At most this many nodes.
        #[arg(long, short = 'n', default_value_t = 100)]
        limit: usize,
        /// Start after this id (the last id of the previous page).
        #[arg(long)]
        after: Option<String>,
    },
    /// Delete a node (it stays deleted unless a newer write brings it back).
    Delete {
        /// Node id.
        id: String,
    },
    /// Show the operations that produced a node's current value, oldest first.
    History {
        /// Node id.
        id: String,
    },
    /// List nodes whose fields hold concurrent values (whatever --resolver shows).
    Conflicts {
        /// Only ids that start with this prefix.
        #[arg(long, short = 'p', default_value = "")]
        prefix: String,
    },
    /// Resolve a conflict: give a field the value it keeps, superseding
    /// every concurrent value.
    Resolve {
        /// Node id.
        id: String,
        /// The field in conflict.
        field: String,
        /// Its value: any JSON (a string needs its quotes: '"Alice"').
        value: String,
    },
    /// List the peers this node is connected to or has synced with.
    Peers {
        /// Show what discovery found instead: each peer with the methods
        /// that found it (mdns, bootstrap, exchange), its addresses, whether
        /// it is of this network, and when it was last heard of.
        #[arg(long)]
        discovered: bool,
    },
    /// Show the sync status: operations held, what peers lack, traffic.
    Status,
    /// Connect the running node to another node (host:port or quic://host:port).
    Connect {
        /// The other node's address.
        address: String,
    },
    /// Close the running node's connection to a peer.
    Disconnect {
        /// The peer id.
        peer_id: String,
    },
    /// Show the settings in effect.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Import nodes from NDJSON: one {"id": ..., "value": {...}} per line.
    ///
    /// Lines are committed in batches; each committed batch is durable. With
    /// --json, a line {"committed": N} is printed after each batch. Shows a
    /// progress bar on a terminal and a summary at the end.
    Import {
        /// The file to read, or - for standard input.
        file: PathBuf,
        /// Lines per transaction.
        #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        batch_size: u64,
        /// What to do with a line that is not a valid node.
        #[arg(long, value_enum, default_value_t = OnError::Stop)]
        on_error: OnError,
    },
    /// Print this node's peer id (derived from its key in identity.key).
    Id,
    /// Print a ticket that lets another node join this node's network.
    ///
    /// The ticket holds this node's peer id, the addresses given with
    /// --address, and the network secret: share it only with nodes you trust.
    Invite {
        /// An address where this node can be reached (host:port); repeat for several.
        #[arg(long = "address", value_name = "HOST:PORT")]
        addresses: Vec<String>,
    },
    /// Manage the allowlist: peers admitted by their id.
    Trust {
        #[command(subcommand)]
        action: TrustAction,
    },
    /// Export every node as NDJSON ({"id": ..., "value": {...}} per line).
    ///
    /// Shows progress on a terminal and a summary on standard error.
    Export {
        /// The file to write; standard output when absent.
        file: Option<PathBuf>,
    },
    /// Secondary indexes: create (built with a progress bar), list, drop.
    Index {
        #[command(subcommand)]
        action: IndexAction,
    },
    /// Follows changes as a running node applies them, local and replicated:
    /// every node, one node (--id), the nodes under a prefix (--prefix), or
    /// a live query (--where conditions, or a JSON query with `prefix` and
    /// `where` as POST /query takes, without sort or steps).
    ///
    /// Prints a line per change: the operation, the node id, for a live
    /// query `matches` (the node passes it now) or `unmatches` (it passed and
    /// no longer does, or was deleted), and the node's value (`deleted`).
    /// With --json, each message of GET /changes as it comes. Runs until
    /// Ctrl-C or --count changes; falling behind resumes where it stopped
    /// (nothing missed). Needs a node running on the data directory
    /// (`pluresdb serve`): with none, nothing else writes to it.
    ///
    /// Example: pluresdb watch --prefix user: --where 'age > 30'
    Watch {
        /// A live query as JSON (`prefix` and `where`); flags add to it.
        query: Option<String>,
        /// Only ids that start with this.
        #[arg(long, short = 'p')]
        prefix: Option<String>,
        /// A condition, `FIELD OP VALUE` as `pluresdb query` takes (repeat
        /// for several; all must hold): follows a live query.
        #[arg(long = "where", short = 'w', value_name = "CONDITION")]
        conditions: Vec<String>,
        /// Only this node.
        #[arg(long, conflicts_with_all = ["prefix", "conditions", "query"])]
        id: Option<String>,
        /// First replay what was applied after this position (a JSON object
        /// of origin peer id to sequence number, as --json shows in
        /// `subscribed` and `lagged`).
        #[arg(long, value_name = "VERSION")]
        from: Option<String>,
        /// Stop after this many changes.
        #[arg(long, short = 'n')]
        count: Option<u64>,
    },
    /// Finds nodes by their fields and links.
    ///
    /// Conditions are `FIELD OP VALUE` (VALUE is JSON, or else a string):
    /// `--where 'age > 30'`, `--where 'name prefix Al'`, `--where 'tags exists'`,
    /// `--where 'age between [20,30]'`, `--where 'city in ["Oslo","Bergen"]'`.
    /// Operators: = != < <= > >= between prefix exists in. A whole query can be
    /// given as JSON (the body of POST /query); flags add to it.
    Query {
        /// A query as JSON (see POST /query in /openapi.json).
        query: Option<String>,
        /// Only ids that start with this.
        #[arg(long, short = 'p')]
        prefix: Option<String>,
        /// A condition, `FIELD OP VALUE` (repeat for several; all must hold).
        #[arg(long = "where", short = 'w', value_name = "CONDITION")]
        conditions: Vec<String>,
        /// Sort by this field (needs a ready index on it).
        #[arg(long)]
        sort: Option<String>,
        /// Sort largest first.
        #[arg(long)]
        desc: bool,
        /// A graph step, in order: `out:FIELD` follows links out through
        /// FIELD, `in:FIELD` back-links (the nodes that link here through
        /// FIELD); `out` or `in` alone: any field. Repeat for more hops (at
        /// most 8). Conditions at a hop: give the query as JSON.
        #[arg(long = "step", value_name = "DIRECTION[:FIELD]")]
        steps: Vec<String>,
        /// How many nodes at most.
        #[arg(long, short = 'n', default_value_t = 100)]
        limit: usize,
        /// Continue after a previous page (its `next`).
        #[arg(long)]
        cursor: Option<String>,
        /// Print how the query runs (which index, or a scan) instead of nodes.
        #[arg(long)]
        explain: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum IndexAction {
    /// Indexes FIELD (a dot-separated path) of the nodes under --prefix, or
    /// their links with --links; builds it over the stored nodes with a
    /// progress bar.
    Create {
        /// The field path (`age`, `address.city`).
        field: Option<String>,
        /// Index only nodes whose id starts with this.
        #[arg(long, short = 'p', default_value = "")]
        prefix: String,
        /// A back-link index (who links to a node) instead of a field.
        #[arg(long)]
        links: bool,
        /// A name (default: the prefix and the field).
        #[arg(long)]
        name: Option<String>,
        /// Return at once; the build goes on in the node.
        #[arg(long)]
        no_wait: bool,
    },
    /// Lists the indexes and how far each build is.
    List,
    /// Drops an index.
    Drop { name: String },
}

#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Print each setting, its value and where it came from.
    Show,
}

#[derive(Debug, Subcommand)]
pub enum TrustAction {
    /// Allow a peer by its id, whether or not it holds the network secret.
    Add {
        /// A peer id (12D3KooW...).
        peer_id: String,
    },
    /// Stop allowing a peer.
    Remove {
        /// A peer id.
        peer_id: String,
    },
    /// List the allowed peers and the access mode.
    List,
    /// Choose whom the node syncs with.
    Mode {
        /// secret: peers that prove they hold the network secret, plus the
        /// allowlist (the default); allowlist: only allowlisted peers; open:
        /// anyone (public data).
        #[arg(value_enum)]
        mode: AccessModeArg,
    },
}

/// The access modes, as the CLI names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AccessModeArg {
    Secret,
    Allowlist,
    Open,
}

/// What import does with a bad line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnError {
    /// Stop at the bad line (everything before it stays imported).
    Stop,
    /// Report the bad line and go on.
    Skip,
}
