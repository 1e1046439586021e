//! The QUIC transport's settings: TLS and transport parameters, the
//! limits a connection has before and after its peer is admitted, and the
//! socket's life.

use super::address;
use super::registry::Keys;
use crate::config::NetworkConfig;
use crate::engine::Result;
use crate::link::LINGER;
use crate::NetworkError;
use pluresdb_security::{tls, AccessPolicy, Identity};
use quinn::crypto::rustls::QuicServerConfig;
use quinn::{IdleTimeout, TransportConfig, VarInt};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The connection receive window (bytes in flight from the peer, over all
/// its streams) until the peer is admitted: enough for the handshake's
/// frames (at most 64 KiB each), small enough that the handshakes in
/// flight hold little memory.
const HANDSHAKE_RECEIVE_WINDOW: u32 = 256 * 1024;

/// The connection receive window of an admitted peer: large enough for a
/// full sync batch in flight on loopback and LAN.
const LINK_RECEIVE_WINDOW: u32 = 32 * 1024 * 1024;

/// The bulk streams an admitted peer may have open at once: one, plus one
/// being replaced. Until admission it may open none.
const LINK_UNI_STREAMS: u32 = 2;

/// Connection attempts quinn keeps waiting for the accept loop, and the
/// bytes it buffers for each and for all of them. The accept loop decides
/// on each at once, so these only matter under a flood; beyond them quinn
/// refuses new attempts itself.
const MAX_INCOMING: usize = 1_024;
const INCOMING_BUFFER_BYTES: u64 = 64 * 1024;
const INCOMING_BUFFER_TOTAL_BYTES: u64 = 4 * 1024 * 1024;

/// This node's keys with the TLS server configuration for `identity`.
pub(super) fn keys(config: &NetworkConfig, identity: Identity, policy: AccessPolicy) -> Result<Keys> {
    let transport = Arc::new(transport_config(config)?);
    let tls = tls::server_config(&identity).map_err(NetworkError::Tls)?;
    let crypto = QuicServerConfig::try_from(tls).map_err(|err| NetworkError::Config(format!("QUIC server TLS config: {err}")))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server
        .transport_config(transport.clone())
        .max_incoming(MAX_INCOMING)
        .incoming_buffer_size(INCOMING_BUFFER_BYTES)
        .incoming_buffer_size_total(INCOMING_BUFFER_TOTAL_BYTES);
    let peer_id = identity.peer_id();
    Ok(Keys { peer_id_text: peer_id.to_string(), peer_id, identity, policy, server, transport })
}

/// The transport parameters of every connection, as they stand until the
/// peer is admitted: a small connection receive window and no bulk
/// streams, so a connection that has proven nothing holds little memory.
/// [`admit_transport`] opens them up once the handshake admitted the peer.
/// The stream receive window is fixed for a connection's life in quinn; it
/// is set for admitted links, and the connection window bounds it before.
fn transport_config(config: &NetworkConfig) -> Result<TransportConfig> {
    let mut transport = TransportConfig::default();
    let idle = IdleTimeout::try_from(config.connection_timeout)
        .map_err(|_| NetworkError::Config(format!("connection_timeout {:?} is too long", config.connection_timeout)))?;
    transport.max_idle_timeout(Some(idle));
    // Heartbeats keep links alive; QUIC keep-alives cover the handshake and
    // a heartbeat interval configured longer than the timeout.
    transport.keep_alive_interval(Some(config.heartbeat_interval.min(config.connection_timeout / 2).max(Duration::from_millis(10))));
    // One control stream each way; bulk streams only after admission.
    transport.max_concurrent_bidi_streams(VarInt::from_u32(1));
    transport.max_concurrent_uni_streams(VarInt::from_u32(0));
    transport.stream_receive_window(VarInt::from_u32(8 * 1024 * 1024));
    transport.receive_window(VarInt::from_u32(HANDSHAKE_RECEIVE_WINDOW));
    transport.send_window(32 * 1024 * 1024);
    Ok(transport)
}

/// Raises the limits of [`transport_config`] to an admitted link's.
pub(super) fn admit_transport(connection: &quinn::Connection) {
    connection.set_receive_window(VarInt::from_u32(LINK_RECEIVE_WINDOW));
    connection.set_max_concurrent_uni_streams(VarInt::from_u32(LINK_UNI_STREAMS));
}

/// What this node tells peers it listens on.
pub(super) fn listen_addresses(local: SocketAddr) -> Vec<String> {
    vec![address::quic_url(local)]
}

/// Waits (at most [`LINGER`]) until the UDP port is free again. quinn
/// closes the socket in its endpoint driver task once the last handle and
/// connection are gone, which may be a moment after `stop` drops them; a
/// node restarted in the same process on the same port needs it closed.
pub(super) async fn wait_until_released(addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + LINGER;
    while std::net::UdpSocket::bind(addr).is_err() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
