//! The task that runs an established [`Link`] over its QUIC connection
//! until it closes: the QUIC driver of the link protocol.
//!
//! Streams: the control stream (the bidirectional stream of the handshake)
//! is [`Lane::Control`]; one unidirectional bulk stream per direction,
//! opened on the first `DataSync`, is [`Lane::Bulk`]. Control frames are
//! written at a higher stream priority, so an acknowledgement, a sync
//! request or a heartbeat never waits behind megabytes of catch-up data;
//! `DataSync` batches stay in order among themselves, which the sync
//! engine's per-origin sequencing wants. Each stream has its own writer
//! task fed by a bounded queue; the engine's `send_message` and the link's
//! own frames share those queues.
//!
//! Each reader (control stream, bulk streams, the timer) feeds the link
//! and then acts on the events its input produced, in order: sync messages
//! go to the [`crate::SyncHandle`] (awaited, so a slow consumer stops the
//! reader, and QUIC flow control then stops the peer), heartbeats to the
//! peer's clock offset, peer exchange to the [`crate::PeerManager`]'s book
//! of learned peers. The link itself sits behind a mutex that is never
//! held across an await.

use super::handshake::Handshaken;
use super::now;
use super::registry::{lock, LinkHandle, Registration, Running, Shared, Slot, TaskGuard};
use super::stream::{self, write_frame, READ_CHUNK_BYTES};
use super::{BULK_QUEUE_FRAMES, CONTROL_QUEUE_FRAMES};
use crate::codec::Frame;
use crate::events::PeerEvent;
use crate::link::{Lane, Link, LinkEnd, LinkEvent, LINGER};
use crate::message::{ErrorCode, ExchangedPeer};
use crate::peer::{Direction, PeerInfo, PeerStats, Transport};
use chrono::Utc;
use pluresdb_security::PeerId;
use quinn::{Connection, ReadError, RecvStream, SendStream, VarInt};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};

/// One link's task state, shared by its readers and its timer.
struct LinkTask {
    shared: Arc<Shared>,
    /// This node's peer id.
    local_peer: PeerId,
    peer: PeerId,
    /// `peer` in text, for errors (written once per link).
    peer_text: String,
    /// The link's number in the registry.
    id: u64,
    connection: Connection,
    stats: Arc<PeerStats>,
    link: Mutex<Link>,
    control: mpsc::Sender<Frame>,
    bulk: mpsc::Sender<Frame>,
}

/// What the task consumes as it starts.
struct Streams {
    send: SendStream,
    recv: RecvStream,
    control_rx: mpsc::Receiver<Frame>,
    bulk_rx: mpsc::Receiver<Frame>,
}

/// What tells the task to stop, and the guard `stop` waits on.
struct Signals {
    close_rx: watch::Receiver<Option<String>>,
    shutdown: watch::Receiver<bool>,
    _guard: TaskGuard,
}

/// Registers the handshaken `connection` as the link to its peer and
/// spawns its task; settles duplicates (see [`Shared::register`]).
pub(crate) fn start(shared: Arc<Shared>, running: &Running, connection: Connection, done: Handshaken, direction: Direction, slot: Slot) {
    let Some(local_peer) = shared.keys().map(|keys| keys.peer_id) else { return };
    let Handshaken { peer_id: peer, peer_text, listen_addresses: advertised, link, send, recv } = done;
    let dialler = match direction {
        Direction::Dialled => local_peer,
        Direction::Accepted => peer,
    };
    let (control, control_rx) = mpsc::channel(CONTROL_QUEUE_FRAMES);
    let (bulk, bulk_rx) = mpsc::channel(BULK_QUEUE_FRAMES);
    let (closer, close_rx) = watch::channel(None);
    let id = shared.next_link_id();
    let handle = LinkHandle { id, peer_id: peer, dialler, control: control.clone(), bulk: bulk.clone(), proof_ok: link.proof_ok(), closer };
    let registration = shared.register(handle);
    drop(slot);
    match registration {
        Registration::Fresh | Registration::Replaced => {}
        Registration::Duplicate => {
            tracing::debug!(%peer, "closing a duplicate connection");
            connection.close(VarInt::from_u32(crate::link::CLOSE_NORMAL), b"duplicate connection");
            return;
        }
        Registration::Stopped => {
            connection.close(VarInt::from_u32(crate::link::CLOSE_NORMAL), b"node shutting down");
            return;
        }
        Registration::Full => {
            let reason = format!("too many connections (limit {})", shared.config.max_connections);
            tracing::warn!(%peer, "{reason}; closing the new connection");
            connection.close(stream::close_code(ErrorCode::TooManyConnections), reason.as_bytes());
            return;
        }
    }
    let remote = connection.remote_address();
    let now = Utc::now();
    let info = PeerInfo {
        peer_id: peer,
        address: remote.to_string(),
        transport: Transport::Quic,
        direction,
        listen_addresses: reachable_addresses(&advertised, remote),
        connected_at: now,
        last_seen: now,
        rtt: Some(connection.rtt()),
        bytes_sent: 0,
        bytes_received: 0,
        connected: true,
    };
    let stats = shared.peers.peer_connected(info);
    tracing::info!(%peer, %remote, ?direction, "peer connected");
    let signals = Signals { close_rx, shutdown: running.shutdown.subscribe(), _guard: running.tasks.enter() };
    let task = LinkTask { shared, local_peer, peer, peer_text, id, connection, stats, link: Mutex::new(link), control, bulk };
    let replaced = matches!(registration, Registration::Replaced);
    tokio::spawn(task.run(Streams { send, recv, control_rx, bulk_rx }, signals, replaced));
}

impl LinkTask {
    async fn run(self, streams: Streams, mut signals: Signals, replaced: bool) {
        let Streams { send, recv, control_rx, bulk_rx } = streams;
        let peer = self.peer;
        let sync = &self.shared.sync;
        if replaced {
            // The sync driver must forget what it queued on the old connection.
            sync.deliver(PeerEvent::Disconnected { peer_id: peer, reason: "replaced by a newer connection".to_owned() }).await;
        }
        let address = self.connection.remote_address().to_string();
        sync.deliver(PeerEvent::Connected { peer_id: peer, address, transport: Transport::Quic }).await;

        let mut control_writer = tokio::spawn(write_control(send, control_rx, self.stats.clone()));
        let bulk_writer = tokio::spawn(write_bulk(self.connection.clone(), bulk_rx, self.stats.clone()));
        let end = tokio::select! {
            end = self.read_control(recv) => end,
            end = self.read_bulk() => end,
            end = self.run_timers() => end,
            err = self.connection.closed() => LinkEnd::Lost(stream::connection_ended(&self.peer_text, &err).to_string()),
            reason = signals.close_rx.wait_for(Option::is_some) => {
                let reason = reason.ok().and_then(|r| r.clone()).unwrap_or_else(|| "closed".to_owned());
                self.close(&reason)
            }
            _ = signals.shutdown.wait_for(|s| *s) => self.close("node shutting down"),
        };

        match &end {
            LinkEnd::Local(reason) => tracing::info!(%peer, %reason, "closing connection"),
            LinkEnd::Refused(refusal) => {
                tracing::warn!(%peer, code = %refusal.code(), reason = %refusal.message(), "refused the peer's input; disconnecting it")
            }
            LinkEnd::PeerGoodbye(reason) => tracing::info!(%peer, %reason, "peer said goodbye"),
            LinkEnd::PeerRefused { code, message } => tracing::warn!(%peer, %code, reason = %message, "the peer refused this node"),
            LinkEnd::Lost(_) | LinkEnd::HandshakeTimeout(_) | LinkEnd::Idle(_) => tracing::info!(%peer, reason = %end, "connection lost"),
        }
        let reason = end.to_string();
        let LinkTask { shared, id, connection, control, bulk, .. } = self;
        let current = shared.unregister(&peer, id);
        // The writer has the last frame (goodbye or error) queued; it sends
        // it and finishes the stream once every sender is gone, and the
        // peer closes when it reads it. Both are bounded by LINGER.
        drop(control);
        drop(bulk);
        if matches!(end, LinkEnd::Local(_) | LinkEnd::Refused(_)) {
            let _ = tokio::time::timeout(LINGER, async {
                let _ = (&mut control_writer).await;
                connection.closed().await
            })
            .await;
        }
        connection.close(VarInt::from_u32(end.close_code()), reason.as_bytes());
        control_writer.abort();
        bulk_writer.abort();
        if current {
            shared.peers.peer_disconnected(&peer);
            shared.sync.deliver(PeerEvent::Disconnected { peer_id: peer, reason }).await;
        }
    }

    /// Runs `f` on the link, then moves what it produced out: its frames
    /// into the writers' queues, its events into `events`. A full queue
    /// drops the frame: the peer is not reading, and the idle timeout or
    /// the sync engine's resending covers it.
    fn step(&self, events: &mut Vec<LinkEvent>, f: impl FnOnce(&mut Link)) {
        let mut link = lock(&self.link);
        f(&mut link);
        events.extend(std::iter::from_fn(|| link.poll_event()));
        while let Some(transmit) = link.poll_transmit() {
            let queue = match transmit.lane {
                Lane::Control => &self.control,
                Lane::Bulk => &self.bulk,
            };
            let _ = queue.try_send(transmit.frame);
        }
    }

    /// Acts on `events` in order; returns how the link ended if one of
    /// them says so.
    async fn act(&self, events: &mut Vec<LinkEvent>) -> Option<LinkEnd> {
        for event in events.drain(..) {
            match event {
                LinkEvent::Sync(bytes) => {
                    // Awaited: a full share stops this reader, and QUIC flow
                    // control then stops the peer.
                    self.shared.sync.deliver(PeerEvent::Message { peer_id: self.peer, bytes }).await;
                }
                LinkEvent::Heartbeat { sent } => {
                    // How far the peer's clock is from ours: the node
                    // corrects its own when most peers disagree with it.
                    self.stats.record_heartbeat(sent, self.connection.rtt(), Utc::now());
                }
                LinkEvent::PeersLearned(peers) => {
                    let told = peers.len();
                    let remote = self.connection.remote_address();
                    let changed = self.shared.peers.learn(&self.local_peer.to_string(), &self.peer_text, remote, peers);
                    tracing::debug!(peer = %self.peer, told, changed, "peer exchange");
                }
                LinkEvent::PeerExchangeRequested => {
                    let peers: Vec<ExchangedPeer> = self
                        .shared
                        .peers
                        .connected_peers()
                        .into_iter()
                        .filter(|info| info.peer_id != self.peer && !info.listen_addresses.is_empty())
                        .map(|info| ExchangedPeer { peer_id: info.peer_id.to_string(), addresses: info.listen_addresses })
                        .collect();
                    let mut none = Vec::new();
                    self.step(&mut none, |link| link.answer_peer_exchange(peers));
                }
                LinkEvent::Closed(end) => return Some(end),
                // Signalling is for pages, which reach a node over its
                // browser WebSocket; QUIC peers link directly.
                LinkEvent::PeerAdmitted { .. } | LinkEvent::Established | LinkEvent::Signal { .. } => {}
            }
        }
        // An idle link holds no buffers (a node has many).
        *events = Vec::new();
        None
    }

    /// Feeds one read of `lane` to the link.
    fn received(&self, events: &mut Vec<LinkEvent>, lane: Lane, bytes: &[u8]) {
        let now = now();
        self.stats.record_received(bytes.len(), now.wall);
        self.step(events, |link| link.handle_input(lane, bytes, now));
    }

    async fn read_control(&self, mut recv: RecvStream) -> LinkEnd {
        // First what the handshake left in the link (frames read past it,
        // the peer exchange request).
        let mut events = Vec::new();
        self.step(&mut events, |_| {});
        loop {
            if let Some(end) = self.act(&mut events).await {
                return end;
            }
            match recv.read_chunk(READ_CHUNK_BYTES, true).await {
                Ok(Some(chunk)) => self.received(&mut events, Lane::Control, &chunk.bytes),
                Ok(None) => self.step(&mut events, |link| link.handle_finish(Lane::Control)),
                Err(err) => return LinkEnd::Lost(stream::read_failed(&self.peer_text, &err).to_string()),
            }
        }
    }

    async fn read_bulk(&self) -> LinkEnd {
        let mut events = Vec::new();
        loop {
            let mut recv = match self.connection.accept_uni().await {
                Ok(recv) => recv,
                Err(err) => return LinkEnd::Lost(stream::connection_ended(&self.peer_text, &err).to_string()),
            };
            loop {
                let ended = match recv.read_chunk(READ_CHUNK_BYTES, true).await {
                    Ok(Some(chunk)) => {
                        self.received(&mut events, Lane::Bulk, &chunk.bytes);
                        false
                    }
                    Ok(None) => {
                        self.step(&mut events, |link| link.handle_finish(Lane::Bulk));
                        true
                    }
                    // A bulk stream the peer abandoned: its data is resent by
                    // the sync protocol on the next stream.
                    Err(ReadError::Reset(code)) => {
                        self.step(&mut events, |link| link.handle_reset(Lane::Bulk, &format!("bulk stream reset ({code})")));
                        true
                    }
                    Err(err) => return LinkEnd::Lost(stream::read_failed(&self.peer_text, &err).to_string()),
                };
                if let Some(end) = self.act(&mut events).await {
                    return end;
                }
                if ended {
                    break;
                }
            }
        }
    }

    /// Runs the link's timers (heartbeats, the periodic peer exchange
    /// request) and records the round-trip time at each. Input only ever
    /// moves a link's deadline later, so sleeping until the deadline read
    /// before the sleep never misses one.
    async fn run_timers(&self) -> LinkEnd {
        let mut events = Vec::new();
        loop {
            let deadline = lock(&self.link).poll_timeout();
            match deadline {
                Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                None => std::future::pending().await,
            }
            self.stats.record_rtt(self.connection.rtt());
            self.step(&mut events, |link| link.handle_timeout(now()));
            // Timers only send frames or end the link: no event here
            // needs the awaits of `act` (which would make every link's
            // task larger).
            for event in events.drain(..) {
                if let LinkEvent::Closed(end) = event {
                    return end;
                }
            }
        }
    }

    /// Closes the link from this side: its `goodbye` goes to the control
    /// queue.
    fn close(&self, reason: &str) -> LinkEnd {
        let mut ignored = Vec::new();
        self.step(&mut ignored, |link| link.close(reason));
        LinkEnd::Local(reason.to_owned())
    }
}

async fn write_control(mut send: SendStream, mut queue: mpsc::Receiver<Frame>, stats: Arc<PeerStats>) {
    while let Some(frame) = queue.recv().await {
        match write_frame(&mut send, &frame).await {
            Ok(written) => stats.record_sent(written),
            Err(_) => return,
        }
    }
    let _ = send.finish();
}

async fn write_bulk(connection: Connection, mut queue: mpsc::Receiver<Frame>, stats: Arc<PeerStats>) {
    let mut send: Option<SendStream> = None;
    while let Some(frame) = queue.recv().await {
        let stream = match &mut send {
            Some(stream) => stream,
            None => match connection.open_uni().await {
                Ok(stream) => {
                    let _ = stream.set_priority(0);
                    send.insert(stream)
                }
                Err(_) => return,
            },
        };
        match write_frame(stream, &frame).await {
            Ok(written) => stats.record_sent(written),
            Err(_) => return,
        }
    }
    if let Some(mut stream) = send {
        let _ = stream.finish();
    }
}

/// The peer's advertised listen addresses, with an unspecified IP
/// (`0.0.0.0`, `::`) replaced by the one it was seen at.
fn reachable_addresses(advertised: &[String], observed: SocketAddr) -> Vec<String> {
    advertised
        .iter()
        .filter_map(|address| {
            let addr: SocketAddr = super::address::strip_scheme(address).ok()?.parse().ok()?;
            let ip = if addr.ip().is_unspecified() { observed.ip() } else { addr.ip() };
            Some(super::address::quic_url(SocketAddr::new(ip, addr.port())))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::stream::close_code;
    use super::*;

    #[test]
    fn unspecified_listen_addresses_take_the_observed_ip() {
        let observed: SocketAddr = "10.0.0.7:5555".parse().unwrap();
        let advertised = vec!["quic://0.0.0.0:34569".to_owned(), "quic://192.168.1.2:34569".to_owned(), "garbage".to_owned()];
        assert_eq!(reachable_addresses(&advertised, observed), ["quic://10.0.0.7:34569", "quic://192.168.1.2:34569"]);
    }

    #[test]
    fn refusals_use_their_codes() {
        assert_eq!(close_code(ErrorCode::RateLimited).into_inner(), 4);
    }
}
