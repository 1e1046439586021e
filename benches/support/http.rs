//! A keep-alive HTTP/1.1 client connection, one request at a time, for
//! the benches that drive a node's API (written by hand over `TcpStream`, so
//! the client's own cost stays small and known).
#![allow(dead_code)]
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Any connect or answer.
const STEP_DEADLINE: Duration = Duration::from_secs(10);

pub struct Connection {
    stream: TcpStream,
    /// Bytes read: the current response's head and body first.
    buf: Vec<u8>,
    request: Vec<u8>,
    body: std::ops::Range<usize>,
    /// The `Host` of every request: the node's address (the API
    /// refuses other names).
    host: String,
}

fn bad(what: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.into())
}

impl Connection {
    pub async fn open(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = tokio::time::timeout(STEP_DEADLINE, TcpStream::connect(addr))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
        stream.set_nodelay(true)?;
        Ok(Self { stream, buf: Vec::with_capacity(16 * 1024), request: Vec::with_capacity(4 * 1024), body: 0..0, host: addr.to_string() })
    }

    /// Sends a request and reads the whole answer; returns its status
    /// (the body is then in [`body`](Self::body)). Times out after
    /// [`STEP_DEADLINE`].
    pub async fn request(&mut self, method: &str, path: &str, content_type: &str, body: &[u8]) -> std::io::Result<u16> {
        tokio::time::timeout(STEP_DEADLINE, self.exchange(method, path, content_type, body))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{method} {path}: no answer in time")))?
    }

    pub fn body(&self) -> &[u8] {
        &self.buf[self.body.clone()]
    }

    async fn exchange(&mut self, method: &str, path: &str, content_type: &str, body: &[u8]) -> std::io::Result<u16> {
        // Drop the previous answer (no pipelining: nothing follows it).
        self.buf.clear();
        self.request.clear();
        let _ = write!(Latin1(&mut self.request), "{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        if !body.is_empty() || method != "GET" {
            let _ = write!(Latin1(&mut self.request), "Content-Type: {content_type}\r\nContent-Length: {}\r\n", body.len());
        }
        self.request.extend_from_slice(b"\r\n");
        self.request.extend_from_slice(body);
        self.stream.write_all(&self.request).await?;

        let head_end = loop {
            if let Some(at) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            if self.buf.len() > 64 * 1024 {
                return Err(bad("response head over 64 KiB"));
            }
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).map_err(|_| bad("response head is not UTF-8"))?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
        let mut length = None;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else { continue };
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(value.trim().parse::<usize>().map_err(|_| bad(format!("bad content-length {value:?}")))?);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                return Err(bad(format!("unsupported transfer-encoding {value:?}")));
            }
        }
        let length = length.ok_or_else(|| bad("response without content-length"))?;
        while self.buf.len() < head_end + length {
            self.fill().await?;
        }
        self.body = head_end..head_end + length;
        Ok(status)
    }

    async fn fill(&mut self) -> std::io::Result<()> {
        // Into the spare capacity: no zeroed scratch buffer per read.
        self.buf.reserve(16 * 1024);
        if self.stream.read_buf(&mut self.buf).await? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the server closed the connection"));
        }
        Ok(())
    }
}

/// `write!` into a byte buffer.
struct Latin1<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Latin1<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// The status and a short excerpt of the body, for a failure report.
pub fn describe(status: u16, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    format!("HTTP {status}: {text}")
}
