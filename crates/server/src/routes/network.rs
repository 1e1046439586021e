//! The node in its network: peers, sync status, network info, invites and
//! the allowlist.

use crate::docs::*;
use crate::error::{parse_json, rejected, ApiError};
use crate::ApiState;
use axum::extract::rejection::{PathRejection, QueryRejection, StringRejection};
use axum::extract::{Path, Query, State};
use axum::Json;
use pluresdb_runtime::AccessMode;
use pluresdb_security::{PeerId, Ticket};
use serde::Deserialize;
use utoipa::IntoParams;

fn peer_doc(peer: &pluresdb_sync::PeerSyncStatus, link: Option<&pluresdb_net::PeerInfo>) -> PeerDoc {
    PeerDoc {
        peer_id: peer.peer_id.clone(),
        // The transport knows first: the sync engine hears of a connection
        // (or its end) a moment later.
        connected: link.map_or(peer.connected, |l| l.connected),
        transport: link.map(|l| l.transport.to_string()),
        address: link.map(|l| l.address.clone()),
        relay: link.and_then(|l| relay_of(&l.address)),
        rtt_ms: link.and_then(|l| l.rtt).map(|rtt| rtt.as_secs_f64() * 1_000.0),
        last_sync_ms: peer.last_sync_ms,
        pending_operations: peer.pending_operations,
        ops_sent: peer.traffic.ops_sent,
        ops_received: peer.traffic.ops_received,
        bytes_sent: peer.traffic.bytes_sent,
        bytes_received: peer.traffic.bytes_received,
        errors: peer.traffic.errors,
        last_error: peer.last_error.clone(),
    }
}

/// The relay a libp2p address goes through: the peer id just before
/// `/p2p-circuit` (`/ip4/.../p2p/<relay>/p2p-circuit/p2p/<peer>`).
fn relay_of(address: &str) -> Option<String> {
    let parts: Vec<&str> = address.split('/').collect();
    let circuit = parts.iter().position(|part| *part == "p2p-circuit")?;
    match circuit.checked_sub(2).map(|at| (parts[at], parts[at + 1])) {
        Some(("p2p", relay)) if !relay.is_empty() => Some(relay.to_owned()),
        _ => None,
    }
}

/// The peers this node is connected to or has synced with.
#[utoipa::path(get, path = "/peers", tag = "network", responses((status = 200, body = PeersDoc)))]
pub async fn peers(State(state): State<ApiState>) -> Result<Json<PeersDoc>, ApiError> {
    let status = state.handle.sync_status().await?;
    // The sync engine names peers by their text form.
    let links: Vec<(String, pluresdb_net::PeerInfo)> =
        state.handle.connected_peers().into_iter().map(|link| (link.peer_id.to_string(), link)).collect();
    let link_of = |peer: &str| links.iter().find(|(id, _)| id == peer).map(|(_, link)| link);
    let mut peers: Vec<PeerDoc> = status.peers.iter().map(|p| peer_doc(p, link_of(&p.peer_id))).collect();
    for (id, link) in &links {
        if !status.peers.iter().any(|p| p.peer_id == *id) {
            let unsynced = pluresdb_sync::PeerSyncStatus {
                peer_id: id.clone(),
                connected: true,
                last_sync_ms: None,
                pending_operations: 0,
                traffic: Default::default(),
                last_error: None,
            };
            peers.push(peer_doc(&unsynced, Some(link)));
        }
    }
    // A peer the transport no longer lists is not connected, whatever the
    // sync engine has heard so far.
    if !state.handle.transports().is_empty() {
        for peer in &mut peers {
            if peer.transport.is_none() {
                peer.connected = false;
            }
        }
    }
    Ok(Json(PeersDoc { peers }))
}

/// The peers discovery found: on the LAN (mDNS), from the bootstrap list,
/// and from connected peers (peer exchange), with when each was last heard
/// of.
#[utoipa::path(get, path = "/peers/discovered", tag = "network", responses((status = 200, body = DiscoveredDoc)))]
pub async fn discovered(State(state): State<ApiState>) -> Result<Json<DiscoveredDoc>, ApiError> {
    let found = state.handle.discovered_peers().await?;
    let connected: Vec<String> = state.handle.connected_peers().into_iter().map(|link| link.peer_id.to_string()).collect();
    let peers = found
        .into_iter()
        .map(|peer| DiscoveredPeerDoc {
            connected: connected.contains(&peer.id),
            peer_id: peer.peer_id().map(str::to_owned),
            address: peer.address,
            addresses: peer.addresses,
            methods: peer.methods.iter().map(|m| m.as_str().to_owned()).collect(),
            last_seen: peer.last_seen.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            same_network: peer.same_network,
            via: peer.via,
        })
        .collect();
    Ok(Json(DiscoveredDoc { discovering: state.handle.discovers(), peers }))
}

/// Connects to a node and answers its verified peer id.
#[utoipa::path(post, path = "/peers", tag = "network", request_body = ConnectRequest,
    responses((status = 200, body = ConnectedDoc), (status = 400, body = ErrorDoc), (status = 413, body = ErrorDoc),
        (status = 502, description = "The address is not a peer address, or the peer is unreachable or refused the connection", body = ErrorDoc),
        (status = 503, description = "No network transport runs in this node", body = ErrorDoc)))]
pub async fn connect(State(state): State<ApiState>, body: Result<String, StringRejection>) -> Result<Json<ConnectedDoc>, ApiError> {
    let request: ConnectRequest = parse_json(body, "{\"address\": \"host:port\"}")?;
    if request.address.trim().is_empty() {
        return Err(ApiError::bad_request("the address is empty (host:port or quic://host:port)"));
    }
    let peer_id = state.handle.connect(request.address.trim()).await?;
    Ok(Json(ConnectedDoc { peer_id: peer_id.to_string() }))
}

/// Closes the connection to a peer.
#[utoipa::path(delete, path = "/peers/{peer_id}", tag = "network", params(("peer_id" = String, Path, description = "Peer id")),
    responses((status = 200, body = PeersDoc), (status = 400, body = ErrorDoc), (status = 404, body = ErrorDoc)))]
pub async fn disconnect(State(state): State<ApiState>, peer: Result<Path<String>, PathRejection>) -> Result<Json<PeersDoc>, ApiError> {
    let Path(peer) = peer.map_err(rejected)?;
    let peer = parse_peer_id(&peer)?;
    state.handle.disconnect(&peer).await?;
    peers(State(state)).await
}

/// The sync status: what is held, what peers still lack, traffic.
#[utoipa::path(get, path = "/status", tag = "network", responses((status = 200, body = StatusDoc)))]
pub async fn status(State(state): State<ApiState>) -> Result<Json<StatusDoc>, ApiError> {
    let sync = state.handle.sync_status().await?;
    let version_vector = state.handle.reader().version_vector()?;
    let t = sync.traffic;
    let store = StoreDoc::new(&sync.store);
    Ok(Json(StatusDoc {
        store,
        peer_id: state.handle.peer_id().to_owned(),
        is_active: sync.is_active,
        pending_operations: sync.pending_operations,
        operations_held: version_vector.total(),
        version_vector: version_doc(&version_vector),
        peers_connected: sync.peers.iter().filter(|p| p.connected).count(),
        transports: state.handle.transports().into_iter().map(str::to_owned).collect(),
        traffic: TrafficDoc {
            ops_sent: t.ops_sent,
            ops_received: t.ops_received,
            bytes_sent: t.bytes_sent,
            bytes_received: t.bytes_received,
            errors: t.errors,
        },
        clock: clock_doc(&sync.clock, state.handle.peer_clock_offsets()),
        uptime_s: state.started.elapsed().as_secs(),
        forks: sync
            .forks
            .iter()
            .map(|f| ForkDoc {
                origin: f.origin.clone(),
                count: f.count,
                last_seq: f.last_seq,
                last_peer: f.last_peer.clone(),
                last_ms: f.last_ms,
            })
            .collect(),
    }))
}

fn clock_doc(clock: &pluresdb_core::ClockReport, peers: Vec<(PeerId, i64)>) -> ClockDoc {
    ClockDoc {
        max_clock_drift_ms: clock.max_clock_drift_ms,
        correction_ms: clock.wall_clock_offset_ms,
        clock: clock.clock.to_string(),
        clock_ahead_ms: clock.clock_ahead_ms,
        deferred_operations: clock.deferred_operations,
        next_deferred: clock.next_deferred.map(|t| t.to_string()),
        origins: clock.origins.iter().map(|o| OriginSkewDoc { origin: o.origin.clone(), max_ahead_ms: o.max_ahead_ms }).collect(),
        peers: peers.into_iter().map(|(peer_id, offset_ms)| PeerClockDoc { peer_id: peer_id.to_string(), offset_ms }).collect(),
    }
}

/// The network this node belongs to and who may sync with it.
#[utoipa::path(get, path = "/network", tag = "network", responses((status = 200, body = NetworkDoc)))]
pub async fn network(State(state): State<ApiState>) -> Result<Json<NetworkDoc>, ApiError> {
    Ok(Json(NetworkDoc {
        peer_id: state.handle.peer_id().to_owned(),
        network_tag: state.secret.network_tag(),
        access_mode: state.handle.access_mode()?.name().to_owned(),
        allowlist: state.handle.allowlist()?.into_iter().collect(),
        transports: state.handle.transports().into_iter().map(str::to_owned).collect(),
        listen_addresses: state.handle.listen_addresses(),
    }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InviteQuery {
    /// Addresses where this node can be reached (`host:port`), separated by commas.
    addresses: Option<String>,
    /// `svg`: the answer also holds the ticket as a QR code (`qr_svg`).
    qr: Option<String>,
}

/// A ticket that lets another node join this network (it carries the
/// network secret; the token is always needed), and with `qr=svg` the
/// same ticket as a QR code.
#[utoipa::path(get, path = "/network/invite", tag = "network", params(InviteQuery), security(("token" = [])),
    responses((status = 200, body = InviteDoc),
        (status = 400, description = "A bad address list, a `qr` other than `svg`, or a ticket too long for a QR code (name fewer addresses)", body = ErrorDoc),
        (status = 401, body = ErrorDoc)))]
pub async fn invite(State(state): State<ApiState>, query: Result<Query<InviteQuery>, QueryRejection>) -> Result<Json<InviteDoc>, ApiError> {
    let Query(q) = query.map_err(rejected)?;
    let want_qr = match q.qr.as_deref() {
        None => false,
        Some("svg") => true,
        Some(other) => return Err(ApiError::bad_request(format!("qr={other:?}: the only QR format is svg"))),
    };
    let mut addresses: Vec<String> =
        q.addresses.iter().flat_map(|a| a.split(',')).map(str::trim).filter(|a| !a.is_empty()).map(str::to_owned).collect();
    if addresses.is_empty() {
        addresses = ticket_addresses(state.handle.listen_addresses());
    }
    let peer_id: PeerId =
        state.handle.peer_id().parse().map_err(|err| ApiError::bad_request(format!("this node's peer id does not parse: {err}")))?;
    let ticket = Ticket { peer_id, addresses, secret: (*state.secret).clone() };
    let ticket = ticket.to_text().map_err(|err| ApiError::bad_request(format!("cannot make a ticket: {err}")))?;
    let qr_svg = if want_qr { Some(qr_svg(&ticket)?) } else { None };
    Ok(Json(InviteDoc { ticket, qr_svg }))
}

/// `text` as a QR code, an SVG document. It is drawn on the node (not in
/// the page) so that no encoder is shipped to every browser and the code
/// cannot disagree with the ticket beside it. Error correction M (15% of
/// the code may be unreadable: a phone's camera at a screen), 4 pixels a
/// module so that it is sharp at its natural size.
fn qr_svg(text: &str) -> Result<String, ApiError> {
    use qrcode::render::svg;
    let code = qrcode::QrCode::with_error_correction_level(text.as_bytes(), qrcode::EcLevel::M).map_err(|err| {
        ApiError::bad_request(format!("the ticket ({} characters) does not fit in a QR code ({err}): name fewer addresses", text.len()))
    })?;
    Ok(code.render::<svg::Color>().module_dimensions(4, 4).quiet_zone(true).build())
}

/// The addresses a ticket names when the caller names none: where the
/// node listens, without loopback multiaddrs when it has other ones (a node
/// on every interface lists 127.0.0.1 for libp2p, which names the joiner's
/// own machine, not this one), at most a ticket's
/// [`MAX_TICKET_ADDRESSES`](pluresdb_security::MAX_TICKET_ADDRESSES): QUIC's
/// first, as the node lists them, so a machine with many interfaces still
/// gets a ticket.
fn ticket_addresses(listen: Vec<String>) -> Vec<String> {
    let loopback = |address: &str| address.starts_with("/ip4/127.") || address.starts_with("/ip6/::1/");
    let elsewhere = listen.iter().any(|a| a.starts_with('/') && !loopback(a));
    let mut addresses: Vec<String> = listen.into_iter().filter(|a| !(elsewhere && loopback(a))).collect();
    addresses.truncate(pluresdb_security::MAX_TICKET_ADDRESSES);
    addresses
}

/// The access mode and the allowlist.
#[utoipa::path(get, path = "/trust", tag = "network", responses((status = 200, body = TrustDoc)))]
pub async fn trust(State(state): State<ApiState>) -> Result<Json<TrustDoc>, ApiError> {
    Ok(Json(TrustDoc { mode: state.handle.access_mode()?.name().to_owned(), allowlist: state.handle.allowlist()?.into_iter().collect() }))
}

/// Chooses whom the node syncs with: `secret` (peers proving the network
/// secret, plus the allowlist; the default), `allowlist`, or `open` (anyone).
#[utoipa::path(put, path = "/trust/mode", tag = "network", request_body = TrustModeRequest, security(("token" = [])),
    responses((status = 200, body = TrustDoc), (status = 400, body = ErrorDoc), (status = 401, body = ErrorDoc), (status = 413, body = ErrorDoc),
        (status = 507, description = "The disk is full: nothing was written; the node takes writes again by itself once space is freed", body = ErrorDoc,
            headers(("Retry-After" = u64, description = "Seconds after which to retry"))),
        (status = 503, description = "The store cannot write after an I/O error (or is being reopened): the write is not acknowledged; the node recovers by itself", body = ErrorDoc,
            headers(("Retry-After" = u64, description = "Seconds after which to retry")))))]
pub async fn trust_mode(State(state): State<ApiState>, body: Result<String, StringRejection>) -> Result<Json<TrustDoc>, ApiError> {
    let request: TrustModeRequest = parse_json(body, "{\"mode\": \"secret|allowlist|open\"}")?;
    let mode = AccessMode::from_name(&request.mode)
        .ok_or_else(|| ApiError::bad_request(format!("unknown access mode {:?}: secret, allowlist or open", request.mode)))?;
    state.handle.set_access_mode(mode).await?;
    trust(State(state)).await
}

/// The peer id a request's path names; a 400 naming the text otherwise.
fn parse_peer_id(text: &str) -> Result<PeerId, ApiError> {
    text.parse::<PeerId>().map_err(|err| ApiError::bad_request(format!("{text:?} is not a peer id: {err}")))
}

/// Allows a peer by its id, whether or not it holds the network secret.
#[utoipa::path(put, path = "/trust/peers/{peer_id}", tag = "network", params(("peer_id" = String, Path, description = "Peer id")), security(("token" = [])),
    responses((status = 200, body = TrustChangeDoc), (status = 400, body = ErrorDoc), (status = 401, body = ErrorDoc),
        (status = 507, description = "The disk is full: nothing was written; the node takes writes again by itself once space is freed", body = ErrorDoc,
            headers(("Retry-After" = u64, description = "Seconds after which to retry"))),
        (status = 503, description = "The store cannot write after an I/O error (or is being reopened): the write is not acknowledged; the node recovers by itself", body = ErrorDoc,
            headers(("Retry-After" = u64, description = "Seconds after which to retry")))))]
pub async fn trust_add(State(state): State<ApiState>, peer: Result<Path<String>, PathRejection>) -> Result<Json<TrustChangeDoc>, ApiError> {
    let Path(peer) = peer.map_err(rejected)?;
    let peer_id = parse_peer_id(&peer)?.to_string();
    let changed = state.handle.set_allowed(&peer_id, true).await?;
    Ok(Json(TrustChangeDoc { peer_id, allowed: true, changed }))
}

/// Stops allowing a peer.
#[utoipa::path(delete, path = "/trust/peers/{peer_id}", tag = "network", params(("peer_id" = String, Path, description = "Peer id")), security(("token" = [])),
    responses((status = 200, body = TrustChangeDoc), (status = 400, body = ErrorDoc), (status = 401, body = ErrorDoc),
        (status = 404, description = "Not on the allowlist", body = ErrorDoc),
        (status = 507, description = "The disk is full: nothing was written; the node takes writes again by itself once space is freed", body = ErrorDoc,
            headers(("Retry-After" = u64, description = "Seconds after which to retry"))),
        (status = 503, description = "The store cannot write after an I/O error (or is being reopened): the write is not acknowledged; the node recovers by itself", body = ErrorDoc,
            headers(("Retry-After" = u64, description = "Seconds after which to retry")))))]
pub async fn trust_remove(
    State(state): State<ApiState>,
    peer: Result<Path<String>, PathRejection>,
) -> Result<Json<TrustChangeDoc>, ApiError> {
    let Path(peer) = peer.map_err(rejected)?;
    let peer_id = parse_peer_id(&peer)?.to_string();
    if !state.handle.set_allowed(&peer_id, false).await? {
        return Err(ApiError::not_found(format!("{peer_id} is not on the allowlist")));
    }
    Ok(Json(TrustChangeDoc { peer_id, allowed: false, changed: true }))
}

#[cfg(test)]
mod tests {
    use super::{qr_svg, relay_of, ticket_addresses};

    #[test]
    fn a_ticket_is_drawn_as_an_svg_qr_code_and_one_too_long_is_a_400() {
        let svg = qr_svg(&format!("pluresdb1{}", "x".repeat(300))).unwrap();
        assert!(svg.contains("<svg") && svg.contains("<path"), "{svg}");
        // Version 40 at level M holds 2,331 bytes.
        let err = qr_svg(&"x".repeat(2_400)).unwrap_err();
        assert_eq!(err.status, axum::http::StatusCode::BAD_REQUEST);
    }

    #[test]
    fn a_relayed_address_names_its_relay_and_a_direct_one_none() {
        assert_eq!(relay_of("/ip4/192.0.2.1/tcp/4001/p2p/12D3R/p2p-circuit/p2p/12D3P"), Some("12D3R".to_owned()));
        assert_eq!(relay_of("/ip4/192.0.2.1/tcp/4001/p2p/12D3P"), None);
        assert_eq!(relay_of("192.0.2.1:34569"), None);
        assert_eq!(relay_of("/p2p-circuit/p2p/12D3P"), None, "a circuit address that names no relay");
    }

    #[test]
    fn a_ticket_names_no_loopback_multiaddr_beside_real_ones_and_at_most_its_limit() {
        let listen = |n: usize| -> Vec<String> {
            let mut all = vec!["192.0.2.1:34569".to_owned(), "/ip4/127.0.0.1/tcp/34579/p2p/x".to_owned()];
            all.extend((0..n).map(|i| format!("/ip4/192.0.2.{i}/tcp/34579/p2p/x")));
            all
        };
        assert_eq!(ticket_addresses(listen(1)), ["192.0.2.1:34569", "/ip4/192.0.2.0/tcp/34579/p2p/x"]);
        let many = ticket_addresses(listen(40));
        assert_eq!(many.len(), pluresdb_security::MAX_TICKET_ADDRESSES);
        assert_eq!(many[0], "192.0.2.1:34569", "QUIC's address first");
        // A node on loopback only keeps its loopback addresses.
        let local = vec!["127.0.0.1:1".to_owned(), "/ip4/127.0.0.1/tcp/2/p2p/x".to_owned()];
        assert_eq!(ticket_addresses(local.clone()), local);
    }
}
