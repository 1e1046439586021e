//! [`QuicNetworkEngine`]: the [`NetworkEngine`](crate::NetworkEngine) over
//! QUIC (quinn 0.11, rustls with ring).
//!
//! One quinn endpoint (one UDP socket) both listens and dials. Connections
//! use mutual TLS 1.3 with certificates that carry the node keys
//! (`pluresdb_security::tls`), so each side learns the other's peer id from
//! the handshake itself. Then the link protocol ([`crate::link`]) runs over
//! the connection: the QUIC side of its admission is `handshake` (the
//! control stream, the TLS exporter as the session binding), and an
//! admitted connection becomes a `link` task: a control stream for small
//! frames, a bulk stream for `DataSync`.
//!
//! The rest is QUIC's or this engine's own, a file each: the `transport`
//! settings (TLS, flow-control windows before and after admission), the
//! `accept` loop (which asks [`crate::admission`]'s budget of incoming
//! handshakes, shared with the libp2p engine, and answers with QUIC
//! Retries and refusals), `dial` supervision with `backoff`, the
//! `registry` of links (duplicates, connection limit), and the
//! `engine`'s `NetworkEngine` methods.

mod accept;
mod address;
mod backoff;
mod dial;
mod engine;
mod handshake;
mod link;
mod registry;
mod stream;
mod transport;

pub use crate::link::{CLOSE_NORMAL, HANDSHAKE_MAX_PAYLOAD};
pub use address::{resolve, strip_scheme, QUIC_SCHEME};
pub use backoff::{Backoff, INITIAL_DELAY, MAX_DELAY};
pub use handshake::EXPORTER_LABEL;

use crate::config::{NetworkConfig, ReceiveLimits};
use crate::events::SyncHandle;
use crate::link::Now;
use crate::peer::PeerManager;
use crate::NetworkError;
use pluresdb_security::{AccessPolicy, Identity, PeerId};
use registry::{lock, Keys, Running, Shared};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Frames queued per peer on the control stream before `send_message`
/// answers [`NetworkError::PeerBusy`].
pub const CONTROL_QUEUE_FRAMES: usize = 1_024;

/// `DataSync` frames queued per peer on the bulk stream before
/// `send_message` answers [`NetworkError::PeerBusy`]. The sync engine keeps
/// at most 4 batches in flight per peer, so this is only reached when a
/// peer reads slower than it is sent to.
pub const BULK_QUEUE_FRAMES: usize = 16;

/// The QUIC engine. Cheap to clone: clones share one endpoint and one set
/// of connections (hand a clone to the sync driver, keep one to stop it).
///
/// ```no_run
/// # async fn demo() -> pluresdb_net::Result<()> {
/// use pluresdb_net::{NetworkConfig, NetworkEngine, PeerManager, QuicNetworkEngine, SyncHandle};
/// use std::sync::Arc;
///
/// let peer_manager = Arc::new(PeerManager::new());
/// let (sync_engine, _events) = SyncHandle::channel(1024);
/// let mut engine = QuicNetworkEngine::new(NetworkConfig::default(), peer_manager, sync_engine);
/// engine.initialize().await?;
/// engine.start().await?;
/// let peer_id = engine.connect_peer("quic://192.168.1.100:34569").await?;
/// # let _ = peer_id;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct QuicNetworkEngine {
    shared: Arc<Shared>,
}

impl QuicNetworkEngine {
    /// An engine with `config` that reports peers to `peer_manager` and
    /// delivers peer events through `sync_engine` (see [`SyncHandle`]).
    /// Give it keys with [`with_identity`](Self::with_identity) and
    /// [`with_access_policy`](Self::with_access_policy), or let
    /// `initialize` generate them.
    pub fn new(config: NetworkConfig, peer_manager: Arc<PeerManager>, sync_engine: SyncHandle) -> Self {
        Self { shared: Arc::new(Shared::new(config, peer_manager, sync_engine)) }
    }

    /// Uses `identity` as this node's key (its peer id names the node).
    /// Without it, `initialize` generates one.
    pub fn with_identity(self, identity: Identity) -> Self {
        lock(&self.shared.settings).identity = Some(identity);
        self
    }

    /// Admits peers by `policy`. Without it, `initialize` creates a fresh
    /// network secret and admits only peers that prove it (so a node
    /// without a policy talks to no one until it is given the secret).
    pub fn with_access_policy(self, policy: AccessPolicy) -> Self {
        lock(&self.shared.settings).policy = Some(policy);
        self
    }

    /// Applies `limits` to what each peer may send (default:
    /// [`ReceiveLimits::default`]). Takes effect at the next `start`.
    pub fn with_receive_limits(self, limits: ReceiveLimits) -> Self {
        lock(&self.shared.settings).limits = limits;
        self
    }

    /// Asks every newly connected peer for the peers it knows (peer
    /// exchange), which then show in the [`PeerManager`]'s learned peers for
    /// discovery to dial. Off by default: a node that does not look for
    /// peers has no use for them. Requests from peers are answered either
    /// way.
    pub fn with_peer_exchange(self, ask: bool) -> Self {
        self.shared.ask_for_peers.store(ask, Ordering::Relaxed);
        self
    }

    /// This node's peer id, once initialized.
    pub fn peer_id(&self) -> Option<PeerId> {
        self.shared.keys().map(|keys| keys.peer_id)
    }

    /// This node's identity, once initialized (for the runtime to keep a
    /// generated one).
    pub fn identity(&self) -> Option<Identity> {
        self.shared.keys().map(|keys| keys.identity.clone())
    }

    /// Admits peers by `policy` from now on (the allowlist or the mode
    /// changed), and closes the connections of peers it no longer admits
    /// (they are told why, and are not redialled).
    pub fn set_access_policy(&self, policy: AccessPolicy) {
        lock(&self.shared.settings).policy = Some(policy.clone());
        {
            let mut keys = lock(&self.shared.keys);
            if let Some(current) = keys.as_ref() {
                *keys = Some(Arc::new(Keys { policy: policy.clone(), ..Keys::clone(current) }));
            }
        }
        let mut state = self.shared.state();
        let refused: Vec<(PeerId, String)> = state
            .links
            .values()
            .filter_map(|link| {
                policy.admits(&link.peer_id.to_string(), link.proof_ok).err().map(|denied| (link.peer_id, denied.to_string()))
            })
            .collect();
        for (peer, reason) in refused {
            tracing::info!(%peer, %reason, "the access rule no longer admits a connected peer; disconnecting it");
            state.disconnect(&peer, &format!("no longer admitted: {reason}"));
        }
    }

    /// Closes every connection with `reason` and keeps redialling what was
    /// dialled: for when this node's own address changed and connections
    /// still send from the old one (they would only notice at the idle
    /// timeout). Peers found by discovery are dialled again by it.
    pub fn close_links(&self, reason: &str) {
        let state = self.shared.state();
        for link in state.links.values() {
            link.close(reason);
        }
    }

    /// The access policy in force, once initialized (it holds the network
    /// secret a fresh node generated).
    pub fn access_policy(&self) -> Option<AccessPolicy> {
        self.shared.keys().map(|keys| keys.policy.clone())
    }

    /// The address the endpoint is bound to, while running (with port 0 in
    /// the config, the port the OS chose).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.shared.state().running.as_ref().map(|running| running.local_addr)
    }

    /// How many incoming connections are in their handshake (QUIC or
    /// hello), out of `max_handshakes`.
    pub fn handshakes_in_flight(&self) -> usize {
        self.shared.state().handshakes.in_flight()
    }

    /// The peer registry this engine reports to.
    pub fn peer_manager(&self) -> &Arc<PeerManager> {
        &self.shared.peers
    }

    fn keys(&self) -> crate::Result<Arc<Keys>> {
        self.shared.keys().ok_or(NetworkError::NotRunning)
    }

    fn running(&self) -> crate::Result<Running> {
        self.shared.state().running.clone().ok_or(NetworkError::NotRunning)
    }
}

/// The time as links see it: tokio's clock (which tests may pause, and
/// which the links' timers sleep on) and the wall clock.
fn now() -> Now {
    Now { instant: tokio::time::Instant::now().into_std(), wall: chrono::Utc::now() }
}
