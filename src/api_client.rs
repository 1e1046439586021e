//! The CLI's way to a running node: a few HTTP/1.1 requests to its API on
//! loopback. The node writes its API address to `api.addr` in the data
//! directory while it runs.

use crate::{InvalidInput, NotFound};
use anyhow::{bail, Context};
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

/// Sends one request and returns the JSON answer, turning the API's error
/// answers into the CLI's errors (404 = not found, 400 = invalid input).
pub fn request(addr: &str, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut stream = TcpStream::connect(addr).with_context(|| format!("cannot reach the running node's API at {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(60))).context("cannot set a read timeout")?;
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
        .with_context(|| format!("cannot send to the node at {addr}"))?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).with_context(|| format!("no answer from the node at {addr}"))?;
    let text = String::from_utf8_lossy(&response);
    let Some((head, body)) = text.split_once("\r\n\r\n") else { bail!("the node at {addr} sent a malformed answer") };
    let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let value: Value = serde_json::from_str(body).with_context(|| format!("the node at {addr} answered {status} without JSON"))?;
    if (200..300).contains(&status) {
        return Ok(value);
    }
    let message = value["error"].as_str().unwrap_or("unknown error").to_owned();
    match status {
        404 => Err(NotFound(message).into()),
        400 | 413 => Err(InvalidInput(message).into()),
        _ => bail!("the node answered {status}: {message}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(super::encode("user:1"), "user:1");
        assert_eq!(super::encode("a b/c?d#e%é"), "a%20b%2Fc%3Fd%23e%25%C3%A9");
    }
}
