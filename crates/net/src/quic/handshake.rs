//! The PluresDB handshake on a fresh QUIC connection: the QUIC side of
//! [`crate::link`]'s admission. The control stream is the first
//! bidirectional stream (opened by the dialler); the session binding of
//! the secret proofs is 32 bytes of TLS keying material exported from the
//! connection (RFC 5705/8446, label [`EXPORTER_LABEL`]), which is unique to
//! the TLS session and known only to its two ends, so a proof cannot be
//! replayed on another connection or relayed by a man in the middle (who
//! would have two TLS sessions with different exporters); the peer ids are
//! the ones the TLS certificates proved.

use super::now;
use super::registry::Keys;
use super::stream::{self, close_code, READ_CHUNK_BYTES};
use super::transport::admit_transport;
use crate::config::{NetworkConfig, ReceiveLimits};
use crate::link::{Lane, Link, LinkConfig, LinkEnd, LinkEvent, Refusal, LINGER};
use crate::message::ErrorCode;
use crate::peer::Direction;
use crate::NetworkError;
use pluresdb_security::{tls, PeerId};
use quinn::{Connection, RecvStream, SendStream};
use rustls::pki_types::CertificateDer;

/// The TLS exporter label for the session binding of handshake proofs.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-pluresdb-hello-v1";

/// A connection whose handshake succeeded.
pub struct Handshaken {
    /// The peer id, from the certificate.
    pub peer_id: PeerId,
    /// Its text form, written once per link (for the errors and logs that
    /// name the peer).
    pub peer_text: String,
    /// Where the peer says it accepts connections (from its `hello`).
    pub listen_addresses: Vec<String>,
    /// The established link, holding any input read past the handshake
    /// (its events still to be taken).
    pub link: Link,
    /// The control stream's sending half.
    pub send: SendStream,
    /// The control stream's receiving half.
    pub recv: RecvStream,
}

/// What the link of a new connection is told besides the keys.
pub(super) struct Terms {
    pub(super) direction: Direction,
    pub(super) listen_addresses: Vec<String>,
    pub(super) limits: ReceiveLimits,
    pub(super) ask_for_peers: bool,
    /// When the handshake (QUIC's and ours) must have completed.
    pub(super) deadline: tokio::time::Instant,
}

/// A failed handshake: the error, and the refused link if this side
/// refused (its `error` frame still to be written).
struct Failure {
    error: NetworkError,
    refusal: Option<(Link, SendStream, RecvStream, Refusal)>,
}

impl From<NetworkError> for Failure {
    fn from(error: NetworkError) -> Self {
        Failure { error, refusal: None }
    }
}

/// The peer id proven by the connection's TLS handshake.
pub fn peer_id_of(connection: &Connection) -> Result<PeerId, String> {
    let identity = connection.peer_identity().ok_or("the peer presented no certificate")?;
    let certificates = identity.downcast::<Vec<CertificateDer<'static>>>().map_err(|_| "the peer identity is not a certificate chain")?;
    tls::peer_id_of_certificates(&certificates).map_err(|err| err.to_string())
}

/// Runs the handshake until `terms.deadline`, the end of the connection's
/// `handshake_timeout` for getting admitted. On refusal (by either side)
/// the connection is closed with the refusal's code and reason.
pub(super) async fn run(keys: &Keys, config: &NetworkConfig, connection: &Connection, terms: Terms) -> Result<Handshaken, NetworkError> {
    let address = connection.remote_address().to_string();
    let timeout = config.handshake_timeout;
    let peer = match peer_id_of(connection) {
        Ok(peer) => peer,
        Err(reason) => {
            connection.close(close_code(ErrorCode::AccessDenied), reason.as_bytes());
            return Err(NetworkError::Handshake { peer: address.clone(), address, reason });
        }
    };
    let deadline = terms.deadline;
    let exchange = exchange(keys, config, connection, terms, peer, &address);
    let failure = match tokio::time::timeout_at(deadline, exchange).await {
        Ok(Ok(done)) => return Ok(done),
        Ok(Err(failure)) => failure,
        Err(_) => {
            let reason = format!("handshake did not complete within {timeout:?}");
            connection.close(close_code(ErrorCode::HandshakeTimeout), reason.as_bytes());
            return Err(NetworkError::HandshakeTimeout { address, after: timeout });
        }
    };
    if let Some((link, send, _recv, refusal)) = failure.refusal {
        if let Refusal::Denied(denied) = &refusal {
            tracing::warn!(peer = %peer, %address, reason = %denied, "refused a peer");
        }
        refuse(connection, send, link, &refusal).await;
    }
    Err(failure.error)
}

/// Writes the refusal's `error` frame (and whatever the link queued
/// before it), gives the peer [`LINGER`] to read it and close, then closes
/// with its code. The receiving half is kept open until then: dropping it
/// would tell the peer to stop sending (STOP_SENDING) before it reads why.
async fn refuse(connection: &Connection, mut send: SendStream, mut link: Link, refusal: &Refusal) {
    let written = tokio::time::timeout(LINGER, async {
        while let Some(transmit) = link.poll_transmit() {
            stream::write_frame(&mut send, &transmit.frame).await?;
        }
        Ok::<_, quinn::WriteError>(())
    })
    .await;
    if matches!(written, Ok(Ok(()))) {
        let _ = send.finish();
        let _ = tokio::time::timeout(LINGER, connection.closed()).await;
    }
    connection.close(close_code(refusal.code()), refusal.message().as_bytes());
}

async fn exchange(
    keys: &Keys,
    config: &NetworkConfig,
    connection: &Connection,
    terms: Terms,
    peer: PeerId,
    address: &str,
) -> Result<Handshaken, Failure> {
    let peer_text = peer.to_string();
    let opened = match terms.direction {
        Direction::Dialled => connection.open_bi().await,
        Direction::Accepted => connection.accept_bi().await,
    };
    let (mut send, mut recv) = opened.map_err(|err| stream::connection_ended(&peer_text, &err))?;
    // Control frames go ahead of bulk data (see `link`).
    let _ = send.set_priority(1);

    let mut binding = [0u8; 32];
    connection.export_keying_material(&mut binding, EXPORTER_LABEL, b"").map_err(|_| NetworkError::Handshake {
        peer: peer_text.clone(),
        address: address.to_owned(),
        reason: "TLS keying material export failed".to_owned(),
    })?;
    let link_config = LinkConfig {
        local_peer: keys.peer_id,
        remote_peer: peer,
        binding,
        policy: keys.policy.clone(),
        listen_addresses: terms.listen_addresses,
        handshake_deadline: terms.deadline.into_std(),
        handshake_timeout: config.handshake_timeout,
        heartbeat_interval: config.heartbeat_interval,
        // QUIC's own idle timeout (`connection_timeout`) ends dead links.
        idle_timeout: None,
        limits: terms.limits,
        ask_for_peers: terms.ask_for_peers,
    };
    let mut link = Link::new(link_config, now());
    let mut listen_addresses = Vec::new();
    loop {
        let mut established = false;
        while let Some(event) = link.poll_event() {
            match event {
                // Admitted: open the connection up to a link's limits
                // before the heartbeat that says so goes out (the peer
                // opens its bulk stream only after it).
                LinkEvent::PeerAdmitted { hello, .. } => {
                    admit_transport(connection);
                    listen_addresses = hello.listen_addresses;
                }
                // Events read past this stay in the link for its task.
                LinkEvent::Established => {
                    established = true;
                    break;
                }
                LinkEvent::Closed(end) => return Err(failed(end, link, send, recv, connection, &peer_text, address)),
                // Nothing else comes before the link is established.
                _ => {}
            }
        }
        // Written before the link is registered, even when the peer's
        // hello and heartbeat arrived together: the admission heartbeat
        // must reach the peer before the sync messages that the
        // registration lets the sync engine send.
        while let Some(transmit) = link.poll_transmit() {
            stream::write_frame(&mut send, &transmit.frame).await.map_err(|err| stream::write_failed(&peer_text, &err))?;
        }
        if established {
            return Ok(Handshaken { peer_id: peer, peer_text, listen_addresses, link, send, recv });
        }
        match recv.read_chunk(READ_CHUNK_BYTES, true).await {
            Ok(Some(chunk)) => link.handle_input(Lane::Control, &chunk.bytes, now()),
            Ok(None) => link.handle_finish(Lane::Control),
            Err(err) => return Err(stream::read_failed(&peer_text, &err).into()),
        }
    }
}

/// The failure for a handshake that ended with `end`.
fn failed(end: LinkEnd, link: Link, send: SendStream, recv: RecvStream, connection: &Connection, peer: &str, address: &str) -> Failure {
    match end {
        LinkEnd::Refused(refusal) => {
            let error = LinkEnd::Refused(refusal.clone()).into_error(peer, address);
            Failure { error, refusal: Some((link, send, recv, refusal)) }
        }
        LinkEnd::PeerRefused { code, message } => {
            connection.close(close_code(code), message.as_bytes());
            LinkEnd::PeerRefused { code, message }.into_error(peer, address).into()
        }
        other => other.into_error(peer, address).into(),
    }
}
