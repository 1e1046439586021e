//! The command line: what `pluresdb --help` shows.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

const AFTER_HELP: &str = "\
Exit codes:
  0  success
  1  failure: storage error, data directory locked or corrupted
  2  invalid input: bad arguments, invalid JSON, a non-object value, a bad node id
  3  not found: the node (or the target of a followed link) does not exist

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

    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,

    /// How readers see concurrent writes to the same field.
    #[arg(long, global = true, env = "PLURESDB_RESOLVER", value_enum, default_value_t = Resolver::LastWriterWins)]
    pub resolver: Resolver,

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
pub enum Command {
    /// Run the node: serve the HTTP API until Ctrl-C or SIGTERM.
    ///
    /// Prints the peer id and the API address. The API listens on loopback
    /// only for now (other addresses need the API token that comes with the
    /// API issue); networking with other nodes comes with the QUIC engine.
    Serve {
        /// Address of the HTTP API (port 0 picks a free port).
        #[arg(long, env = "PLURESDB_API_ADDR", default_value = pluresdb_server::DEFAULT_API_ADDR)]
        api_addr: std::net::SocketAddr,
        /// Join the network of the node that printed this ticket (`pluresdb
        /// invite`): adopt its network secret and remember it as a peer.
        #[arg(long, value_name = "TICKET")]
        join: Option<String>,
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
    /// Import nodes from NDJSON: one {"id": ..., "value": {...}} per line.
    ///
    /// Lines are committed in batches; each committed batch is durable. With
    /// --json, a line {"committed": N} is printed after each batch.
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
    Export {
        /// The file to write; standard output when absent.
        file: Option<PathBuf>,
    },
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
