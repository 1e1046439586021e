//! Peer addresses for QUIC: `host:port` or `quic://host:port`.

use crate::NetworkError;
use std::net::SocketAddr;

/// The scheme prefix of QUIC addresses.
pub const QUIC_SCHEME: &str = "quic://";

/// `address` without its `quic://` prefix, refusing other schemes.
pub fn strip_scheme(address: &str) -> Result<&str, NetworkError> {
    let trimmed = address.trim();
    if let Some(rest) = trimmed.strip_prefix(QUIC_SCHEME) {
        return Ok(rest.trim_end_matches('/'));
    }
    if let Some((scheme, _)) = trimmed.split_once("://") {
        return Err(invalid(address, format!("scheme {scheme}:// is not QUIC (use host:port or quic://host:port)")));
    }
    Ok(trimmed)
}

/// Resolves `address` (`host:port` or `quic://host:port`) to a socket
/// address, preferring the IP family of `local` (the endpoint's own).
pub async fn resolve(address: &str, local: SocketAddr) -> Result<SocketAddr, NetworkError> {
    let host_port = strip_scheme(address)?;
    if let Ok(addr) = host_port.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if !host_port.contains(':') {
        return Err(invalid(address, "missing :port".to_owned()));
    }
    let candidates: Vec<SocketAddr> =
        tokio::net::lookup_host(host_port).await.map_err(|err| invalid(address, format!("does not resolve: {err}")))?.collect();
    candidates
        .iter()
        .find(|addr| addr.is_ipv4() == local.is_ipv4())
        .or(candidates.first())
        .copied()
        .ok_or_else(|| invalid(address, "resolves to no address".to_owned()))
}

/// The text form of a listen address, for `Hello` and logs.
pub fn quic_url(addr: SocketAddr) -> String {
    format!("{QUIC_SCHEME}{addr}")
}

fn invalid(address: &str, reason: String) -> NetworkError {
    NetworkError::InvalidAddress { address: address.to_owned(), reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn both_forms_resolve_and_other_schemes_do_not() {
        let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let want: SocketAddr = "127.0.0.1:34569".parse().unwrap();
        assert_eq!(resolve("127.0.0.1:34569", local).await.unwrap(), want);
        assert_eq!(resolve("quic://127.0.0.1:34569", local).await.unwrap(), want);
        assert_eq!(resolve("localhost:34569", local).await.unwrap().port(), 34569);
        assert!(matches!(resolve("webrtc://peer.example.com", local).await, Err(NetworkError::InvalidAddress { .. })));
        assert!(matches!(resolve("127.0.0.1", local).await, Err(NetworkError::InvalidAddress { .. })));
        assert_eq!(quic_url(want), "quic://127.0.0.1:34569");
    }
}
