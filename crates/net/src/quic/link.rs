//! A [`Link`]: an admitted connection to one peer, and the task that runs
//! it until it closes.
//!
//! Streams: the control stream (the bidirectional stream of the handshake)
//! carries heartbeats, goodbyes, errors and every sync message except
//! `DataSync`; one unidirectional bulk stream per direction, opened on the
//! first `DataSync`, carries those. Control frames are written at a higher
//! stream priority, so an acknowledgement, a sync request or a heartbeat
//! never waits behind megabytes of catch-up data; `DataSync` batches stay
//! in order among themselves, which the sync engine's per-origin
//! sequencing wants. Each stream has its own writer task fed by a bounded
//! queue.
//!
//! Peer exchange: a node that looks for peers asks each new peer for the
//! peers it knows (a `peers` frame with `request`); the answer names up to
//! [`EXCHANGE_ANSWER_PEERS`] connected peers and where they listen, at most
//! once per [`EXCHANGE_ANSWER_INTERVAL`] per link. What a peer says goes to
//! the [`crate::PeerManager`]'s book of learned peers, checked and bounded.
//!
//! Receiving: each frame is counted against the peer's [`ReceiveLimits`];
//! sync frames go to the [`crate::SyncHandle`] (awaited, so a slow consumer
//! slows the peer through QUIC flow control). A peer over its limits, or
//! sending bytes that are not frames, is sent an `Error` frame and the
//! connection is closed; nothing else is affected.

use super::handshake::{codec_error_code, Handshaken, LINGER};
use super::stream::{self, next_frame, write_frame, ReadFailure, CLOSE_NORMAL};
use super::{lock, Registration, Running, Shared, Slot, TaskGuard, BULK_QUEUE_FRAMES, CONTROL_QUEUE_FRAMES};
use crate::codec::{Frame, FrameDecoder, FrameKind, HEADER_LEN};
use crate::config::ReceiveLimits;
use crate::events::PeerEvent;
use crate::message::{ErrorCode, ExchangedPeer, NetworkMessage, MAX_EXCHANGED_ADDRESSES};
use crate::peer::{Direction, PeerInfo, PeerStats, Transport};
use chrono::Utc;
use pluresdb_security::RateLimiter;
use quinn::{Connection, ReadError, RecvStream, SendStream, VarInt};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{mpsc, watch};

/// The most peers one answer to a peer exchange request names: small enough
/// for one datagram (a bigger one makes quinn keep a bigger send buffer on
/// every connection); a newcomer learns the rest from the peers it dials.
pub(crate) const EXCHANGE_ANSWER_PEERS: usize = 8;

/// How often a node that looks for peers asks each connected peer again.
pub(crate) const EXCHANGE_ASK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// How often a link answers peer exchange requests at most.
pub(crate) const EXCHANGE_ANSWER_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// A registered link, as the engine's link table holds it.
pub(crate) struct Link {
    /// Unique among this engine's links.
    pub(crate) id: u64,
    pub(crate) peer_id: String,
    /// The peer id of the node that dialled this connection.
    pub(crate) dialler: String,
    pub(crate) control: mpsc::Sender<Frame>,
    pub(crate) bulk: mpsc::Sender<Frame>,
    /// Whether the peer proved the network secret in the handshake, so a
    /// changed access policy can be checked against the links it admitted.
    pub(crate) proof_ok: bool,
    closer: watch::Sender<Option<String>>,
}

impl Link {
    /// Asks the link's task to say goodbye with `reason` and close.
    pub(crate) fn close(&self, reason: &str) {
        let _ = self.closer.send(Some(reason.to_owned()));
    }
}

/// Why a link ended.
enum LinkEnd {
    /// This node closes it (disconnect, shutdown, replaced): `Goodbye`.
    Local(String),
    /// This node refuses the peer's input: `Error` frame, close with code.
    Refuse(ErrorCode, String),
    /// The peer said goodbye.
    PeerGoodbye(String),
    /// The peer refused this node's input.
    PeerError(ErrorCode, String),
    /// The connection failed or was closed without a frame saying why.
    Lost(String),
}

struct Limiters {
    frames: RateLimiter,
    kib: RateLimiter,
}

/// What a link's readers share.
struct LinkContext {
    shared: Arc<Shared>,
    /// This node's peer id.
    local_peer: String,
    /// When this link last answered a peer exchange request.
    last_exchange_answer: Mutex<Option<Instant>>,
    peer: String,
    connection: Connection,
    stats: Arc<PeerStats>,
    limits: ReceiveLimits,
    limiters: Mutex<Limiters>,
    started: Instant,
}

/// Registers the handshaken `connection` as the link to its peer and
/// spawns its task; settles duplicates (see [`Shared::register`]).
pub(crate) fn start(shared: Arc<Shared>, running: &Running, connection: Connection, done: Handshaken, direction: Direction, slot: Slot) {
    let Some(local_peer) = lock(&shared.keys).as_ref().map(|keys| keys.peer_id_text.clone()) else { return };
    let peer = done.peer_id.clone();
    let dialler = match direction {
        Direction::Dialled => local_peer.clone(),
        Direction::Accepted => peer.clone(),
    };
    let (control, control_rx) = mpsc::channel(CONTROL_QUEUE_FRAMES);
    let (bulk, bulk_rx) = mpsc::channel(BULK_QUEUE_FRAMES);
    let (closer, close_rx) = watch::channel(None);
    let id = shared.next_link_id();
    let link = Link { id, peer_id: peer.clone(), dialler, control: control.clone(), bulk, proof_ok: done.proof_ok, closer };
    let registration = shared.register(link);
    drop(slot);
    match registration {
        Registration::Fresh | Registration::Replaced => {}
        Registration::Duplicate => {
            tracing::debug!(%peer, "closing a duplicate connection");
            connection.close(VarInt::from_u32(CLOSE_NORMAL), b"duplicate connection");
            return;
        }
        Registration::Stopped => {
            connection.close(VarInt::from_u32(CLOSE_NORMAL), b"node shutting down");
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
        peer_id: peer.clone(),
        address: remote.to_string(),
        transport: Transport::Quic,
        direction,
        listen_addresses: reachable_addresses(&done.hello.listen_addresses, remote),
        connected_at: now,
        last_seen: now,
        rtt: Some(connection.rtt()),
        bytes_sent: 0,
        bytes_received: 0,
        connected: true,
    };
    let stats = shared.peers.peer_connected(info);
    tracing::info!(%peer, %remote, ?direction, "peer connected");
    let limits = running.receive_limits;
    let context = LinkContext {
        shared,
        local_peer: local_peer.clone(),
        last_exchange_answer: Mutex::new(None),
        peer,
        connection,
        stats,
        limits,
        limiters: Mutex::new(Limiters { frames: RateLimiter::new(limits.frames), kib: RateLimiter::new(limits.kib) }),
        started: Instant::now(),
    };
    let guard = running.tasks.enter();
    let shutdown = running.shutdown.subscribe();
    let replaced = matches!(registration, Registration::Replaced);
    tokio::spawn(run(context, id, local_peer, replaced, done, control, control_rx, bulk_rx, close_rx, shutdown, guard));
}

#[allow(clippy::too_many_arguments)]
async fn run(
    context: LinkContext,
    id: u64,
    local_peer: String,
    replaced: bool,
    done: Handshaken,
    control: mpsc::Sender<Frame>,
    control_rx: mpsc::Receiver<Frame>,
    bulk_rx: mpsc::Receiver<Frame>,
    mut close_rx: watch::Receiver<Option<String>>,
    mut shutdown: watch::Receiver<bool>,
    _guard: TaskGuard,
) {
    let Handshaken { send, recv, decoder, .. } = done;
    let peer = context.peer.clone();
    let sync = &context.shared.sync;
    if replaced {
        // The sync driver must forget what it queued on the old connection.
        sync.deliver(PeerEvent::Disconnected { peer_id: peer.clone(), reason: "replaced by a newer connection".to_owned() }).await;
    }
    let address = context.connection.remote_address().to_string();
    sync.deliver(PeerEvent::Connected { peer_id: peer.clone(), address, transport: Transport::Quic }).await;
    ask_for_peers(&context.shared, &control);

    let mut control_writer = tokio::spawn(write_control(send, control_rx, context.stats.clone()));
    let bulk_writer = tokio::spawn(write_bulk(context.connection.clone(), bulk_rx, context.stats.clone()));
    let interval = context.shared.config.heartbeat_interval;
    let end = tokio::select! {
        end = read_control(&context, recv, decoder) => end,
        end = read_bulk(&context) => end,
        end = heartbeat(&context, control.clone(), local_peer, interval) => end,
        err = context.connection.closed() => LinkEnd::Lost(stream::connection_ended(&peer, &err).to_string()),
        reason = close_rx.wait_for(Option::is_some) => {
            let reason = reason.ok().and_then(|r| r.clone()).unwrap_or_else(|| "closed".to_owned());
            LinkEnd::Local(reason)
        }
        _ = shutdown.wait_for(|s| *s) => LinkEnd::Local("node shutting down".to_owned()),
    };

    let (final_frame, code, reason) = match &end {
        LinkEnd::Local(reason) => {
            tracing::info!(%peer, %reason, "closing connection");
            (Some(NetworkMessage::Goodbye { reason: reason.clone() }), CLOSE_NORMAL, reason.clone())
        }
        LinkEnd::Refuse(code, message) => {
            tracing::warn!(%peer, %code, reason = %message, "refused the peer's input; disconnecting it");
            let frame = NetworkMessage::Error { code: *code, message: message.clone() };
            (Some(frame), u32::from(code.code()), format!("refused the peer ({code}): {message}"))
        }
        LinkEnd::PeerGoodbye(reason) => {
            tracing::info!(%peer, %reason, "peer said goodbye");
            (None, CLOSE_NORMAL, format!("peer said goodbye: {reason}"))
        }
        LinkEnd::PeerError(code, message) => {
            tracing::warn!(%peer, %code, reason = %message, "the peer refused this node");
            (None, u32::from(code.code()), format!("refused by the peer ({code}): {message}"))
        }
        LinkEnd::Lost(reason) => {
            tracing::info!(%peer, %reason, "connection lost");
            (None, CLOSE_NORMAL, reason.clone())
        }
    };
    let current = context.shared.unregister(&peer, id);
    if let Some(frame) = final_frame {
        // The writer sends what is queued, then this frame, then finishes
        // the stream once every sender is gone; the peer closes when it
        // reads it. Both are bounded by LINGER.
        let _ = control.try_send(frame.to_frame());
        drop(control);
        let _ = tokio::time::timeout(LINGER, async {
            let _ = (&mut control_writer).await;
            context.connection.closed().await
        })
        .await;
    } else {
        drop(control);
    }
    context.connection.close(VarInt::from_u32(code), reason.as_bytes());
    control_writer.abort();
    bulk_writer.abort();
    if current {
        context.shared.peers.peer_disconnected(&peer);
        sync.deliver(PeerEvent::Disconnected { peer_id: peer.clone(), reason }).await;
    }
}

impl LinkContext {
    /// Handles one received frame; `Some` ends the link.
    async fn on_frame(&self, frame: Frame, on_bulk_stream: bool) -> Option<LinkEnd> {
        let size = HEADER_LEN + frame.payload.len();
        if let Some(refusal) = self.check_limits(size) {
            return Some(refusal);
        }
        self.stats.record_received(size, Utc::now());
        match frame.kind {
            FrameKind::Sync => {
                // Awaited: a full channel stops this reader, and QUIC flow
                // control then stops the peer.
                self.shared.sync.deliver(PeerEvent::Message { peer_id: self.peer.clone(), bytes: frame.payload }).await;
                None
            }
            kind if on_bulk_stream => Some(LinkEnd::Refuse(ErrorCode::UnexpectedMessage, format!("{kind} frame on the bulk stream"))),
            FrameKind::Hello => Some(LinkEnd::Refuse(ErrorCode::UnexpectedMessage, "hello frame after the handshake".to_owned())),
            FrameKind::Peers => match NetworkMessage::from_frame(&frame) {
                Ok(NetworkMessage::PeerExchange { peers, request }) => {
                    if !peers.is_empty() {
                        let told = peers.len();
                        let remote = self.connection.remote_address();
                        let changed = self.shared.peers.learn(&self.local_peer, &self.peer, remote, peers);
                        tracing::debug!(peer = %self.peer, told, changed, "peer exchange");
                    }
                    if request {
                        self.answer_exchange();
                    }
                    None
                }
                Ok(_) => None,
                Err(err) => Some(LinkEnd::Refuse(codec_error_code(&err), err.to_string())),
            },
            FrameKind::Heartbeat | FrameKind::Goodbye | FrameKind::Error => match NetworkMessage::from_frame(&frame) {
                Ok(NetworkMessage::Heartbeat { timestamp, .. }) => {
                    // How far the peer's clock is from ours: the node
                    // corrects its own when most peers disagree with it.
                    self.stats.record_heartbeat(timestamp, self.connection.rtt(), Utc::now());
                    None
                }
                Ok(NetworkMessage::Goodbye { reason }) => Some(LinkEnd::PeerGoodbye(reason)),
                Ok(NetworkMessage::Error { code, message }) => Some(LinkEnd::PeerError(code, message)),
                Ok(_) => None,
                Err(err) => Some(LinkEnd::Refuse(codec_error_code(&err), err.to_string())),
            },
        }
    }

    /// Answers the peer's request for the peers this node knows: up to
    /// [`EXCHANGE_ANSWER_PEERS`] others that are connected, with where they
    /// listen. At most one answer per [`EXCHANGE_ANSWER_INTERVAL`]; a
    /// request over that, or one that does not fit the queue, is dropped.
    fn answer_exchange(&self) {
        {
            let mut last = lock(&self.last_exchange_answer);
            if last.is_some_and(|at| at.elapsed() < EXCHANGE_ANSWER_INTERVAL) {
                tracing::debug!(peer = %self.peer, "peer exchange request too soon after the last; ignored");
                return;
            }
            *last = Some(Instant::now());
        }
        let peers: Vec<ExchangedPeer> = self
            .shared
            .peers
            .connected_peers()
            .into_iter()
            .filter(|info| info.peer_id != self.peer && !info.listen_addresses.is_empty())
            .take(EXCHANGE_ANSWER_PEERS)
            .map(|info| ExchangedPeer {
                peer_id: info.peer_id,
                addresses: info.listen_addresses.into_iter().take(MAX_EXCHANGED_ADDRESSES).collect(),
            })
            .collect();
        if let Some(link) = self.shared.state().links.get(&self.peer) {
            let _ = link.control.try_send(NetworkMessage::PeerExchange { peers, request: false }.to_frame());
        }
    }

    /// Counts a frame of `size` bytes against the peer's rate limits.
    fn check_limits(&self, size: usize) -> Option<LinkEnd> {
        let now_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut limiters = lock(&self.limiters);
        if limiters.frames.check(&self.peer, now_ms).is_err() {
            let limit = self.limits.frames;
            let message = format!("more than {} frames/s (burst {})", limit.messages_per_second, limit.burst);
            return Some(LinkEnd::Refuse(ErrorCode::RateLimited, message));
        }
        let kib = u32::try_from(size.div_ceil(1024)).unwrap_or(u32::MAX);
        if limiters.kib.check_n(&self.peer, kib, now_ms).is_err() {
            let limit = self.limits.kib;
            let message = format!("more than {} KiB/s (burst {} KiB)", limit.messages_per_second, limit.burst);
            return Some(LinkEnd::Refuse(ErrorCode::RateLimited, message));
        }
        None
    }
}

async fn read_control(context: &LinkContext, mut recv: RecvStream, mut decoder: FrameDecoder) -> LinkEnd {
    loop {
        match next_frame(&mut recv, &mut decoder).await {
            Ok(Some(frame)) => {
                if let Some(end) = context.on_frame(frame, false).await {
                    return end;
                }
            }
            Ok(None) => return LinkEnd::Lost("the peer closed its control stream".to_owned()),
            Err(ReadFailure::Codec(err)) => return LinkEnd::Refuse(codec_error_code(&err), err.to_string()),
            Err(ReadFailure::Stream(err)) => return LinkEnd::Lost(stream::read_failed(&context.peer, &err).to_string()),
        }
    }
}

async fn read_bulk(context: &LinkContext) -> LinkEnd {
    loop {
        let mut recv = match context.connection.accept_uni().await {
            Ok(recv) => recv,
            Err(err) => return LinkEnd::Lost(stream::connection_ended(&context.peer, &err).to_string()),
        };
        let mut decoder = FrameDecoder::with_max_payload(context.limits.max_payload);
        loop {
            match next_frame(&mut recv, &mut decoder).await {
                Ok(Some(frame)) => {
                    if let Some(end) = context.on_frame(frame, true).await {
                        return end;
                    }
                }
                Ok(None) => break,
                Err(ReadFailure::Codec(err)) => return LinkEnd::Refuse(codec_error_code(&err), err.to_string()),
                // A bulk stream the peer abandoned: its data is resent by
                // the sync protocol on the next stream.
                Err(ReadFailure::Stream(ReadError::Reset(_))) => break,
                Err(ReadFailure::Stream(err)) => return LinkEnd::Lost(stream::read_failed(&context.peer, &err).to_string()),
            }
        }
    }
}

/// Sends a heartbeat every `interval` and records the round-trip time.
/// Never ends by itself.
/// Asks the peer for the peers it knows, if this node looks for peers (a
/// full queue skips it: the next ask repeats it).
fn ask_for_peers(shared: &Shared, control: &mpsc::Sender<Frame>) {
    if shared.ask_for_peers.load(std::sync::atomic::Ordering::Relaxed) {
        let _ = control.try_send(NetworkMessage::PeerExchange { peers: Vec::new(), request: true }.to_frame());
    }
}

async fn heartbeat(context: &LinkContext, control: mpsc::Sender<Frame>, local_peer: String, interval: std::time::Duration) -> LinkEnd {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_ask = Instant::now();
    loop {
        ticker.tick().await;
        context.stats.record_rtt(context.connection.rtt());
        let beat = NetworkMessage::Heartbeat { peer_id: local_peer.clone(), timestamp: Utc::now() };
        // A full control queue means the peer is not reading; the idle
        // timeout or the queue itself will tell.
        let _ = control.try_send(beat.to_frame());
        // Peers that joined after this link came up are learned this way.
        if last_ask.elapsed() >= EXCHANGE_ASK_INTERVAL {
            last_ask = Instant::now();
            ask_for_peers(&context.shared, &control);
        }
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
