//! What each command does: requests to the replica's API (see
//! [`crate::api_client`]) and their answers printed for people or, with
//! `--json`, for scripts.

use crate::api_client::{encode, running_node, Api, Payload};
use crate::cli::{AccessModeArg, Cli, Command, ConfigAction, OnError, TrustAction};
use crate::config::Config;
use crate::replica;
use crate::InvalidInput;
use anyhow::Context;
use pluresdb_security::{PeerId, Ticket};
use pluresdb_store_redb::RedbStoreError;
use serde_json::{json, Value};
use std::io::{BufRead, BufWriter, IsTerminal, Read, Write};
use std::path::Path;
use std::time::Instant;

/// The largest import request: under the API's 2 MiB body limit.
const IMPORT_REQUEST_BYTES: usize = 1_536 * 1024;

/// Nodes per request when exporting or listing many.
const PAGE: usize = 1_000;

pub fn run(cli: Cli, config: &Config) -> anyhow::Result<()> {
    let json = cli.json;
    if let Command::Config { action: ConfigAction::Show } = &cli.command {
        let out = &mut std::io::stdout().lock();
        if json {
            writeln!(out, "{}", config.to_json())?;
        } else {
            write!(out, "{}", config.to_toml_text())?;
        }
        return Ok(());
    }
    if let Command::Serve { join: ticket, join_file, port, bind, no_network, .. } = &cli.command {
        // Joining decides the network before anything else touches the directory.
        let ticket = match (ticket.as_deref(), join_file) {
            (Some("-"), _) => {
                if std::io::stdin().is_terminal() {
                    eprintln!("paste the ticket (from `pluresdb invite` on a node of the network):");
                }
                Some(read_ticket(&mut std::io::stdin().lock(), "standard input")?)
            }
            (Some(ticket), _) => Some(ticket.to_owned()),
            (None, Some(path)) => {
                let mut file = std::fs::File::open(path)
                    .map_err(|err| InvalidInput(format!("cannot read the ticket in {}: {err}", path.display())))?;
                Some(read_ticket(&mut file, &path.display().to_string())?)
            }
            (None, None) => None,
        };
        let joined = ticket.as_deref().map(|t| join(&cli.data_dir, t)).transpose()?;
        let mut db = replica::open(&cli.data_dir, config.resolver.value, config.store_cache_bytes())?;
        // Dial what this node dialed before (a restart reconnects by itself),
        // then what the flags and the ticket name.
        let mut peers = pluresdb_runtime::stored_dialed(db.store())?;
        peers.extend(config.bootstrap.value.iter().cloned());
        if let Some(ticket) = joined {
            db.commit_meta(vec![(
                BOOTSTRAP_META_KEY.to_owned(),
                pluresdb_core::codec::encode(&(ticket.peer_id.to_string(), &ticket.addresses)),
            )])?;
            eprintln!(
                "joined the network of {} ({})",
                ticket.peer_id,
                if ticket.addresses.is_empty() { "no address in the ticket".to_owned() } else { ticket.addresses.join(", ") }
            );
            peers.extend(ticket.addresses);
        }
        let mut seen = std::collections::HashSet::new();
        peers.retain(|p| seen.insert(p.clone()));
        let network = (!no_network).then(|| crate::node::PeerSettings {
            bind: std::net::SocketAddr::new(*bind, *port),
            bootstrap: peers,
            mdns: config.mdns.value,
            mdns_interfaces: config.mdns_interfaces.value.clone(),
            quic: config.quic.value,
            libp2p: config.libp2p.value,
            libp2p_listen: config.libp2p_listen.value.clone(),
            dht: config.dht.value,
            relay: config.relay.value,
            browser_listen: config.browser_listen.value,
            // The page reaches the UDP socket where it reached the
            // WebSocket, unless told otherwise.
            webrtc_listen: config
                .webrtc
                .value
                .then(|| config.webrtc_listen.value.or_else(|| config.browser_listen.value.map(|b| std::net::SocketAddr::new(b.ip(), 0))))
                .flatten(),
        });
        return crate::node::serve(db, &cli.data_dir, config, network, json);
    }
    if let Command::Watch { query, prefix, conditions, id, from, count } = cli.command {
        let Some(addr) = running_node(&cli.data_dir) else {
            return Err(crate::Unavailable(format!(
                "no node runs on {}: watch follows a running node's changes (start one with `pluresdb serve`)",
                cli.data_dir.display()
            ))
            .into());
        };
        let flags = crate::query_cli::WatchFlags { prefix, conditions, id, from, count };
        let token = crate::keys::stored_api_token(&cli.data_dir);
        return crate::query_cli::watch(&mut std::io::stdout().lock(), &addr, token.as_deref(), json, query.as_deref(), flags);
    }
    let mut api = open_api(&cli, config)?;
    let result = execute(&mut api, cli, json);
    api.close();
    result
}

/// The running node's API if a node holds the directory; otherwise the
/// replica, opened here.
fn open_api(cli: &Cli, config: &Config) -> anyhow::Result<Api> {
    match replica::open(&cli.data_dir, config.resolver.value, config.store_cache_bytes()) {
        Ok(db) => Api::local(db, crate::keys::network_secret(&cli.data_dir)?),
        Err(err) => {
            if is_locked(&err) {
                if let Some(addr) = running_node(&cli.data_dir) {
                    tracing::debug!(%addr, "the data directory is in use; going through the running node");
                    if cli.resolver.is_some() {
                        eprintln!("note: a node runs on this directory; it shows conflicts with its own resolver (--resolver applies when no node runs)");
                    }
                    return Ok(Api::Remote { addr, token: crate::keys::stored_api_token(&cli.data_dir) });
                }
            }
            Err(err)
        }
    }
}

fn is_locked(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| matches!(cause.downcast_ref::<RedbStoreError>(), Some(RedbStoreError::Locked { .. })))
}

/// The API path of node `id`, once the id is checked (an empty id would
/// name another route).
fn node_path(id: &str) -> anyhow::Result<String> {
    pluresdb_core::validate_node_id(id)?;
    Ok(format!("/nodes/{}", encode(id)))
}

fn print_json_or(
    out: &mut impl Write,
    json: bool,
    doc: &Value,
    text: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    if json {
        writeln!(out, "{doc}")?;
    } else {
        text(out)?;
    }
    Ok(())
}

fn execute(api: &mut Api, cli: Cli, json: bool) -> anyhow::Result<()> {
    let out = &mut std::io::stdout().lock();
    match cli.command {
        Command::Put { id, value } => {
            let value = parse_value(&id, &value)?;
            print_written(out, json, "put", &api.call("PUT", &node_path(&id)?, Some(&Payload::Json(value)))?)
        }
        Command::Update { id, fields } => {
            let fields = parse_value(&id, &fields)?;
            print_written(out, json, "updated", &api.call("PATCH", &node_path(&id)?, Some(&Payload::Json(fields)))?)
        }
        Command::Delete { id } => print_written(out, json, "deleted", &api.call("DELETE", &node_path(&id)?, None)?),
        Command::Get { id, follow } => {
            if let Some(field) = follow.iter().find(|f| f.contains('.') || f.is_empty()) {
                return Err(
                    InvalidInput(format!("cannot follow {field:?}: field names to follow must be non-empty and without dots")).into()
                );
            }
            let mut path = node_path(&id)?;
            if !follow.is_empty() {
                let fields: Vec<String> = follow.iter().map(|f| encode(f)).collect();
                path.push_str(&format!("?follow={}", fields.join(".")));
            }
            print_node(out, json, &id, &follow, &api.call("GET", &path, None)?)
        }
        Command::List { prefix, limit, after } => {
            let mut nodes = Vec::new();
            let mut cursor = after;
            let mut next_after = Value::Null;
            while nodes.len() < limit {
                let page = (limit - nodes.len()).min(10_000);
                let mut path = format!("/nodes?prefix={}&limit={page}", encode(&prefix));
                if let Some(after) = &cursor {
                    path.push_str(&format!("&after={}", encode(after)));
                }
                let doc = api.call("GET", &path, None)?;
                nodes.extend(doc["nodes"].as_array().cloned().unwrap_or_default());
                next_after = doc["next_after"].clone();
                match next_after.as_str() {
                    Some(next) => cursor = Some(next.to_owned()),
                    None => break,
                }
            }
            print_list(out, json, &json!({"nodes": nodes, "next_after": next_after}))
        }
        Command::History { id } => print_history(out, json, &api.call("GET", &format!("{}/history", node_path(&id)?), None)?),
        Command::Conflicts { prefix } => conflicts(out, api, json, &prefix),
        Command::Resolve { id, field, value } => {
            let value = parse_value(&id, &value)?;
            let doc =
                api.call("POST", &format!("{}/resolve", node_path(&id)?), Some(&Payload::Json(json!({"field": field, "value": value}))))?;
            print_written(out, json, "resolved", &doc)
        }
        Command::Import { file, batch_size, on_error } => import(out, api, json, &file, batch_size as usize, on_error),
        Command::Export { file } => export(api, json, file.as_deref()),
        Command::Index { action } => crate::query_cli::index(out, api, json, action),
        Command::Query { query, prefix, conditions, sort, desc, steps, limit, cursor, explain } => {
            let flags = crate::query_cli::QueryFlags { prefix, conditions, sort, desc, steps, limit, cursor, explain };
            crate::query_cli::query(out, api, json, query.as_deref(), flags)
        }
        Command::Id => {
            let health = api.call("GET", "/health", None)?;
            let peer_id = health["peer_id"].as_str().unwrap_or_default();
            print_json_or(out, json, &json!({"peer_id": peer_id}), |o| writeln!(o, "{peer_id}"))
        }
        Command::Invite { addresses } => {
            let path = format!("/network/invite?addresses={}", encode(&addresses.join(",")));
            let doc = api.call("GET", &path, None)?;
            let ticket = doc["ticket"].as_str().unwrap_or_default();
            print_json_or(out, json, &doc, |o| writeln!(o, "{ticket}"))?;
            if !json {
                eprintln!("this ticket carries the network secret: share it only with nodes you trust");
            }
            Ok(())
        }
        Command::Trust { action } => trust(out, api, json, action),
        Command::Peers { discovered: true } => {
            let doc = api.call("GET", "/peers/discovered", None)?;
            print_json_or(out, json, &doc, |o| {
                for peer in doc["peers"].as_array().into_iter().flatten() {
                    let methods: Vec<&str> = peer["methods"].as_array().into_iter().flatten().filter_map(|m| m.as_str()).collect();
                    let state = match (peer["same_network"] == true, peer["connected"] == true) {
                        (false, _) => "other network",
                        (true, true) => "connected",
                        (true, false) => "not connected",
                    };
                    let via = peer["via"].as_str().map(|v| format!(" via {v}")).unwrap_or_default();
                    writeln!(
                        o,
                        "{}\t{}\t{state}\t{}{via}\tlast seen {}",
                        peer["peer_id"].as_str().unwrap_or("(not connected yet)"),
                        peer["address"].as_str().unwrap_or_default(),
                        methods.join(","),
                        peer["last_seen"].as_str().unwrap_or_default(),
                    )?;
                }
                Ok(())
            })?;
            if !json && doc["discovering"] != true {
                eprintln!("this node does not look for peers (no node running, or no network transport)");
            } else if !json && doc["peers"].as_array().is_none_or(|p| p.is_empty()) {
                eprintln!("nothing discovered yet");
            }
            Ok(())
        }
        Command::Peers { discovered: false } => {
            let doc = api.call("GET", "/peers", None)?;
            print_json_or(out, json, &doc, |o| {
                for peer in doc["peers"].as_array().into_iter().flatten() {
                    let link = match (peer["transport"].as_str(), peer["address"].as_str(), peer["relay"].as_str()) {
                        (Some(transport), Some(address), Some(relay)) => format!("{transport} relayed via {relay} {address}"),
                        (Some(transport), Some(address), None) => format!("{transport} direct {address}"),
                        _ => "-".to_owned(),
                    };
                    let rtt = peer["rtt_ms"].as_f64().map_or("-".to_owned(), |ms| format!("{ms:.2} ms"));
                    let last_sync =
                        peer["last_sync_ms"].as_u64().map_or("never".to_owned(), |ms| format_time(pluresdb_core::Hlc::new(ms, 0)));
                    let state = if peer["connected"] == true { "connected" } else { "disconnected" };
                    writeln!(
                        o,
                        "{}\t{state}\t{link}\trtt {rtt}\tpending {}\tlast sync {last_sync}\tsent {}\treceived {}",
                        peer["peer_id"].as_str().unwrap_or_default(),
                        peer["pending_operations"],
                        peer["ops_sent"],
                        peer["ops_received"]
                    )?;
                }
                Ok(())
            })?;
            if !json && doc["peers"].as_array().is_none_or(|p| p.is_empty()) {
                eprintln!("no peers yet");
            }
            Ok(())
        }
        Command::Status => {
            let doc = api.call("GET", "/status", None)?;
            print_json_or(out, json, &doc, |o| {
                writeln!(o, "peer id:       {}", doc["peer_id"].as_str().unwrap_or_default())?;
                writeln!(o, "operations:    {} held, {} not yet acknowledged by peers", doc["operations_held"], doc["pending_operations"])?;
                writeln!(o, "peers:         {} connected", doc["peers_connected"])?;
                let transports: Vec<&str> = doc["transports"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                writeln!(o, "transports:    {}", if transports.is_empty() { "none (API only)".to_owned() } else { transports.join(", ") })?;
                let t = &doc["traffic"];
                writeln!(
                    o,
                    "traffic:       {} ops / {} bytes sent, {} ops / {} bytes received",
                    t["ops_sent"], t["bytes_sent"], t["ops_received"], t["bytes_received"]
                )?;
                for fork in doc["forks"].as_array().into_iter().flatten() {
                    writeln!(
                        o,
                        "fork:          {} at seq {} (settled {} time(s); the other branch came from {})",
                        fork["origin"].as_str().unwrap_or_default(),
                        fork["last_seq"],
                        fork["count"],
                        fork["last_peer"].as_str().unwrap_or_default()
                    )?;
                }
                Ok(())
            })
        }
        Command::Connect { address } => {
            let doc = api.call("POST", "/peers", Some(&Payload::Json(json!({"address": address}))))?;
            print_json_or(out, json, &doc, |o| writeln!(o, "connected to {}", doc["peer_id"].as_str().unwrap_or_default()))
        }
        Command::Disconnect { peer_id } => {
            let peer_id = parse_peer_id(&peer_id)?;
            let doc = api.call("DELETE", &format!("/peers/{peer_id}"), None)?;
            print_json_or(out, json, &doc, |o| writeln!(o, "disconnected {peer_id}"))
        }
        // Handled in `run`, before a replica is opened.
        Command::Serve { .. } | Command::Config { .. } | Command::Watch { .. } => Ok(()),
    }
}

/// The metadata key of the peer a node joined through: `(peer id, addresses)`.
const BOOTSTRAP_META_KEY: &str = "join.bootstrap";

/// The largest ticket read from a file or standard input (one carries a
/// peer id, a few addresses and the secret: well under this).
const MAX_TICKET_BYTES: u64 = 64 * 1024;

/// Reads a ticket (`pluresdb invite`'s output) from `input`: its first
/// line that is not blank (so a ticket pasted on a terminal needs no
/// Ctrl-D).
fn read_ticket(input: &mut impl Read, whence: &str) -> anyhow::Result<String> {
    let mut lines = std::io::BufReader::new(input.take(MAX_TICKET_BYTES));
    let mut line = String::new();
    loop {
        line.clear();
        let read = lines.read_line(&mut line).map_err(|err| InvalidInput(format!("cannot read the ticket from {whence}: {err}")))?;
        if read == 0 {
            return Err(InvalidInput(format!("no ticket in {whence} (`pluresdb invite` on a node of the network prints one)")).into());
        }
        if !line.trim().is_empty() {
            return Ok(line.trim().to_owned());
        }
    }
}

/// Adopts the network of a ticket for the data directory `dir`.
fn join(dir: &Path, ticket: &str) -> anyhow::Result<Ticket> {
    let ticket: Ticket = ticket.trim().parse().map_err(|err| InvalidInput(format!("the ticket does not parse: {err}")))?;
    replica::create_private_dir(dir)?;
    crate::keys::join_network(dir, &ticket.secret)?;
    Ok(ticket)
}

fn trust(out: &mut impl Write, api: &mut Api, json: bool, action: TrustAction) -> anyhow::Result<()> {
    match action {
        TrustAction::Mode { mode } => {
            let name = match mode {
                AccessModeArg::Secret => "secret",
                AccessModeArg::Allowlist => "allowlist",
                AccessModeArg::Open => "open",
            };
            api.call("PUT", "/trust/mode", Some(&Payload::Json(json!({"mode": name}))))?;
            print_json_or(out, json, &json!({"mode": name}), |o| writeln!(o, "access mode: {name}"))?;
            if name == "open" && !json {
                eprintln!("open mode: any peer may sync with this node; use it for public data only");
            }
            Ok(())
        }
        TrustAction::List => {
            let doc = api.call("GET", "/trust", None)?;
            let peers: Vec<&str> = doc["allowlist"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            print_json_or(out, json, &doc, |o| {
                writeln!(o, "access mode: {}", doc["mode"].as_str().unwrap_or_default())?;
                peers.iter().try_for_each(|p| writeln!(o, "{p}"))
            })?;
            if peers.is_empty() && !json {
                eprintln!("the allowlist is empty: peers are admitted by the network secret");
            }
            Ok(())
        }
        TrustAction::Add { peer_id } => {
            let peer_id = parse_peer_id(&peer_id)?;
            let doc = api.call("PUT", &format!("/trust/peers/{peer_id}"), None)?;
            let note = if doc["changed"] == true { "" } else { " (already allowed)" };
            print_json_or(out, json, &doc, |o| writeln!(o, "allowed {}{note}", doc["peer_id"].as_str().unwrap_or_default()))
        }
        TrustAction::Remove { peer_id } => {
            let peer_id = parse_peer_id(&peer_id)?;
            let doc = api.call("DELETE", &format!("/trust/peers/{peer_id}"), None)?;
            print_json_or(out, json, &doc, |o| writeln!(o, "removed {}", doc["peer_id"].as_str().unwrap_or_default()))
        }
    }
}

fn conflicts(out: &mut impl Write, api: &mut Api, json: bool, prefix: &str) -> anyhow::Result<()> {
    let mut found = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = format!("/conflicts?prefix={}&limit={PAGE}", encode(prefix));
        if let Some(after) = &after {
            path.push_str(&format!("&after={}", encode(after)));
        }
        let doc = api.call("GET", &path, None)?;
        found.extend(doc["nodes"].as_array().cloned().unwrap_or_default());
        match doc["next_after"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    if json {
        writeln!(out, "{}", Value::Array(found))?;
        return Ok(());
    }
    for node in &found {
        for (field, values) in node["conflicts"].as_object().into_iter().flatten() {
            writeln!(out, "{}.{field}: {}", node["id"].as_str().unwrap_or_default(), describe_values(values))?;
        }
    }
    if found.is_empty() {
        eprintln!("no conflicts");
    }
    Ok(())
}

/// A progress bar on standard error when it is a terminal and the output
/// is for people.
pub(crate) fn progress(json: bool, total_bytes: Option<u64>) -> Option<indicatif::ProgressBar> {
    if json || !std::io::stderr().is_terminal() {
        return None;
    }
    let (bar, template) = match total_bytes {
        Some(len) => (indicatif::ProgressBar::new(len), "{spinner} {bytes}/{total_bytes} [{bar:30}] {msg} ({eta} left)"),
        None => (indicatif::ProgressBar::new_spinner(), "{spinner} {bytes} {msg}"),
    };
    bar.set_style(indicatif::ProgressStyle::with_template(template).unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()));
    Some(bar)
}

fn rate(count: u64, started: Instant) -> String {
    let secs = started.elapsed().as_secs_f64();
    if secs > 0.0 {
        format!("{:.1} s, {:.0}/s", secs, count as f64 / secs)
    } else {
        "0 s".to_owned()
    }
}

/// An import in progress: the batch being gathered and the totals.
struct Import<'a, W: Write> {
    api: &'a mut Api,
    out: &'a mut W,
    json: bool,
    on_error: OnError,
    bar: Option<indicatif::ProgressBar>,
    imported: u64,
    skipped: u64,
    bytes_read: u64,
    /// The batch: its NDJSON text, its line count and its first line number.
    text: String,
    lines: usize,
    first_line: u64,
}

impl<W: Write> Import<'_, W> {
    /// Sends the batch gathered so far (one durable transaction).
    fn send(&mut self) -> anyhow::Result<()> {
        if self.lines == 0 {
            return Ok(());
        }
        let policy = match self.on_error {
            OnError::Stop => "stop",
            OnError::Skip => "skip",
        };
        let path = format!("/import?on_error={policy}&first_line={}", self.first_line);
        let (status, doc) = self.api.send("POST", &path, Some(&Payload::Ndjson(std::mem::take(&mut self.text))))?;
        self.lines = 0;
        self.imported += doc["imported"].as_u64().unwrap_or(0);
        if status == 400 && doc["line"].is_u64() {
            if let Some(bar) = &self.bar {
                bar.abandon();
            }
            return Err(InvalidInput(format!(
                "{} (imported {} nodes before it; --on-error skip goes on past bad lines)",
                doc["error"].as_str().unwrap_or("a bad line"),
                self.imported
            ))
            .into());
        }
        if !(200..300).contains(&status) {
            return Err(crate::api_client::error_for(status, &doc));
        }
        for error in doc["errors"].as_array().into_iter().flatten() {
            self.skipped += 1;
            eprintln!("line {}: {} (skipped)", error["line"], error["error"].as_str().unwrap_or_default());
        }
        if self.json {
            writeln!(self.out, "{}", json!({"committed": self.imported}))?;
            self.out.flush()?;
        }
        if let Some(bar) = &self.bar {
            bar.set_position(self.bytes_read);
            bar.set_message(format!("{} nodes", self.imported));
        }
        Ok(())
    }

    /// Adds line `number` to the batch, sending the batch first if full.
    fn push(&mut self, number: u64, line: &str, batch_size: usize) -> anyhow::Result<()> {
        self.bytes_read += line.len() as u64 + 1;
        if line.len() > IMPORT_REQUEST_BYTES {
            self.send()?;
            let error = format!("line {number}: {} bytes is over the import limit of {IMPORT_REQUEST_BYTES} bytes per line", line.len());
            if self.on_error == OnError::Stop {
                return Err(InvalidInput(format!("{error} (imported {} nodes before it)", self.imported)).into());
            }
            eprintln!("{error} (skipped)");
            self.skipped += 1;
            return Ok(());
        }
        if self.lines > 0 && self.text.len() + line.len() >= IMPORT_REQUEST_BYTES {
            self.send()?;
        }
        if self.lines == 0 {
            self.first_line = number;
        }
        self.text.push_str(line);
        self.text.push('\n');
        self.lines += 1;
        // A full batch goes at once, so its acknowledgement does not wait
        // for more input.
        if self.lines >= batch_size {
            self.send()?;
        }
        Ok(())
    }
}

fn import(out: &mut impl Write, api: &mut Api, json: bool, file: &Path, batch_size: usize, on_error: OnError) -> anyhow::Result<()> {
    let (reader, total_bytes): (Box<dyn BufRead>, Option<u64>) = if file == Path::new("-") {
        (Box::new(std::io::stdin().lock()), None)
    } else {
        let f = std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
        let len = f.metadata().ok().map(|m| m.len());
        (Box::new(std::io::BufReader::new(f)), len)
    };
    let started = Instant::now();
    let mut import = Import {
        api,
        out,
        json,
        on_error,
        bar: progress(json, total_bytes),
        imported: 0,
        skipped: 0,
        bytes_read: 0,
        text: String::new(),
        lines: 0,
        first_line: 1,
    };
    for (index, line) in reader.lines().enumerate() {
        let number = index as u64 + 1;
        let line = line.with_context(|| format!("cannot read line {number} of {}", file.display()))?;
        import.push(number, &line, batch_size)?;
    }
    import.send()?;
    if let Some(bar) = &import.bar {
        bar.finish_and_clear();
    }
    let (imported, skipped) = (import.imported, import.skipped);
    if json {
        writeln!(import.out, "{}", json!({"imported": imported, "skipped": skipped}))?;
    } else {
        writeln!(import.out, "imported {imported} nodes, skipped {skipped} lines ({})", rate(imported, started))?;
    }
    Ok(())
}

fn export(api: &mut Api, json: bool, file: Option<&Path>) -> anyhow::Result<()> {
    let mut sink: Box<dyn Write> = match file {
        Some(path) => Box::new(std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut writer = BufWriter::new(&mut sink);
    let bar = if file.is_some() { progress(json, None) } else { None };
    let started = Instant::now();
    let mut after: Option<String> = None;
    let mut count = 0u64;
    loop {
        let mut path = format!("/nodes?limit={PAGE}");
        if let Some(after) = &after {
            path.push_str(&format!("&after={}", encode(after)));
        }
        let doc = api.call("GET", &path, None)?;
        for node in doc["nodes"].as_array().into_iter().flatten() {
            writeln!(writer, "{}", json!({"id": node["id"], "value": node["value"]}))?;
            count += 1;
        }
        if let Some(bar) = &bar {
            bar.set_message(format!("{count} nodes"));
            bar.tick();
        }
        match doc["next_after"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    writer.flush()?;
    drop(writer);
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    if let Some(path) = file {
        if json {
            println!("{}", json!({"exported": count, "file": path.display().to_string()}));
        } else {
            eprintln!("exported {count} nodes to {} ({})", path.display(), rate(count, started));
        }
    }
    Ok(())
}

/// Parses a value argument: JSON text, or `-` for standard input.
fn parse_value(id: &str, arg: &str) -> anyhow::Result<Value> {
    let text = if arg == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("cannot read the value from standard input")?;
        text
    } else {
        arg.to_owned()
    };
    serde_json::from_str(&text).map_err(|err| InvalidInput(format!("the value for {id:?} is not valid JSON: {err}")).into())
}

fn print_written(out: &mut impl Write, json: bool, verb: &str, doc: &Value) -> anyhow::Result<()> {
    if json {
        writeln!(out, "{doc}")?;
    } else {
        let text = |key: &str| doc[key].as_str().unwrap_or_default().to_owned();
        writeln!(out, "{verb} {} (operation {} at {})", text("id"), text("op"), format_time_text(&text("timestamp")))?;
    }
    Ok(())
}

/// [`format_time`] for a timestamp in its text form.
fn format_time_text(text: &str) -> String {
    text.parse::<pluresdb_core::Hlc>().map(format_time).unwrap_or_else(|_| text.to_owned())
}

/// A timestamp for people: UTC date and time to the millisecond, plus the
/// logical counter when it is not zero.
fn format_time(t: pluresdb_core::Hlc) -> String {
    let ms = t.wall_ms();
    let (days, rem) = ((ms / 86_400_000) as i64, ms % 86_400_000);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s, milli) = (rem / 3_600_000, rem / 60_000 % 60, rem / 1_000 % 60, rem % 1_000);
    let logical = if t.logical() == 0 { String::new() } else { format!("+{}", t.logical()) };
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{milli:03}Z{logical}")
}

fn print_node(out: &mut impl Write, json: bool, id: &str, follow: &[String], doc: &Value) -> anyhow::Result<()> {
    if json {
        writeln!(out, "{doc}")?;
        return Ok(());
    }
    if !follow.is_empty() {
        writeln!(out, "{id} -> {} -> {}", follow.join(" -> "), doc["id"].as_str().unwrap_or_default())?;
    }
    writeln!(out, "{}", serde_json::to_string_pretty(&doc["value"])?)?;
    for link in doc["links"].as_array().into_iter().flatten() {
        let state = if link["exists"] == true { "" } else { " (dangling: no such node)" };
        writeln!(out, "link {} -> {}{state}", link["field"].as_str().unwrap_or_default(), link["to"].as_str().unwrap_or_default())?;
    }
    for (field, values) in doc["conflicts"].as_object().into_iter().flatten() {
        writeln!(out, "conflict in {field}: {}", describe_values(values))?;
    }
    Ok(())
}

/// Concurrent values of a field, as `value (by origin/seq) | ...`.
fn describe_values(values: &Value) -> String {
    let shown: Vec<String> = values
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| {
            format!(
                "{} (by {} at {})",
                v["value"],
                v["op"].as_str().unwrap_or_default(),
                format_time_text(v["timestamp"].as_str().unwrap_or_default())
            )
        })
        .collect();
    shown.join(" | ")
}

fn print_list(out: &mut impl Write, json: bool, doc: &Value) -> anyhow::Result<()> {
    if json {
        writeln!(out, "{doc}")?;
        return Ok(());
    }
    for node in doc["nodes"].as_array().into_iter().flatten() {
        writeln!(out, "{}\t{}", node["id"].as_str().unwrap_or_default(), node["value"])?;
    }
    if let Some(next) = doc["next_after"].as_str() {
        eprintln!("(more: --after {next})");
    }
    Ok(())
}

fn print_history(out: &mut impl Write, json: bool, ops: &Value) -> anyhow::Result<()> {
    if json {
        writeln!(out, "{ops}")?;
        return Ok(());
    }
    for op in ops.as_array().into_iter().flatten() {
        let kind = op["type"].as_str().unwrap_or_default();
        let data = if kind == "delete" { String::new() } else { op["data"].to_string() };
        let time = format_time_text(op["timestamp"].as_str().unwrap_or_default());
        writeln!(out, "{time}\t{}\t{kind}\t{data}", op["op"].as_str().unwrap_or_default())?;
    }
    Ok(())
}

/// The peer id a command names, checked before anything is asked of the
/// node: bad input (exit code 2) that names the text and what is wrong.
fn parse_peer_id(text: &str) -> Result<PeerId, InvalidInput> {
    text.trim().parse().map_err(|err| InvalidInput(format!("{text:?} is not a peer id: {err}")))
}

#[cfg(test)]
mod tests {
    use super::format_time;
    use pluresdb_core::Hlc;

    #[test]
    fn times_print_as_utc() {
        assert_eq!(format_time(Hlc::new(0, 0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_time(Hlc::new(1_709_210_096_789, 3)), "2024-02-29T12:34:56.789Z+3");
    }
}
