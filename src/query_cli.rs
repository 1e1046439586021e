//! `pluresdb index ...` and `pluresdb query`: secondary indexes and queries
//! through the API (`/indexes`, `/query`).

use crate::api_client::{encode, error_for, Api, Payload};
use crate::cli::IndexAction;
use crate::{InvalidInput, Unavailable};
use anyhow::Context;
use serde_json::{json, Value};
use std::io::Write;
use std::time::{Duration, Instant};

/// How often `index create` asks how far the build is.
const PROGRESS_POLL: Duration = Duration::from_millis(100);

pub fn index(out: &mut impl Write, api: &mut Api, json: bool, action: IndexAction) -> anyhow::Result<()> {
    match action {
        IndexAction::Create { field, prefix, links, name, no_wait } => {
            let spec = json!({"name": name, "prefix": prefix, "field": field, "links": links});
            let started = Instant::now();
            let mut doc = api.call("POST", "/indexes", Some(&Payload::Json(spec)))?;
            let name = doc["name"].as_str().unwrap_or_default().to_owned();
            if !no_wait {
                let bar = crate::commands::progress(json, doc["total"].as_u64());
                if let Some(bar) = &bar {
                    bar.set_style(
                        indicatif::ProgressStyle::with_template("{spinner} {pos}/{len} nodes [{bar:30}] {msg} ({eta} left)")
                            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                    );
                    bar.set_message(format!("building {name}"));
                }
                while doc["state"] != "ready" {
                    std::thread::sleep(PROGRESS_POLL);
                    doc = api.call("GET", &format!("/indexes/{}", encode(&name)), None)?;
                    if let Some(bar) = &bar {
                        bar.set_length(doc["total"].as_u64().unwrap_or(0).max(doc["indexed"].as_u64().unwrap_or(0)));
                        bar.set_position(doc["indexed"].as_u64().unwrap_or(0));
                    }
                }
                if let Some(bar) = bar {
                    bar.finish_and_clear();
                }
            }
            if json {
                writeln!(out, "{doc}")?;
            } else if doc["state"] == "ready" {
                writeln!(out, "index {name} is ready ({:.1} s)", started.elapsed().as_secs_f64())?;
            } else {
                writeln!(out, "index {name} is being built (pluresdb index list shows how far)")?;
            }
            Ok(())
        }
        IndexAction::List => {
            let doc = api.call("GET", "/indexes", None)?;
            if json {
                writeln!(out, "{doc}")?;
                return Ok(());
            }
            for index in doc.as_array().into_iter().flatten() {
                let what = match index["field"].as_str() {
                    Some(field) => field.to_owned(),
                    None => "links".to_owned(),
                };
                let state = match (index["state"].as_str(), index["indexed"].as_u64(), index["total"].as_u64()) {
                    (Some("building"), Some(done), Some(total)) => format!("building {done}/{total}"),
                    (state, _, _) => state.unwrap_or_default().to_owned(),
                };
                let text = |key: &str| index[key].as_str().unwrap_or_default().to_owned();
                writeln!(out, "{}\tprefix {:?}\t{what}\t{state}", text("name"), text("prefix"))?;
            }
            Ok(())
        }
        IndexAction::Drop { name } => {
            let doc = api.call("DELETE", &format!("/indexes/{}", encode(&name)), None)?;
            if json {
                writeln!(out, "{doc}")?;
            } else {
                writeln!(out, "dropped index {name}")?;
            }
            Ok(())
        }
    }
}

/// The flags of `pluresdb query`.
pub struct QueryFlags {
    pub prefix: Option<String>,
    pub conditions: Vec<String>,
    pub sort: Option<String>,
    pub desc: bool,
    pub steps: Vec<String>,
    pub limit: usize,
    pub cursor: Option<String>,
    pub explain: bool,
}

/// The operators, longest first (so `<=` is not read as `<`).
const OPERATORS: [&str; 10] = ["between", "exists", "prefix", "!=", "<=", ">=", "in", "=", "<", ">"];

/// Reads `FIELD OP VALUE` (VALUE as JSON, or else a string; none for
/// `exists`).
pub fn parse_condition(text: &str) -> anyhow::Result<Value> {
    let text = text.trim();
    let bad = || {
        InvalidInput(format!("cannot read condition {text:?}: write FIELD OP VALUE, e.g. 'age > 30' (operators: {})", OPERATORS.join(" ")))
    };
    // The field ends at the first space or symbol operator.
    let end = text.find(|c: char| c.is_whitespace() || "=<>!".contains(c)).ok_or_else(bad)?;
    let (field, rest) = text.split_at(end);
    let rest = rest.trim_start();
    let op = OPERATORS
        .iter()
        .find(|op| {
            rest.starts_with(**op)
                && (!op.chars().all(char::is_alphabetic) || rest[op.len()..].chars().next().is_none_or(char::is_whitespace))
        })
        .ok_or_else(bad)?;
    let operand = rest[op.len()..].trim();
    let value = match (*op, operand) {
        ("exists", "") => Value::Bool(true),
        (_, "") => return Err(bad().into()),
        (_, operand) => serde_json::from_str(operand).unwrap_or_else(|_| Value::String(operand.to_owned())),
    };
    Ok(json!({"field": field, "op": op, "value": value}))
}

fn parse_step(text: &str) -> anyhow::Result<Value> {
    let (direction, field) = match text.split_once(':') {
        Some((direction, field)) => (direction, Some(field)),
        None => (text, None),
    };
    if direction != "out" && direction != "in" {
        return Err(InvalidInput(format!("cannot read step {text:?}: write out[:FIELD] or in[:FIELD]")).into());
    }
    let field = field.filter(|f| !f.is_empty() && *f != "*");
    Ok(json!({"direction": direction, "field": field}))
}

/// The query `base` (JSON text, or an empty query) with the `--prefix` and
/// `--where` flags of `query` and `watch` added.
fn filtered_query(base: Option<&str>, prefix: Option<&str>, conditions: &[String]) -> anyhow::Result<serde_json::Map<String, Value>> {
    let query: Value = match base {
        Some(text) => serde_json::from_str(text).map_err(|err| InvalidInput(format!("the query is not valid JSON: {err}")))?,
        None => json!({}),
    };
    let Value::Object(mut object) = query else { return Err(InvalidInput("the query must be a JSON object".into()).into()) };
    if let Some(prefix) = prefix {
        object.insert("prefix".into(), json!(prefix));
    }
    if !conditions.is_empty() {
        let list = object.entry("where").or_insert_with(|| json!([]));
        let Some(list) = list.as_array_mut() else { return Err(InvalidInput("`where` must be a list".into()).into()) };
        for text in conditions {
            list.push(parse_condition(text)?);
        }
    }
    Ok(object)
}

pub fn query(out: &mut impl Write, api: &mut Api, json: bool, base: Option<&str>, flags: QueryFlags) -> anyhow::Result<()> {
    let mut object = filtered_query(base, flags.prefix.as_deref(), &flags.conditions)?;
    if let Some(field) = flags.sort {
        object.insert("sort".into(), json!({"field": field, "descending": flags.desc}));
    }
    if !flags.steps.is_empty() {
        let steps = object.entry("steps").or_insert_with(|| json!([]));
        let Some(list) = steps.as_array_mut() else { return Err(InvalidInput("`steps` must be a list".into()).into()) };
        for text in &flags.steps {
            list.push(parse_step(text)?);
        }
    }
    if let Some(cursor) = flags.cursor {
        object.insert("cursor".into(), json!(cursor));
    }
    let mut query = Value::Object(object);
    let mut nodes = Vec::new();
    let mut next = Value::Null;
    let mut plan = Value::Null;
    // Pages until the limit (or the end).
    while nodes.len() < flags.limit.max(1) {
        let page = (flags.limit.max(1) - nodes.len()).min(10_000);
        if let Some(object) = query.as_object_mut() {
            object.insert("limit".into(), json!(page));
        }
        let doc = api.call("POST", "/query", Some(&Payload::Json(query.clone())))?;
        plan = doc["plan"].clone();
        if flags.explain {
            break;
        }
        nodes.extend(doc["nodes"].as_array().cloned().unwrap_or_default());
        next = doc["next"].clone();
        match (next.as_str(), query.as_object_mut()) {
            (Some(cursor), Some(object)) => {
                object.insert("cursor".into(), json!(cursor));
            }
            _ => break,
        }
    }
    if flags.explain {
        if json {
            writeln!(out, "{plan}")?;
            return Ok(());
        }
        let describe = |access: &Value| {
            let index = access["index"].as_str().map(|i| format!(" {i}")).unwrap_or_default();
            format!("{}{index}: {}", access["method"].as_str().unwrap_or_default(), access["detail"].as_str().unwrap_or_default())
        };
        writeln!(out, "select: {}", describe(&plan["select"]))?;
        for (i, step) in plan["steps"].as_array().into_iter().flatten().enumerate() {
            writeln!(out, "step {}: {}", i + 1, describe(step))?;
        }
        return Ok(());
    }
    if json {
        writeln!(out, "{}", json!({"nodes": nodes, "next": next, "plan": plan}))?;
        return Ok(());
    }
    for node in &nodes {
        writeln!(out, "{}\t{}", node["id"].as_str().unwrap_or_default(), node["value"])?;
    }
    if let Some(next) = next.as_str() {
        eprintln!("(more: --cursor {next})");
    }
    Ok(())
}

/// The flags of `pluresdb watch`.
pub struct WatchFlags {
    pub prefix: Option<String>,
    pub conditions: Vec<String>,
    pub id: Option<String>,
    pub from: Option<String>,
    pub count: Option<u64>,
}

/// What `watch` follows, as the query string of `GET /changes` (without
/// `from`), and in words.
fn watch_params(base: Option<&str>, flags: &WatchFlags) -> anyhow::Result<(String, String)> {
    if let Some(id) = &flags.id {
        return Ok((format!("id={}", encode(id)), format!("node {id}")));
    }
    if base.is_none() && flags.conditions.is_empty() {
        return Ok(match &flags.prefix {
            Some(prefix) => (format!("prefix={}", encode(prefix)), format!("nodes under {prefix:?}")),
            None => (String::new(), "every node".to_owned()),
        });
    }
    let text = Value::Object(filtered_query(base, flags.prefix.as_deref(), &flags.conditions)?).to_string();
    Ok((format!("query={}", encode(&text)), format!("the live query {text}")))
}

/// Opens `GET /changes?{params}` on the node at `addr` as a WebSocket.
fn open_feed(addr: &str, token: Option<&str>, params: &str) -> anyhow::Result<tungstenite::WebSocket<std::net::TcpStream>> {
    use tungstenite::client::IntoClientRequest;
    let stream =
        std::net::TcpStream::connect(addr).map_err(|err| Unavailable(format!("cannot reach the running node's API at {addr}: {err}")))?;
    let mut request = format!("ws://{addr}/changes?{params}").into_client_request().context("cannot build the request")?;
    if let Some(token) = token {
        let value = format!("Bearer {token}").parse().context("the API token is not a valid header value")?;
        request.headers_mut().insert("authorization", value);
    }
    match tungstenite::client(request, stream) {
        Ok((socket, _)) => Ok(socket),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            let body = response.body().as_deref().unwrap_or_default();
            let value = serde_json::from_slice(body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()));
            Err(error_for(response.status().as_u16(), &value))
        }
        Err(err) => Err(anyhow::anyhow!("cannot open the change feed of the node at {addr}: {err}")),
    }
}

/// `pluresdb watch`: prints each change the node at `addr` applies to what
/// `flags` select, resuming (with `from`) when the feed says it fell behind.
pub fn watch(
    out: &mut impl Write,
    addr: &str,
    token: Option<&str>,
    json: bool,
    base: Option<&str>,
    flags: WatchFlags,
) -> anyhow::Result<()> {
    let (params, what) = watch_params(base, &flags)?;
    let mut from: Option<String> = match &flags.from {
        Some(text) => {
            let version: Value = serde_json::from_str(text).map_err(|err| InvalidInput(format!("--from is not valid JSON: {err}")))?;
            if !version.is_object() {
                return Err(InvalidInput("--from must be a JSON object of origin peer id to sequence number".into()).into());
            }
            Some(version.to_string())
        }
        None => None,
    };
    let mut seen = 0u64;
    if flags.count == Some(0) {
        return Ok(());
    }
    loop {
        let query = match &from {
            Some(version) if params.is_empty() => format!("from={}", encode(version)),
            Some(version) => format!("{params}&from={}", encode(version)),
            None => params.clone(),
        };
        let mut socket = open_feed(addr, token, &query)?;
        loop {
            let text = match socket.read() {
                Ok(tungstenite::Message::Text(text)) => text,
                Ok(tungstenite::Message::Close(_)) | Err(tungstenite::Error::ConnectionClosed) => {
                    return Err(Unavailable(format!("the node at {addr} closed the change feed")).into());
                }
                Ok(_) => continue,
                Err(err) => return Err(Unavailable(format!("the change feed of the node at {addr} broke: {err}")).into()),
            };
            let message: Value = serde_json::from_str(text.as_str()).context("the node sent a message that is not JSON")?;
            if json {
                writeln!(out, "{message}")?;
                out.flush()?;
            }
            match message["type"].as_str() {
                Some("subscribed") if !json => eprintln!("watching {what} (live from {})", message["version"]),
                Some("change") => {
                    if !json {
                        let node_id = message["op"]["node_id"].as_str().unwrap_or_default();
                        let kind = message["op"]["type"].as_str().unwrap_or_default();
                        let passes = match message["matches"].as_bool() {
                            Some(true) => "\tmatches",
                            Some(false) => "\tunmatches",
                            None => "",
                        };
                        let value = match &message["node"] {
                            Value::Null => "deleted".to_owned(),
                            node => node["value"].to_string(),
                        };
                        writeln!(out, "{kind}\t{node_id}{passes}\t{value}")?;
                        out.flush()?;
                    }
                    seen += 1;
                    if flags.count.is_some_and(|count| seen >= count) {
                        let _ = socket.close(None);
                        return Ok(());
                    }
                }
                Some("lagged") => {
                    if !json {
                        eprintln!("fell behind by {} changes; resuming where it stopped", message["missed"]);
                    }
                    from = Some(message["resume_from"].to_string());
                    break;
                }
                Some("error") => {
                    return Err(Unavailable(format!("the change feed stopped: {}", message["error"].as_str().unwrap_or_default())).into());
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_read_as_field_operator_value() {
        assert_eq!(parse_condition("age > 30").unwrap(), json!({"field": "age", "op": ">", "value": 30}));
        assert_eq!(parse_condition("age>=30").unwrap(), json!({"field": "age", "op": ">=", "value": 30}));
        assert_eq!(parse_condition("name prefix Al").unwrap(), json!({"field": "name", "op": "prefix", "value": "Al"}));
        assert_eq!(parse_condition("tags exists").unwrap(), json!({"field": "tags", "op": "exists", "value": true}));
        assert_eq!(parse_condition("age between [20,30]").unwrap(), json!({"field": "age", "op": "between", "value": [20, 30]}));
        assert_eq!(parse_condition("city in [\"Oslo\"]").unwrap(), json!({"field": "city", "op": "in", "value": ["Oslo"]}));
        assert_eq!(parse_condition("a.b = true").unwrap(), json!({"field": "a.b", "op": "=", "value": true}));
        assert!(parse_condition("age").is_err());
        assert!(parse_condition("age ~ 3").is_err());
        assert!(parse_condition("age >").is_err());
        assert!(parse_step("sideways").is_err());
        assert_eq!(parse_step("in:friend").unwrap(), json!({"direction": "in", "field": "friend"}));
        assert_eq!(parse_step("out").unwrap(), json!({"direction": "out", "field": null}));
    }

    #[test]
    fn watch_flags_become_the_change_feed_query() {
        let flags = |prefix: Option<&str>, conditions: &[&str], id: Option<&str>| WatchFlags {
            prefix: prefix.map(str::to_owned),
            conditions: conditions.iter().map(|c| (*c).to_owned()).collect(),
            id: id.map(str::to_owned),
            from: None,
            count: None,
        };
        assert_eq!(watch_params(None, &flags(None, &[], None)).unwrap().0, "");
        assert_eq!(watch_params(None, &flags(Some("user:"), &[], None)).unwrap().0, "prefix=user:");
        assert_eq!(watch_params(None, &flags(None, &[], Some("a b"))).unwrap().0, "id=a%20b");
        let (params, what) = watch_params(None, &flags(Some("user:"), &["age > 30"], None)).unwrap();
        assert_eq!(what, r#"the live query {"prefix":"user:","where":[{"field":"age","op":">","value":30}]}"#);
        // The query text, percent-encoded (':' may stay as it is in a query string).
        assert!(params.starts_with("query=%7B%22prefix%22:%22user:%22%2C%22where%22:%5B%7B"), "{params}");
        let (_, what) = watch_params(Some(r#"{"where":[{"field":"n","op":"exists"}]}"#), &flags(None, &["age < 3"], None)).unwrap();
        assert!(what.contains(r#"{"field":"n","op":"exists"},{"field":"age","op":"<","value":3}"#), "{what}");
        assert!(watch_params(Some("[1]"), &flags(None, &[], None)).is_err());
        assert!(watch_params(None, &flags(None, &["age ~ 3"], None)).is_err());
    }
}
