//! What each command does.

use crate::api_client;
use crate::cli::{AccessModeArg, Cli, Command, OnError, TrustAction};
use crate::replica::{self, now_ms, Replica};
use crate::{InvalidInput, NotFound};
use anyhow::Context;
use pluresdb_core::{KeepAll, OperationType, OperationWithMetadata, Receipt, Store, Traversal};
use pluresdb_security::{PeerId, Ticket};
use pluresdb_store_redb::RedbStoreError;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::io::{BufRead, BufWriter, IsTerminal, Read, Write};
use std::path::Path;

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let json = cli.json;
    // Joining decides the network before anything else touches the directory.
    let joined = match &cli.command {
        Command::Serve { join: Some(ticket), .. } => Some(join(&cli.data_dir, ticket)?),
        _ => None,
    };
    let mut db = match replica::open(&cli.data_dir, cli.resolver) {
        Ok(db) => db,
        Err(err) => {
            // A running node holds the directory: go through its API.
            if is_locked(&err) && !matches!(cli.command, Command::Serve { .. }) {
                if let Some(addr) = api_client::running_node(&cli.data_dir) {
                    return remote(cli, &addr);
                }
            }
            return Err(err);
        }
    };
    if let Command::Serve { api_addr, .. } = cli.command {
        if let Some(ticket) = joined {
            db.commit_meta(vec![(
                BOOTSTRAP_META_KEY.to_owned(),
                pluresdb_core::codec::encode(&(ticket.peer_id.to_string(), &ticket.addresses)),
            )])?;
            eprintln!(
                "joined the network of {} ({}); connecting to it needs the QUIC engine, which is not in this build yet",
                ticket.peer_id,
                if ticket.addresses.is_empty() { "no address in the ticket".to_owned() } else { ticket.addresses.join(", ") }
            );
        }
        return crate::node::serve(db, &cli.data_dir, api_addr, json);
    }
    let out = &mut std::io::stdout().lock();
    match cli.command {
        Command::Put { id, value } => {
            let value = parse_value(&id, &value)?;
            let receipt = db.put(&id, value, now_ms())?;
            print_written(out, json, "put", &receipt_doc(&id, &receipt))
        }
        Command::Update { id, fields } => {
            let fields = parse_value(&id, &fields)?;
            let receipt = db.update(&id, fields, now_ms())?;
            print_written(out, json, "updated", &receipt_doc(&id, &receipt))
        }
        Command::Delete { id } => {
            let receipt = db.delete(&id, now_ms())?;
            print_written(out, json, "deleted", &receipt_doc(&id, &receipt))
        }
        Command::Get { id, follow } => {
            let doc = get(&db, &id, &follow)?;
            print_node(out, json, &id, &follow, &doc)
        }
        Command::List { prefix, limit, after } => {
            let nodes = db.list(&prefix, after.as_deref(), limit)?;
            let next = if nodes.len() == limit { nodes.last().map(|n| n.id.clone()) } else { None };
            let docs = nodes.iter().map(|n| pluresdb_server::node_json(&db, n)).collect::<Result<Vec<_>, _>>()?;
            print_list(out, json, &json!({"nodes": docs, "next_after": next}))
        }
        Command::History { id } => print_history(out, json, &serde_json::to_value(db.history(&id)?)?),
        Command::Conflicts { prefix } => conflicts(out, &db, json, &prefix),
        Command::Import { file, batch_size, on_error } => import(out, &mut db, json, &file, batch_size as usize, on_error),
        Command::Export { file } => export(&db, json, file.as_deref()),
        Command::Id => {
            if json {
                writeln!(out, "{}", json!({"peer_id": db.peer_id()}))?;
            } else {
                writeln!(out, "{}", db.peer_id())?;
            }
            Ok(())
        }
        Command::Invite { addresses } => invite(out, &db, json, &cli.data_dir, addresses),
        Command::Trust { action } => trust(out, &mut db, json, action),
        Command::Serve { .. } => Ok(()),
    }
}

fn is_locked(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| matches!(cause.downcast_ref::<RedbStoreError>(), Some(RedbStoreError::Locked { .. })))
}

/// Runs a command through the API of the node that holds the data
/// directory.
fn remote(cli: Cli, addr: &str) -> anyhow::Result<()> {
    use api_client::{encode, request};
    tracing::debug!(%addr, "the data directory is in use; going through the running node");
    let json = cli.json;
    let out = &mut std::io::stdout().lock();
    let node_path = |id: &str| format!("/nodes/{}", encode(id));
    match cli.command {
        Command::Put { id, value } => {
            let value = parse_value(&id, &value)?;
            print_written(out, json, "put", &request(addr, "PUT", &node_path(&id), Some(&value))?)
        }
        Command::Update { id, fields } => {
            let fields = parse_value(&id, &fields)?;
            print_written(out, json, "updated", &request(addr, "PATCH", &node_path(&id), Some(&fields))?)
        }
        Command::Delete { id } => print_written(out, json, "deleted", &request(addr, "DELETE", &node_path(&id), None)?),
        Command::Get { id, follow } => {
            if let Some(field) = follow.iter().find(|f| f.contains('.')) {
                return Err(InvalidInput(format!("cannot follow {field:?} through the API: field names with dots are not supported there")).into());
            }
            let mut path = node_path(&id);
            if !follow.is_empty() {
                let fields: Vec<String> = follow.iter().map(|f| encode(f)).collect();
                path.push_str(&format!("?follow={}", fields.join(".")));
            }
            print_node(out, json, &id, &follow, &request(addr, "GET", &path, None)?)
        }
        Command::List { prefix, limit, after } => {
            let mut path = format!("/nodes?prefix={}&limit={limit}", encode(&prefix));
            if let Some(after) = after {
                path.push_str(&format!("&after={}", encode(&after)));
            }
            print_list(out, json, &request(addr, "GET", &path, None)?)
        }
        Command::History { id } => print_history(out, json, &request(addr, "GET", &format!("{}/history", node_path(&id)), None)?),
        Command::Id => {
            let health = request(addr, "GET", "/health", None)?;
            let peer_id = health["peer_id"].as_str().unwrap_or_default();
            if json {
                writeln!(out, "{}", json!({"peer_id": peer_id}))?;
            } else {
                writeln!(out, "{peer_id}")?;
            }
            Ok(())
        }
        _ => Err(anyhow::anyhow!(
            "a node is running on this data directory (API at http://{addr}) and this command does not go through its API yet; stop the node first"
        )),
    }
}

/// The metadata key of the peer a node joined through: `(peer id, addresses)`.
const BOOTSTRAP_META_KEY: &str = "join.bootstrap";

/// Adopts the network of a ticket for the data directory `dir`.
fn join(dir: &Path, ticket: &str) -> anyhow::Result<Ticket> {
    let ticket: Ticket = ticket.trim().parse().map_err(|err| InvalidInput(format!("the ticket does not parse: {err}")))?;
    replica::create_private_dir(dir)?;
    crate::keys::join_network(dir, &ticket.secret)?;
    Ok(ticket)
}

/// The metadata key of the allowlist (CBOR list of peer ids).
const ALLOWLIST_META_KEY: &str = "trust.allowlist";

fn allowlist(db: &Replica) -> anyhow::Result<BTreeSet<String>> {
    match db.store().meta(ALLOWLIST_META_KEY)? {
        Some(bytes) => Ok(pluresdb_core::codec::decode(&bytes, "allowlist")?),
        None => Ok(BTreeSet::new()),
    }
}

fn parse_peer_id(text: &str) -> anyhow::Result<PeerId> {
    text.parse().map_err(|err| InvalidInput(format!("{text:?} is not a peer id: {err}")).into())
}

/// The metadata key of the access mode ("secret", "allowlist" or "open").
const ACCESS_MODE_META_KEY: &str = "trust.mode";

fn access_mode(db: &Replica) -> anyhow::Result<String> {
    match db.store().meta(ACCESS_MODE_META_KEY)? {
        Some(bytes) => Ok(String::from_utf8(bytes).unwrap_or_else(|_| "secret".into())),
        None => Ok("secret".into()),
    }
}

fn trust(out: &mut impl Write, db: &mut Replica, json: bool, action: TrustAction) -> anyhow::Result<()> {
    if let TrustAction::Mode { mode } = action {
        let name = match mode {
            AccessModeArg::Secret => "secret",
            AccessModeArg::Allowlist => "allowlist",
            AccessModeArg::Open => "open",
        };
        db.commit_meta(vec![(ACCESS_MODE_META_KEY.to_owned(), name.as_bytes().to_vec())])?;
        if json {
            writeln!(out, "{}", json!({"mode": name}))?;
        } else {
            writeln!(out, "access mode: {name}")?;
            if name == "open" {
                eprintln!("open mode: any peer may sync with this node; use it for public data only");
            }
        }
        return Ok(());
    }
    let mut peers = allowlist(db)?;
    let changed = match &action {
        TrustAction::Add { peer_id } => peers.insert(parse_peer_id(peer_id)?.to_string()),
        TrustAction::Remove { peer_id } => {
            let id = parse_peer_id(peer_id)?.to_string();
            if !peers.remove(&id) {
                return Err(NotFound(format!("{id} is not on the allowlist")).into());
            }
            true
        }
        TrustAction::List | TrustAction::Mode { .. } => false,
    };
    if changed {
        db.commit_meta(vec![(ALLOWLIST_META_KEY.to_owned(), pluresdb_core::codec::encode(&peers))])?;
    }
    match (&action, json) {
        (TrustAction::List, true) => writeln!(out, "{}", json!({"allowlist": peers, "mode": access_mode(db)?}))?,
        (TrustAction::List, false) => {
            writeln!(out, "access mode: {}", access_mode(db)?)?;
            for peer in &peers {
                writeln!(out, "{peer}")?;
            }
            if peers.is_empty() {
                eprintln!("the allowlist is empty: peers are admitted by the network secret");
            }
        }
        (TrustAction::Add { peer_id } | TrustAction::Remove { peer_id }, true) => {
            writeln!(out, "{}", json!({"peer_id": peer_id, "allowed": matches!(action, TrustAction::Add { .. })}))?
        }
        (TrustAction::Add { peer_id }, false) => writeln!(out, "allowed {peer_id}{}", if changed { "" } else { " (already allowed)" })?,
        (TrustAction::Remove { peer_id }, false) => writeln!(out, "removed {peer_id}")?,
        (TrustAction::Mode { .. }, _) => {}
    }
    Ok(())
}

fn invite(out: &mut impl Write, db: &Replica, json: bool, dir: &Path, addresses: Vec<String>) -> anyhow::Result<()> {
    let peer_id = parse_peer_id(db.peer_id())?;
    let secret = crate::keys::network_secret(dir)?;
    let ticket = Ticket { peer_id, addresses, secret };
    let text = ticket.to_text().map_err(|err| InvalidInput(format!("cannot make a ticket: {err}")))?;
    if json {
        writeln!(out, "{}", json!({"ticket": text}))?;
    } else {
        writeln!(out, "{text}")?;
        eprintln!("this ticket carries the network secret: share it only with nodes you trust");
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

fn receipt_doc(node_id: &str, receipt: &Receipt) -> Value {
    json!({"id": node_id, "op": receipt.id.to_string(), "timestamp": receipt.timestamp.to_string()})
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

fn get(db: &Replica, id: &str, follow: &[String]) -> anyhow::Result<Value> {
    let path: Vec<&str> = follow.iter().map(String::as_str).collect();
    match db.follow(id, &path)? {
        Traversal::Reached(node) => Ok(pluresdb_server::node_json(db, &node)?),
        Traversal::NotALink { from, field, .. } => {
            Err(NotFound(format!("{}.{field} is not a link (a link is {{\"#\": \"other:id\"}})", from.id)).into())
        }
        Traversal::Dangling { from, field, target, .. } => {
            Err(NotFound(format!("{}.{field} links to {target:?}, which does not exist (a dangling link)", from.id)).into())
        }
    }
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
            let id = &v["stamp"]["id"];
            format!("{} (by {}/{})", v["value"], id[0].as_str().unwrap_or_default(), id[1])
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
        let kind = match op["type"].as_str().unwrap_or_default() {
            "CreateNode" => "create",
            "UpdateNode" => "update",
            "DeleteNode" => "delete",
            other => other,
        };
        let data = if kind == "delete" { String::new() } else { op["data"].to_string() };
        let id = &op["id"];
        let time = format_time_text(op["timestamp"].as_str().unwrap_or_default());
        writeln!(out, "{time}\t{}/{}\t{kind}\t{data}", id[0].as_str().unwrap_or_default(), id[1])?;
    }
    Ok(())
}

fn conflicts(out: &mut impl Write, db: &Replica, json: bool, prefix: &str) -> anyhow::Result<()> {
    let mut found = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let records = db.store().scan_nodes(prefix, after.as_deref(), 1_000)?;
        let Some(last) = records.last() else { break };
        after = Some(last.id.clone());
        found.extend(records.iter().filter_map(|r| r.view(&KeepAll)).filter(|n| !n.conflicts.is_empty()));
    }
    if json {
        let docs: Vec<Value> = found.iter().map(|n| json!({"id": n.id, "conflicts": n.conflicts})).collect();
        writeln!(out, "{}", Value::Array(docs))?;
        return Ok(());
    }
    for node in &found {
        for (field, values) in &node.conflicts {
            writeln!(out, "{}.{field}: {}", node.id, describe_values(&serde_json::to_value(values)?))?;
        }
    }
    if found.is_empty() {
        eprintln!("no conflicts");
    }
    Ok(())
}

/// One line of an NDJSON import or export.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    id: String,
    value: Value,
}

fn import(out: &mut impl Write, db: &mut Replica, json: bool, file: &Path, batch_size: usize, on_error: OnError) -> anyhow::Result<()> {
    let (reader, total_bytes): (Box<dyn BufRead>, Option<u64>) = if file == Path::new("-") {
        (Box::new(std::io::stdin().lock()), None)
    } else {
        let f = std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
        let len = f.metadata().ok().map(|m| m.len());
        (Box::new(std::io::BufReader::new(f)), len)
    };
    let progress = if !json && std::io::stderr().is_terminal() {
        let bar = match total_bytes {
            Some(len) => indicatif::ProgressBar::new(len),
            None => indicatif::ProgressBar::new_spinner(),
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {bytes}/{total_bytes} [{bar:30}] {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(bar)
    } else {
        None
    };

    let peer = db.peer_id().to_owned();
    let (mut imported, mut skipped, mut bytes_read) = (0u64, 0u64, 0u64);
    let mut batch = Vec::with_capacity(batch_size);
    let mut commit = |db: &mut Replica, batch: &mut Vec<OperationWithMetadata>, imported: &mut u64| -> anyhow::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let n = batch.len() as u64;
        db.commit_local(std::mem::take(batch), now_ms())?;
        *imported += n;
        if json {
            writeln!(out, "{}", json!({"committed": *imported}))?;
            out.flush()?;
        }
        Ok(())
    };

    for (index, line) in reader.lines().enumerate() {
        let number = index + 1;
        let line = line.with_context(|| format!("cannot read line {number} of {}", file.display()))?;
        bytes_read += line.len() as u64 + 1;
        if line.trim().is_empty() {
            continue;
        }
        let parsed = serde_json::from_str::<Line>(&line).map_err(|err| err.to_string()).and_then(|l| {
            pluresdb_core::validate_node_id(&l.id)
                .and_then(|()| pluresdb_core::validate_value(&l.value))
                .map(|()| l)
                .map_err(|e| e.to_string())
        });
        match parsed {
            Ok(l) => batch.push(OperationWithMetadata::new(OperationType::CreateNode, l.id, l.value, peer.as_str())),
            Err(reason) => match on_error {
                OnError::Stop => {
                    commit(db, &mut batch, &mut imported)?;
                    if let Some(bar) = &progress {
                        bar.abandon();
                    }
                    return Err(InvalidInput(format!(
                        "line {number}: {reason} (imported {imported} nodes before it; --on-error skip goes on past bad lines)"
                    ))
                    .into());
                }
                OnError::Skip => {
                    skipped += 1;
                    eprintln!("line {number}: {reason} (skipped)");
                }
            },
        }
        if batch.len() >= batch_size {
            commit(db, &mut batch, &mut imported)?;
            if let Some(bar) = &progress {
                bar.set_position(bytes_read);
                bar.set_message(format!("{imported} nodes"));
            }
        }
    }
    commit(db, &mut batch, &mut imported)?;
    if let Some(bar) = &progress {
        bar.finish_and_clear();
    }
    if json {
        writeln!(out, "{}", json!({"imported": imported, "skipped": skipped}))?;
    } else {
        writeln!(out, "imported {imported} nodes, skipped {skipped} lines")?;
    }
    Ok(())
}

fn export(db: &Replica, json: bool, file: Option<&Path>) -> anyhow::Result<()> {
    let mut sink: Box<dyn Write> = match file {
        Some(path) => Box::new(std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut writer = BufWriter::new(&mut sink);
    let mut after: Option<String> = None;
    let mut count = 0u64;
    loop {
        let nodes = db.list("", after.as_deref(), 1_000)?;
        let Some(last) = nodes.last() else { break };
        after = Some(last.id.clone());
        for node in &nodes {
            writeln!(writer, "{}", json!({"id": node.id, "value": node.value}))?;
            count += 1;
        }
    }
    writer.flush()?;
    drop(writer);
    if let Some(path) = file {
        if json {
            println!("{}", json!({"exported": count, "file": path.display().to_string()}));
        } else {
            eprintln!("exported {count} nodes to {}", path.display());
        }
    }
    Ok(())
}
