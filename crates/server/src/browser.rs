//! What the API accepts from web pages.
//!
//! A page the user visits can make the browser send requests to the API at
//! `127.0.0.1`: WebSockets with no CORS at all, and "simple" requests
//! (`text/plain`, forms) with no preflight; and through DNS rebinding, a name
//! the page controls can resolve to `127.0.0.1` and make the page
//! same-origin with the API. So, as local daemons people trust do (Jupyter,
//! Syncthing's GUI), every request passes these checks before it is routed:
//!
//! - **Host**: a request names the node by one of its own addresses (on
//!   loopback `127.0.0.1`, `[::1]` or `localhost`, with the port; otherwise
//!   the address the client connected to, the listen address, or a name in
//!   `api_hosts`). Anything else is refused with 403: a rebound name never
//!   matches. Requests without a `Host` (HTTP/1.0, in-process) cannot come
//!   from a browser and pass.
//! - **Origin**: a request that carries an `Origin` (every browser request a
//!   page makes with a body, and every WebSocket) must come from the node's
//!   own origin or one named in `allowed_origins`; others get 403. Requests
//!   without one (the CLI, curl, scripts) pass.
//! - **Content type**: with an `Origin`, a body a page could send without a
//!   preflight (`text/plain`, `application/x-www-form-urlencoded`,
//!   `multipart/form-data`, or no type at all) is refused with 415, never
//!   read as JSON.
//! - **Tokens** go in a header (see [`crate::auth`]); a `token` in the query
//!   string, where it would end up in logs and browser history, is refused
//!   with 400.
//!
//! Allowed origins get CORS answers: a preflight (`OPTIONS` with
//! `Access-Control-Request-Method`) is answered 204 with the methods and
//! headers the API takes, and other answers carry
//! `Access-Control-Allow-Origin`. Nothing is ever allowed to `*`.

use crate::error::{ApiError, ConfigError};
use crate::ApiState;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// The query parameters that would carry a token in the URL.
const TOKEN_PARAMETERS: &[&str] = &["token", "access_token"];

/// Content types a page may send without a CORS preflight (the Fetch
/// standard's CORS-safelisted `Content-Type` values).
const SIMPLE_CONTENT_TYPES: &[&str] = &["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"];

/// How long a browser may cache a preflight answer, in seconds.
const PREFLIGHT_MAX_AGE_S: &str = "600";

/// The address the client's connection reached (this end of the TCP
/// connection): a `Host` naming it is the node's own. `None` if the socket
/// cannot say; then only the listen address and `api_hosts` match.
#[derive(Clone, Copy, Debug)]
pub struct LocalAddr(pub Option<SocketAddr>);

impl Connected<axum::serve::IncomingStream<'_, crate::ApiListener>> for LocalAddr {
    fn connect_info(stream: axum::serve::IncomingStream<'_, crate::ApiListener>) -> Self {
        LocalAddr(stream.io().local_addr().ok())
    }
}

/// A host as a request names it: a DNS name (lowercase), or an IP address,
/// with an optional port.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Authority {
    host: Host,
    port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Host {
    Name(String),
    Ip(IpAddr),
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Name(name) => f.write_str(name)?,
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}")?,
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]")?,
        }
        match self.port {
            Some(port) => write!(f, ":{port}"),
            None => Ok(()),
        }
    }
}

impl Authority {
    /// Parses `host`, `host:port`, `[v6]` or `[v6]:port`.
    fn parse(text: &str) -> Result<Self, String> {
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (ip, after) = rest.split_once(']').ok_or("an IPv6 address without its closing ]")?;
            let ip: std::net::Ipv6Addr = ip.parse().map_err(|_| format!("{ip:?} is not an IPv6 address"))?;
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':').ok_or("junk after the IPv6 address")?),
            };
            (Host::Ip(IpAddr::V6(ip)), port)
        } else {
            let (name, port) = match text.rsplit_once(':') {
                Some((name, port)) => (name, Some(port)),
                None => (text, None),
            };
            if name.is_empty() {
                return Err("no host name".into());
            }
            if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_') {
                return Err(format!("{name:?} is not a host name"));
            }
            let host = match name.parse::<std::net::Ipv4Addr>() {
                Ok(ip) => Host::Ip(IpAddr::V4(ip)),
                Err(_) => Host::Name(name.to_ascii_lowercase()),
            };
            (host, port)
        };
        let port = port.map(|p| p.parse::<u16>().map_err(|_| format!("{p:?} is not a port"))).transpose()?;
        Ok(Authority { host, port })
    }
}

/// An origin (`scheme://host[:port]`), normalized: lowercase, with the
/// scheme's default port filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    scheme: String,
    authority: Authority,
}

impl Origin {
    /// Parses an origin as browsers send it in the `Origin` header (and as
    /// `allowed_origins` lists it): `http://localhost:3000`,
    /// `https://app.example.com`; no path, no user info.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let invalid = |reason: String| ConfigError::Origin { value: text.to_owned(), reason };
        let (scheme, rest) = text.split_once("://").ok_or_else(|| invalid("no scheme:// (e.g. http://localhost:3000)".into()))?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme.is_empty()
            || !scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            || !scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        {
            return Err(invalid(format!("{scheme:?} is not a scheme")));
        }
        // A trailing slash is a common way to write an origin in a config.
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(invalid("an origin has no path, query or user (scheme://host[:port])".into()));
        }
        let mut authority = Authority::parse(rest).map_err(invalid)?;
        if authority.port.is_none() {
            authority.port = default_port(&scheme);
        }
        Ok(Origin { scheme, authority })
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// A name the API answers to besides its own addresses (`api_hosts`):
/// `name` matches on any port (a reverse proxy's name), `name:port` on that
/// port only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiHost(Authority);

impl ApiHost {
    /// Parses `name`, `name:port`, an IP address or `[v6]:port`.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        Authority::parse(text.trim()).map(ApiHost).map_err(|reason| ConfigError::Host { value: text.to_owned(), reason })
    }

    fn matches(&self, asked: &Authority, port: u16) -> bool {
        self.0.host == asked.host && self.0.port.is_none_or(|p| p == port)
    }
}

/// Which requests from browsers the API takes: the names it answers to and
/// the pages allowed to use it. See the module docs.
#[derive(Clone, Debug, Default)]
pub struct BrowserPolicy {
    api_hosts: Vec<ApiHost>,
    allowed_origins: Vec<Origin>,
    /// The address the API listens on (set by [`crate::serve`]).
    listen: Option<SocketAddr>,
}

/// Why a request from a browser was refused.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    Host(String),
    Origin(String),
    QueryToken,
    SimpleBody(String),
}

impl BrowserPolicy {
    /// A policy that answers the node's own addresses and origin, plus the
    /// names in `api_hosts` and the pages of `allowed_origins`.
    pub fn new(api_hosts: Vec<ApiHost>, allowed_origins: Vec<Origin>) -> Self {
        Self { api_hosts, allowed_origins, listen: None }
    }

    /// The same policy for an API listening on `addr`.
    pub fn listening_on(mut self, addr: SocketAddr) -> Self {
        self.listen = Some(addr);
        self
    }

    /// Whether `asked` names this node, for a connection that reached
    /// `local` (`port_default` when `asked` has no port).
    fn is_own(&self, asked: &Authority, port_default: u16, local: Option<SocketAddr>) -> bool {
        let port = asked.port.unwrap_or(port_default);
        if self.api_hosts.iter().any(|h| h.matches(asked, port)) {
            return true;
        }
        [local, self.listen].into_iter().flatten().filter(|own| own.port() == port).any(|own| {
            let own_ip = canonical(own.ip());
            match &asked.host {
                // An address cannot be rebound: it names what the client
                // connected to, if it is ours.
                Host::Ip(ip) => {
                    let ip = canonical(*ip);
                    ip == own_ip || (ip.is_loopback() && own_ip.is_loopback())
                }
                Host::Name(name) => name == "localhost" && own_ip.is_loopback(),
            }
        })
    }

    fn is_allowed_origin(&self, origin: &Origin, local: Option<SocketAddr>) -> bool {
        if self.allowed_origins.contains(origin) {
            return true;
        }
        // The node's own pages (its web UI), plain or behind a TLS proxy.
        let own_scheme = origin.scheme == "http" || origin.scheme == "https";
        own_scheme && origin.authority.port.is_some_and(|port| self.is_own(&origin.authority, port, local))
    }

    /// Checks a request; on success, the origin to answer with CORS
    /// headers, if it carries one.
    fn check(
        &self,
        method: &Method,
        uri: &axum::http::Uri,
        headers: &HeaderMap,
        local: Option<SocketAddr>,
    ) -> Result<Option<Origin>, Refusal> {
        let host = headers.get(header::HOST).map(|h| h.to_str().map(str::to_owned)).or_else(|| uri.authority().map(|a| Ok(a.to_string())));
        if let Some(host) = host {
            let host = host.map_err(|_| Refusal::Host("a Host header that is not text".into()))?;
            let own = Authority::parse(host.trim()).is_ok_and(|asked| self.is_own(&asked, 80, local));
            if !own {
                return Err(Refusal::Host(host));
            }
        }
        let origin = match headers.get(header::ORIGIN) {
            None => None,
            Some(value) => {
                let text = value.to_str().map_err(|_| Refusal::Origin("an Origin header that is not text".into()))?;
                // `null` (sandboxed frames, files) and junk are foreign.
                let origin = Origin::parse(text.trim()).map_err(|_| Refusal::Origin(text.to_owned()))?;
                if !self.is_allowed_origin(&origin, local) {
                    return Err(Refusal::Origin(origin.to_string()));
                }
                Some(origin)
            }
        };
        if query_has_token(uri.query()) {
            return Err(Refusal::QueryToken);
        }
        if origin.is_some() && !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            if let Some(kind) = simple_body(headers) {
                return Err(Refusal::SimpleBody(kind));
            }
        }
        Ok(origin)
    }
}

/// IPv4-mapped IPv6 addresses compare as the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn query_has_token(query: Option<&str>) -> bool {
    query.into_iter().flat_map(|q| q.split('&')).any(|pair| {
        let name = pair.split('=').next().unwrap_or_default();
        TOKEN_PARAMETERS.iter().any(|t| name.eq_ignore_ascii_case(t))
    })
}

/// The content type of a body a page could send without a preflight, if
/// this request has one: a CORS-safelisted type, or none with a body.
fn simple_body(headers: &HeaderMap) -> Option<String> {
    match headers.get(header::CONTENT_TYPE) {
        Some(value) => {
            let essence = value.to_str().ok()?.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
            SIMPLE_CONTENT_TYPES.contains(&essence.as_str()).then_some(essence)
        }
        None => {
            let length = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
            let has_body = length.is_some_and(|n| n > 0) || headers.contains_key(header::TRANSFER_ENCODING);
            has_body.then(|| "no content type".to_owned())
        }
    }
}

impl Refusal {
    fn into_error(self) -> ApiError {
        let how_to_allow = "allowed_origins in pluresdb.toml, PLURESDB_ALLOWED_ORIGINS or --allowed-origin";
        match self {
            Refusal::Host(host) => ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "this node does not answer to the name {host:?} (a page whose name resolves to this machine is not the node); \
                     use its address, or add the name to api_hosts in pluresdb.toml (PLURESDB_API_HOSTS, --api-host)"
                ),
            ),
            Refusal::Origin(origin) => ApiError::new(
                StatusCode::FORBIDDEN,
                format!("requests from web pages at {origin} are refused: the API answers its own pages and the origins in {how_to_allow}"),
            ),
            Refusal::QueryToken => ApiError::new(
                StatusCode::BAD_REQUEST,
                "a token in the URL is refused (URLs end up in logs and browser history): send `Authorization: Bearer <token>`, \
                 or for the /changes WebSocket the subprotocol `bearer.<token>` (Sec-WebSocket-Protocol)"
                    .into(),
            ),
            Refusal::SimpleBody(kind) => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "a request from a web page must send its body as application/json (application/x-ndjson for /import), not {kind}: \
                     any page can send that without asking, so it is never taken as JSON"
                ),
            ),
        }
    }
}

/// The middleware: refuses what the policy refuses, answers preflights of
/// allowed origins, and adds CORS headers to their answers.
pub async fn check_request(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let local = request.extensions().get::<ConnectInfo<LocalAddr>>().and_then(|ConnectInfo(LocalAddr(addr))| *addr);
    let origin = match state.browsers.check(request.method(), request.uri(), request.headers(), local) {
        Ok(origin) => origin,
        Err(refusal) => {
            tracing::debug!(?refusal, method = %request.method(), path = %request.uri().path(), "refused a request");
            return refusal.into_error().into_response();
        }
    };
    let Some(origin) = origin else { return next.run(request).await };
    let allow_origin = HeaderValue::from_str(&origin.to_string()).ok();
    let preflight = request.method() == Method::OPTIONS && request.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if preflight {
        let mut response = StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, PUT, POST, PATCH, DELETE"));
        headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("authorization, content-type"));
        headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static(PREFLIGHT_MAX_AGE_S));
        response
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    if let Some(allow_origin) = allow_origin {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
    }
    headers.append(header::VARY, HeaderValue::from_static("origin"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> BrowserPolicy {
        BrowserPolicy::new(
            vec![ApiHost::parse("db.example.com").unwrap(), ApiHost::parse("box.lan:8080").unwrap()],
            vec![Origin::parse("http://localhost:3000").unwrap()],
        )
        .listening_on("127.0.0.1:34570".parse().unwrap())
    }

    fn check_with(
        policy: &BrowserPolicy,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        local: &str,
    ) -> Result<Option<Origin>, Refusal> {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
        }
        policy.check(&method.parse().unwrap(), &uri.parse().unwrap(), &map, Some(local.parse().unwrap()))
    }

    fn check(method: &str, uri: &str, headers: &[(&str, &str)], local: &str) -> Result<Option<Origin>, Refusal> {
        check_with(&policy(), method, uri, headers, local)
    }

    const LOOPBACK: &str = "127.0.0.1:34570";

    #[test]
    fn hosts_of_the_node_pass_and_rebound_names_do_not() {
        for host in [
            "127.0.0.1:34570",
            "localhost:34570",
            "LOCALHOST:34570",
            "[::1]:34570",
            "127.0.0.2:34570",
            "db.example.com",
            "db.example.com:443",
            "box.lan:8080",
        ] {
            assert!(check("GET", "/nodes", &[("host", host)], LOOPBACK).is_ok(), "{host}");
        }
        for host in [
            "evil.example:34570",
            "evil.example",
            "localhost:8080",
            "127.0.0.1",
            "box.lan:9090",
            "10.0.0.1:34570",
            "localhost.:34570",
            "a b",
        ] {
            assert!(matches!(check("GET", "/nodes", &[("host", host)], LOOPBACK), Err(Refusal::Host(_))), "{host}");
        }
        assert!(check("GET", "/nodes", &[], LOOPBACK).is_ok(), "no Host: not a browser");
    }

    #[test]
    fn off_loopback_the_address_connected_to_is_the_name() {
        let everywhere = BrowserPolicy::default().listening_on("0.0.0.0:34570".parse().unwrap());
        let check = |host: &str, local: &str| check_with(&everywhere, "GET", "/", &[("host", host)], local).is_ok();
        let lan = "192.168.1.5:34570";
        assert!(check("192.168.1.5:34570", lan));
        assert!(check("[::ffff:192.168.1.5]:34570", lan), "IPv4-mapped");
        assert!(check("0.0.0.0:34570", lan), "the listen address itself");
        assert!(!check("localhost:34570", lan), "localhost is not the LAN address");
        assert!(!check("192.168.1.6:34570", lan));
        assert!(!check("mynode.lan:34570", lan), "names must be listed in api_hosts");
        assert!(check("localhost:34570", "127.0.0.1:34570"), "reached over loopback");
    }

    #[test]
    fn only_own_and_listed_origins_pass() {
        let host = ("host", "127.0.0.1:34570");
        for origin in [
            "http://127.0.0.1:34570",
            "http://localhost:34570",
            "http://localhost:3000",
            "HTTP://LOCALHOST:3000/",
            "https://db.example.com",
        ] {
            let got = check("GET", "/changes", &[host, ("origin", origin)], LOOPBACK);
            assert!(got.as_ref().is_ok_and(|o| o.is_some()), "{origin}: {got:?}");
        }
        for origin in [
            "http://evil.example",
            "null",
            "http://localhost:3001",
            "http://127.0.0.1:8080",
            "https://evil.example:34570",
            "file://",
            "junk",
        ] {
            assert!(matches!(check("GET", "/changes", &[host, ("origin", origin)], LOOPBACK), Err(Refusal::Origin(_))), "{origin}");
        }
        assert_eq!(check("GET", "/changes", &[host], LOOPBACK), Ok(None), "no Origin: not a page");
    }

    #[test]
    fn simple_bodies_with_an_origin_are_refused() {
        let (host, origin) = (("host", "127.0.0.1:34570"), ("origin", "http://localhost:3000"));
        for kind in ["text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"] {
            let got = check("POST", "/import", &[host, origin, ("content-type", kind)], LOOPBACK);
            assert!(matches!(got, Err(Refusal::SimpleBody(_))), "{kind}: {got:?}");
            assert!(check("POST", "/import", &[host, ("content-type", kind)], LOOPBACK).is_ok(), "{kind} without Origin: curl -d");
        }
        assert!(matches!(check("PUT", "/nodes/a", &[host, origin, ("content-length", "2")], LOOPBACK), Err(Refusal::SimpleBody(_))));
        assert!(check("PUT", "/trust/peers/x", &[host, origin, ("content-length", "0")], LOOPBACK).is_ok(), "no body");
        assert!(check("PUT", "/nodes/a", &[host, origin, ("content-type", "application/json")], LOOPBACK).is_ok());
    }

    #[test]
    fn tokens_in_the_query_are_refused() {
        assert_eq!(check("GET", "/nodes?token=abc", &[], LOOPBACK), Err(Refusal::QueryToken));
        assert_eq!(check("GET", "/changes?prefix=a&access_token=abc", &[], LOOPBACK), Err(Refusal::QueryToken));
        assert!(check("GET", "/nodes?prefix=token", &[], LOOPBACK).is_ok());
    }

    #[test]
    fn origins_and_hosts_in_the_config_are_checked() {
        assert!(Origin::parse("http://localhost:3000/app").is_err());
        assert!(Origin::parse("localhost:3000").is_err());
        assert!(Origin::parse("*").is_err());
        assert_eq!(Origin::parse("HTTPS://App.Example.com:443").unwrap().to_string(), "https://app.example.com:443");
        assert!(ApiHost::parse("db.example.com:notaport").is_err());
        assert!(ApiHost::parse("[::1]:8080").is_ok());
    }
}
