//! A link over a `/pluresdb/sync/1` stream: the nonce step
//! ([`crate::handshake`]), then the transport-independent link machine
//! ([`pluresdb_net::link::Link`]) driven over the stream until it closes.
//!
//! One bidirectional stream carries both lanes (yamux and QUIC multiplex
//! it beside identify, ping and Kademlia): everything read is fed as
//! [`Lane::Control`], and the writer takes the machine's frames and
//! control frames before queued `DataSync` frames, so a catch-up batch
//! delays a heartbeat by at most the one frame being written. `sync`
//! messages go to the [`pluresdb_net::SyncHandle`], awaited, so a slow
//! consumer stops this reader and yamux/QUIC flow control then stops the
//! peer. The machine refuses a peer over its limits or sending bytes that
//! are not frames with an `error` frame; the stream closes, the engine and
//! its other links go on.

use crate::admission::{self, HandshakeSlot};
use crate::engine::{lock, Registration, Shared};
use crate::frames::{error_frame, write_frame, READ_CHUNK_BYTES};
use crate::handshake::{self, Role, LINGER};
use chrono::Utc;
use futures::io::WriteHalf;
use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::Stream;
use pluresdb_net::link::{Lane, Link as Machine, LinkConfig, LinkEnd, LinkEvent, Now};
use pluresdb_net::{
    Direction, ErrorCode, ExchangedPeer, Frame, FrameKind, Hello, NetworkError, PeerEvent, PeerInfo, PeerStats, Transport,
    MAX_EXCHANGED_ADDRESSES, PROTOCOL_VERSION,
};
use pluresdb_security::PeerId;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// Frames queued per peer for the stream's control side before
/// `send_message` answers `PeerBusy`.
pub const CONTROL_QUEUE_FRAMES: usize = 1_024;

/// `DataSync` frames queued per peer before `send_message` answers
/// `PeerBusy` (the sync engine keeps at most 4 batches in flight).
pub const BULK_QUEUE_FRAMES: usize = 16;

/// Frames of the machine's own (hello, heartbeats, answers) waiting for
/// the writer; the driver waits when it is full.
const MACHINE_QUEUE_FRAMES: usize = 64;

/// Why an incoming stream's handshake was aborted by a newer one.
const EVICTED: &str = "too many handshakes in flight";

/// A registered link, as the engine's link table holds it.
pub(crate) struct Link {
    /// Unique among this engine's links.
    pub(crate) id: u64,
    pub(crate) peer_id: PeerId,
    /// The peer id of the node that opened the sync stream.
    pub(crate) opener: PeerId,
    pub(crate) control: mpsc::Sender<Frame>,
    pub(crate) bulk: mpsc::Sender<Frame>,
    /// Whether the peer proved the network secret.
    pub(crate) proof_ok: bool,
    closer: watch::Sender<Option<String>>,
}

impl Link {
    /// Asks the link's task to say goodbye with `reason` and close.
    pub(crate) fn close(&self, reason: &str) {
        let _ = self.closer.send(Some(reason.to_owned()));
    }
}

/// A fresh sync stream with `peer`, before the nonce step.
pub(crate) struct Opened {
    pub(crate) peer: libp2p::PeerId,
    pub(crate) address: String,
    pub(crate) role: Role,
    pub(crate) stream: Stream,
    /// The handshake budget's slot of an incoming stream, given back once
    /// the peer is admitted; `None` for a stream this node opened.
    pub(crate) slot: Option<HandshakeSlot>,
}

/// Runs a sync stream from its nonce step to its end. `admitted` learns
/// the handshake's outcome: the peer id once the link is up (registered,
/// or a duplicate of the link that stays), the error otherwise.
pub(crate) async fn run(shared: Arc<Shared>, opened: Opened, admitted: Option<oneshot::Sender<Result<PeerId, NetworkError>>>) {
    let Opened { peer, address, role, stream, slot } = opened;
    let outcome = drive(&shared, peer, address, role, stream, slot, admitted).await;
    if let Some((remote, id, end)) = outcome {
        let _reporting = shared.link_reports.lock().await;
        if shared.unregister(&remote, id) {
            shared.peers.peer_disconnected(&remote);
            tracing::info!(peer = %remote, reason = %end, "peer disconnected from libp2p");
            shared.sync.deliver(PeerEvent::Disconnected { peer_id: remote, reason: end.to_string() }).await;
        }
    }
}

/// The link's part once registered: its peer, its id and how it ended.
type Registered = Option<(PeerId, u64, LinkEnd)>;

async fn drive(
    shared: &Arc<Shared>,
    peer: libp2p::PeerId,
    mut address: String,
    role: Role,
    stream: Stream,
    mut slot: Option<HandshakeSlot>,
    mut admitted: Option<oneshot::Sender<Result<PeerId, NetworkError>>>,
) -> Registered {
    let mut tell = |result: Result<PeerId, NetworkError>| {
        if let Some(tell) = admitted.take() {
            let _ = tell.send(result);
        }
    };
    let peer_text = peer.to_string();
    let (Some(keys), Some(remote)) = (shared.keys(), crate::identity::from_libp2p(&peer)) else {
        tell(Err(NetworkError::Handshake { peer: peer_text, address, reason: "not an Ed25519 peer".to_owned() }));
        return None;
    };
    let config = &shared.config;
    let started = tokio::time::Instant::now();
    let deadline = started + config.handshake_timeout;
    let (mut reader, mut writer) = stream.split();
    let listen = shared.hello_addresses();
    let hello =
        Hello { protocol_version: PROTOCOL_VERSION, peer_id: keys.peer_id_text.clone(), listen_addresses: listen.clone(), proof: None };
    let nonces = tokio::select! {
        nonces = handshake::exchange_nonces(&hello, &peer_text, role, &mut reader, &mut writer, deadline, config.handshake_timeout) => nonces,
        () = admission::evicted(&mut slot) => {
            tracing::debug!(peer = %peer_text, %address, "an incoming sync handshake gave its slot to a newer one");
            let _ = tokio::time::timeout(LINGER, write_frame(&mut writer, &error_frame(ErrorCode::TooManyConnections, EVICTED))).await;
            let _ = tokio::time::timeout(LINGER, writer.close()).await;
            return None;
        }
    };
    let binding = match nonces {
        Ok(binding) => binding,
        Err(err) => {
            tracing::info!(peer = %peer_text, %address, error = %err, "sync stream refused in its nonce step");
            tell(Err(err));
            return None;
        }
    };
    let link_config = LinkConfig {
        binding,
        listen_addresses: listen,
        handshake_deadline: deadline.into_std(),
        handshake_timeout: config.handshake_timeout,
        heartbeat_interval: config.heartbeat_interval,
        // yamux has no idle timeout of its own for one stream; the machine
        // closes a link that hears nothing for connection_timeout.
        idle_timeout: Some(config.connection_timeout),
        limits: shared.receive_limits(),
        ask_for_peers: false,
        ..LinkConfig::new(keys.peer_id, remote, keys.policy.clone(), deadline.into_std())
    };
    let mut machine = Machine::new(link_config, Now::system());

    let (machine_tx, machine_rx) = mpsc::channel(MACHINE_QUEUE_FRAMES);
    let (control, control_rx) = mpsc::channel(CONTROL_QUEUE_FRAMES);
    let (bulk, bulk_rx) = mpsc::channel(BULK_QUEUE_FRAMES);
    let (last_tx, last_rx) = oneshot::channel();
    let stats_slot: Arc<std::sync::Mutex<Option<Arc<PeerStats>>>> = Arc::default();
    let writer_task = tokio::spawn(write_loop(writer, machine_rx, control_rx, bulk_rx, last_rx, stats_slot.clone()));
    let (closer, mut close_rx) = watch::channel(None);
    let mut closer = Some(closer);
    let mut shutdown = shared.shutdown_signal();
    let mut registered: Option<(u64, Arc<PeerStats>)> = None;
    let mut proof_ok = false;
    let mut peer_hello: Option<Hello> = None;
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    let mut reader_open = true;
    // The error frame that ends the stream when this side refuses it
    // after the nonce step (the machine would say goodbye).
    let mut refusal: Option<Frame> = None;
    let end = 'run: loop {
        // Act on everything the machine has to say before the next input.
        while let Some(event) = machine.poll_event() {
            match event {
                LinkEvent::PeerAdmitted { hello, proof_ok: ok } => {
                    proof_ok = ok;
                    peer_hello = Some(hello);
                }
                LinkEvent::Established => {
                    // The heartbeat that admits the peer goes to the writer
                    // before anything the engine may send once the link is
                    // registered (the writer takes the machine's frames
                    // first).
                    while let Some(transmit) = machine.poll_transmit() {
                        if machine_tx.send(transmit.frame).await.is_err() {
                            machine.handle_lost("the sync stream's writer stopped");
                        }
                    }
                    // The swarm task records a connection's address as it
                    // reports the connection, which may come after the
                    // stream itself did.
                    if address.is_empty() {
                        address = shared.address_of_connected(&peer, LINGER).await;
                    }
                    let id = shared.next_link_id();
                    let opener = match role {
                        Role::Initiator => keys.peer_id,
                        Role::Responder => remote,
                    };
                    // Admitted: the handshake's budget slot is free again.
                    slot = None;
                    let Some(closer) = closer.take() else { continue };
                    let link = Link { id, peer_id: remote, opener, control: control.clone(), bulk: bulk.clone(), proof_ok, closer };
                    match shared.register(link) {
                        registration @ (Registration::Fresh | Registration::Replaced) => {
                            let stats = connected(
                                shared,
                                (remote, &peer),
                                &address,
                                role,
                                peer_hello.take(),
                                matches!(registration, Registration::Replaced),
                            )
                            .await;
                            *lock(&stats_slot) = Some(stats.clone());
                            registered = Some((id, stats));
                            tell(Ok(remote));
                        }
                        Registration::Duplicate => {
                            tell(Ok(remote));
                            machine.close("duplicate connection");
                        }
                        Registration::Full => {
                            let reason = format!("too many connections (limit {})", shared.config.max_connections);
                            tracing::debug!(peer = %peer_text, %address, "{reason}; refusing the sync stream");
                            refusal = Some(error_frame(ErrorCode::TooManyConnections, &reason));
                            machine.close(&reason);
                        }
                        Registration::Stopped => machine.close("node shutting down"),
                    }
                }
                LinkEvent::Sync(bytes) => {
                    if registered.is_some() {
                        shared.sync.deliver(PeerEvent::Message { peer_id: remote, bytes }).await;
                    }
                }
                LinkEvent::Heartbeat { sent } => {
                    if let Some((_, stats)) = &registered {
                        let rtt = shared.rtt_of(&peer).unwrap_or(Duration::ZERO);
                        stats.record_heartbeat(sent, rtt, Utc::now());
                        if let Some(rtt) = shared.rtt_of(&peer) {
                            stats.record_rtt(rtt);
                        }
                    }
                }
                // Peer exchange hints name QUIC addresses; the libp2p
                // engine finds peers through the DHT instead.
                LinkEvent::PeersLearned(_) => {}
                // Signalling is relayed between pages on the browser
                // WebSocket only.
                LinkEvent::Signal { .. } => {}
                LinkEvent::PeerExchangeRequested => machine.answer_peer_exchange(exchange_answer(shared, &remote)),
                LinkEvent::Closed(end) => break 'run end,
            }
        }
        while let Some(transmit) = machine.poll_transmit() {
            if machine_tx.send(transmit.frame).await.is_err() {
                machine.handle_lost("the sync stream's writer stopped");
            }
        }
        if machine.is_closed() {
            continue;
        }
        let timer = machine.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            read = reader.read(&mut chunk), if reader_open => match read {
                Ok(0) => {
                    reader_open = false;
                    machine.handle_finish(Lane::Control);
                }
                Ok(n) => {
                    if let Some((_, stats)) = &registered {
                        stats.record_received(n, Utc::now());
                    }
                    machine.handle_input(Lane::Control, &chunk[..n], Now::system());
                }
                Err(err) => machine.handle_lost(&format!("sync stream failed: {err}")),
            },
            () = sleep_until(timer) => machine.handle_timeout(Now::system()),
            changed = close_rx.changed() => {
                let reason = match changed {
                    Ok(()) => close_rx.borrow().clone().unwrap_or_else(|| "closed".to_owned()),
                    Err(_) => "closed".to_owned(),
                };
                machine.close(&reason);
            }
            () = crate::engine::stopped(&mut shutdown) => machine.close("node shutting down"),
            () = admission::evicted(&mut slot) => {
                tracing::debug!(peer = %peer_text, %address, "an incoming sync handshake gave its slot to a newer one");
                refusal = Some(error_frame(ErrorCode::TooManyConnections, EVICTED));
                machine.close(EVICTED);
            }
        }
    };
    // The machine's last frames (a goodbye or an error) go out before the
    // stream closes; reading on lets the peer take them in (dropping the
    // reader first would stop the peer's writes, which it may see first).
    let mut last = Vec::new();
    while let Some(transmit) = machine.poll_transmit() {
        last.push(transmit.frame);
    }
    if let Some(refusal) = refusal {
        // Told why with an error code, not a goodbye.
        last.retain(|frame| frame.kind != FrameKind::Goodbye);
        last.push(refusal);
    }
    let _ = last_tx.send(last);
    let drain = async { while reader_open && matches!(reader.read(&mut chunk).await, Ok(n) if n > 0) {} };
    let _ = tokio::time::timeout(LINGER, drain).await;
    let _ = tokio::time::timeout(LINGER, writer_task).await;
    match registered {
        Some((id, _)) => Some((remote, id, end)),
        None => {
            if !matches!(end, LinkEnd::Local(_)) {
                tracing::info!(peer = %peer_text, %address, reason = %end, "sync handshake over libp2p failed");
            }
            tell(Err(end.into_error(&peer_text, &address)));
            None
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Reports a registered link: to the peer registry and the sync engine.
/// `peer` in both forms: ours names it, libp2p's finds its round trip.
async fn connected(
    shared: &Shared,
    (peer, libp2p_peer): (PeerId, &libp2p::PeerId),
    address: &str,
    role: Role,
    hello: Option<Hello>,
    replaced: bool,
) -> Arc<PeerStats> {
    let _reporting = shared.link_reports.lock().await;
    let now = Utc::now();
    let direction = match role {
        Role::Initiator => Direction::Dialled,
        Role::Responder => Direction::Accepted,
    };
    let info = PeerInfo {
        peer_id: peer,
        address: address.to_owned(),
        transport: Transport::Libp2p,
        direction,
        listen_addresses: hello.map(|hello| hello.listen_addresses).unwrap_or_default(),
        connected_at: now,
        last_seen: now,
        rtt: shared.rtt_of(libp2p_peer),
        bytes_sent: 0,
        bytes_received: 0,
        connected: true,
    };
    let stats = shared.peers.peer_connected(info);
    if replaced {
        // The sync driver must forget what it queued on the old stream.
        shared.sync.deliver(PeerEvent::Disconnected { peer_id: peer, reason: "replaced by a newer connection".to_owned() }).await;
    }
    tracing::info!(%peer, %address, ?direction, "peer connected over libp2p");
    shared.sync.deliver(PeerEvent::Connected { peer_id: peer, address: address.to_owned(), transport: Transport::Libp2p }).await;
    stats
}

/// The answer to a peer exchange request: other connected peers and where
/// they listen.
fn exchange_answer(shared: &Shared, asking: &PeerId) -> Vec<ExchangedPeer> {
    shared
        .peers
        .connected_peers()
        .into_iter()
        .filter(|info| info.peer_id != *asking && !info.listen_addresses.is_empty())
        .map(|info| ExchangedPeer {
            peer_id: info.peer_id.to_string(),
            addresses: info.listen_addresses.into_iter().take(MAX_EXCHANGED_ADDRESSES).collect(),
        })
        .collect()
}

/// Frames smaller than this are copied into one buffer with the frames
/// queued behind them and written at once: one yamux frame, one Noise
/// message, one TCP segment instead of one per header and payload.
const COALESCE_BYTES: usize = 64 * 1024;

/// Writes frames: the machine's first, then control, then bulk; on `last`
/// writes those frames (a goodbye or error) and closes the stream.
async fn write_loop(
    mut writer: WriteHalf<Stream>,
    mut machine: mpsc::Receiver<Frame>,
    mut control: mpsc::Receiver<Frame>,
    mut bulk: mpsc::Receiver<Frame>,
    mut last: oneshot::Receiver<Vec<Frame>>,
    stats: Arc<std::sync::Mutex<Option<Arc<PeerStats>>>>,
) {
    let mut batch = Vec::with_capacity(COALESCE_BYTES);
    loop {
        let frame = tokio::select! {
            biased;
            last = &mut last => {
                // What the machine queued before it closed goes out first.
                while let Ok(frame) = machine.try_recv() {
                    let _ = tokio::time::timeout(LINGER, write_frame(&mut writer, &frame)).await;
                }
                for frame in last.unwrap_or_default() {
                    let _ = tokio::time::timeout(LINGER, write_frame(&mut writer, &frame)).await;
                }
                let _ = tokio::time::timeout(LINGER, writer.close()).await;
                return;
            }
            Some(frame) = machine.recv() => frame,
            Some(frame) = control.recv() => frame,
            Some(frame) = bulk.recv() => frame,
        };
        let written = if frame.payload.len() >= COALESCE_BYTES {
            write_frame(&mut writer, &frame).await
        } else {
            // This frame and the small ones ready behind it, in priority
            // order, in one write.
            batch.clear();
            append(&mut batch, &frame);
            while batch.len() < COALESCE_BYTES {
                let next = machine.try_recv().or_else(|_| control.try_recv());
                let next = match next {
                    Ok(next) => next,
                    Err(_) => match bulk.try_recv() {
                        Ok(next) => next,
                        Err(_) => break,
                    },
                };
                if next.payload.len() >= COALESCE_BYTES {
                    append(&mut batch, &next);
                    break;
                }
                append(&mut batch, &next);
            }
            write_all(&mut writer, &batch).await
        };
        match written {
            Ok(written) => {
                if let Some(stats) = lock(&stats).as_ref() {
                    stats.record_sent(written);
                }
            }
            Err(err) => {
                tracing::debug!(error = %err, "sync stream write failed");
                let _ = last.await;
                return;
            }
        }
    }
}

/// Appends `frame` (header and payload) to `batch`.
fn append(batch: &mut Vec<u8>, frame: &Frame) {
    // Senders check sizes before queueing; a frame that cannot be framed
    // is dropped rather than sent malformed.
    if let Ok(header) = frame.header() {
        batch.extend_from_slice(&header);
        batch.extend_from_slice(&frame.payload);
    }
}

async fn write_all(writer: &mut WriteHalf<Stream>, bytes: &[u8]) -> std::io::Result<usize> {
    writer.write_all(bytes).await?;
    writer.flush().await?;
    Ok(bytes.len())
}
