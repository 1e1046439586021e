//! `pluresdb index ...` and `pluresdb query`: secondary indexes and queries
//! through the API (`/indexes`, `/query`).

use crate::api_client::{encode, Api, Payload};
use crate::cli::IndexAction;
use crate::InvalidInput;
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

pub fn query(out: &mut impl Write, api: &mut Api, json: bool, base: Option<&str>, flags: QueryFlags) -> anyhow::Result<()> {
    let mut query: Value = match base {
        Some(text) => serde_json::from_str(text).map_err(|err| InvalidInput(format!("the query is not valid JSON: {err}")))?,
        None => json!({}),
    };
    let Some(object) = query.as_object_mut() else { return Err(InvalidInput("the query must be a JSON object".into()).into()) };
    if let Some(prefix) = flags.prefix {
        object.insert("prefix".into(), json!(prefix));
    }
    if !flags.conditions.is_empty() {
        let conditions = object.entry("where").or_insert_with(|| json!([]));
        let Some(list) = conditions.as_array_mut() else { return Err(InvalidInput("`where` must be a list".into()).into()) };
        for text in &flags.conditions {
            list.push(parse_condition(text)?);
        }
    }
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
}
