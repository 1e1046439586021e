//! How the CLI reaches a replica: through the HTTP API of the node that
//! runs on the data directory, or, when none runs, through the same API
//! served in-process over the directly opened replica. Either way a command
//! is the same requests and the same answers.

use crate::{InvalidInput, NotFound, StoreCannotWrite, Unavailable};
use anyhow::{bail, Context};
use axum::body::Body;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

/// The file in the data directory that holds a running node's API address.
pub const API_ADDR_FILE: &str = "api.addr";

/// The API of the node that holds `dir`, if one runs.
pub fn running_node(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(API_ADDR_FILE)).ok()?;
    let addr = text.trim().to_owned();
    (!addr.is_empty()).then_some(addr)
}

/// Percent-encodes a path segment or query value (keeps `:` readable).
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~:".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A request body: JSON, or NDJSON text.
pub enum Payload {
    Json(Value),
    Ndjson(String),
}

/// The way to the replica.
pub enum Api {
    /// A running node's API.
    Remote { addr: String, token: Option<String> },
    /// The API in-process over the replica opened here.
    Local { runtime: tokio::runtime::Runtime, router: axum::Router, node: pluresdb_runtime::Runtime, token: String },
}

impl Api {
    /// The API served in-process over `db`.
    pub fn local(db: crate::replica::Replica, secret: pluresdb_security::NetworkSecret) -> anyhow::Result<Self> {
        // One worker thread: tasks the node starts (an index build) go on
        // between this process's requests.
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().context("cannot start the async runtime")?;
        let node = {
            let _entered = runtime.enter();
            pluresdb_runtime::Runtime::start(db, Default::default())?
        };
        // Only this process talks to this router: any token will do.
        let token = format!("{:x}", std::process::id());
        let state = pluresdb_server::ApiState::new(node.handle(), secret, token.clone(), false);
        Ok(Api::Local { runtime, router: pluresdb_server::router(state), node, token })
    }

    /// Sends a request and returns the status and the JSON answer.
    pub fn send(&mut self, method: &str, path: &str, payload: Option<&Payload>) -> anyhow::Result<(u16, Value)> {
        let (content_type, body) = match payload {
            None => ("application/json", String::new()),
            Some(Payload::Json(value)) => ("application/json", value.to_string()),
            Some(Payload::Ndjson(text)) => ("application/x-ndjson", text.clone()),
        };
        match self {
            Api::Remote { addr, token } => send_remote(addr, token.as_deref(), method, path, content_type, &body),
            Api::Local { runtime, router, token, .. } => {
                use tower::ServiceExt;
                let request = axum::http::Request::builder()
                    .method(method)
                    .uri(path)
                    .header("content-type", content_type)
                    .header("authorization", format!("Bearer {token}"))
                    .body(Body::from(body))
                    .context("cannot build a request")?;
                let router = router.clone();
                runtime.block_on(async move {
                    let response = router.oneshot(request).await.context("the request failed")?;
                    let status = response.status().as_u16();
                    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.context("cannot read the answer")?;
                    let value =
                        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
                    Ok((status, value))
                })
            }
        }
    }

    /// Sends a request and returns the JSON answer, turning error answers
    /// into the CLI's errors (and so its exit codes).
    pub fn call(&mut self, method: &str, path: &str, payload: Option<&Payload>) -> anyhow::Result<Value> {
        let (status, value) = self.send(method, path, payload)?;
        if (200..300).contains(&status) {
            return Ok(value);
        }
        Err(error_for(status, &value))
    }

    /// Closes the replica opened here (every answered write is durable).
    pub fn close(self) {
        if let Api::Local { runtime, node, .. } = self {
            runtime.block_on(node.shutdown());
        }
    }
}

/// The CLI error for an API error answer.
pub fn error_for(status: u16, value: &Value) -> anyhow::Error {
    let message = value["error"].as_str().map(str::to_owned).unwrap_or_else(|| value.to_string());
    match status {
        404 => NotFound(message).into(),
        400 | 413 => InvalidInput(message).into(),
        503 => Unavailable(message).into(),
        507 => StoreCannotWrite(message).into(),
        _ => anyhow::anyhow!("the node answered {status}: {message}"),
    }
}

fn send_remote(addr: &str, token: Option<&str>, method: &str, path: &str, content_type: &str, body: &str) -> anyhow::Result<(u16, Value)> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("cannot reach the running node's API at {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(300))).context("cannot set a read timeout")?;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .with_context(|| format!("cannot send to the node at {addr}"))?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).with_context(|| format!("no answer from the node at {addr}"))?;
    let text = String::from_utf8_lossy(&response);
    let Some((head, body)) = text.split_once("\r\n\r\n") else { bail!("the node at {addr} sent a malformed answer") };
    let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let value: Value = serde_json::from_str(body).with_context(|| format!("the node at {addr} answered {status} without JSON"))?;
    Ok((status, value))
}

#[cfg(test)]
mod tests {
    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(super::encode("user:1"), "user:1");
        assert_eq!(super::encode("a b/c?d#e%é"), "a%20b%2Fc%3Fd%23e%25%C3%A9");
    }
}
