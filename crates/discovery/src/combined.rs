//! [`CombinedDiscovery`]: mDNS, bootstrap addresses and peer exchange
//! behind the seed's discovery API.

use crate::announcement::{check_local, service_names, service_type_domain};
use crate::directory::{LocalView, SharedDirectory};
use crate::error::{DiscoveryError, Result};
#[cfg(feature = "mdns")]
use crate::mdns::MdnsDriver;
use crate::peer::{DiscoveredPeer, DiscoveryMethod, LocalPeer};
use chrono::{DateTime, Utc};
use pluresdb_net::{DiscoveryConfig, PeerManager};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::futures::Notified;

/// Where a discovery is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Built, not started.
    Idle,
    /// `start_discovery` succeeded.
    Running,
    /// `stop` was called.
    Stopped,
}

/// What changes while discovery runs.
struct RunState {
    phase: Phase,
    #[cfg(feature = "mdns")]
    mdns: Option<MdnsDriver>,
}

/// Peer discovery for one node: announces the node and browses for others
/// with mDNS, lists the configured bootstrap addresses, and reads what
/// connected peers tell about others (peer exchange), all merged by peer id
/// in one bounded directory.
///
/// Configure it with the `with_*` methods, then share it (`Arc`): every
/// other method takes `&self`. The seed's usage, unchanged (without a
/// local peer it only browses, so `announce_peer` has nothing to do):
///
/// ```
/// use pluresdb_discovery::{CombinedDiscovery, DiscoveryConfig};
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let discovery_config = DiscoveryConfig {
///     enable_mdns: true,
///     enable_dht: true,
///     service_name: "pluresdb".to_string(),
///     service_type: "_pluresdb._tcp".to_string(),
///     discovery_interval: Duration::from_secs(60),
/// };
/// let mut discovery = CombinedDiscovery::new(discovery_config);
/// # // Tests keep mDNS on loopback: nothing leaves the machine.
/// # let mut discovery = discovery.with_interfaces(vec!["lo".to_owned()]);
/// discovery.start_discovery().await?;
/// let peers = discovery.discover_peers().await?;
/// for peer in peers { println!("Discovered peer: {} at {}", peer.id, peer.address); }
/// discovery.announce_peer().await?;
/// # Ok(())
/// # }
/// ```
///
/// Without [`with_local`](Self::with_local) the discovery only browses:
/// [`announce_peer`](Self::announce_peer) has nothing to announce.
///
/// Dropping it withdraws the announcement too, but without waiting for the
/// goodbye to go out twice: prefer [`stop`](Self::stop).
pub struct CombinedDiscovery {
    config: DiscoveryConfig,
    local: Option<LocalPeer>,
    bootstrap: Vec<String>,
    /// The interfaces mDNS runs on; empty means every one.
    interfaces: Vec<String>,
    peer_manager: Option<Arc<PeerManager>>,
    dht: Option<DhtSource>,
    directory: Arc<SharedDirectory>,
    state: Mutex<RunState>,
}

/// What the DHT found: each peer's id and its addresses (multiaddrs),
/// read when the peers are listed. See [`CombinedDiscovery::with_dht_peers`].
pub type DhtSource = Arc<dyn Fn() -> Vec<(String, Vec<String>)> + Send + Sync>;

impl std::fmt::Debug for CombinedDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CombinedDiscovery")
            .field("config", &self.config)
            .field("local", &self.local)
            .field("bootstrap", &self.bootstrap)
            .field("peer_exchange", &self.peer_manager.is_some())
            .field("phase", &self.lock().phase)
            .finish_non_exhaustive()
    }
}

impl CombinedDiscovery {
    /// A discovery with `config`, not started, that only browses (see
    /// [`with_local`](Self::with_local)).
    ///
    /// `discovery_interval` is not needed by mDNS (the daemon repeats its
    /// queries and answers newcomers' queries at once) and is kept for the
    /// DHT. `enable_dht` is reported once at start and ignored: the DHT needs
    /// the libp2p engine, which is not built yet.
    pub fn new(config: DiscoveryConfig) -> Self {
        Self {
            config,
            local: None,
            bootstrap: Vec::new(),
            interfaces: Vec::new(),
            peer_manager: None,
            dht: None,
            directory: Arc::new(SharedDirectory::default()),
            state: Mutex::new(RunState {
                phase: Phase::Idle,
                #[cfg(feature = "mdns")]
                mdns: None,
            }),
        }
    }

    /// Sets who this node is: what [`announce_peer`](Self::announce_peer)
    /// announces, whose own announcement is ignored, and which network tag
    /// counts as [`same_network`](DiscoveredPeer::same_network).
    pub fn with_local(mut self, local: LocalPeer) -> Self {
        self.directory.update(|d| {
            d.set_local(LocalView::of(Some(&local)));
            false
        });
        self.local = Some(local);
        self
    }

    /// Lists `addresses` (`host:port` or `quic://host:port`, the node's
    /// bootstrap nodes) with [`DiscoveryMethod::Bootstrap`](crate::DiscoveryMethod).
    /// They show with an empty id until a peer is connected at that address
    /// (known through [`with_peer_exchange`](Self::with_peer_exchange));
    /// the node dials them itself, [`spawn_auto_connect`](crate::spawn_auto_connect)
    /// does not.
    pub fn with_bootstrap(mut self, addresses: Vec<String>) -> Self {
        self.directory.update(|d| {
            d.set_bootstrap(&addresses, Utc::now());
            false
        });
        self.bootstrap = addresses;
        self
    }

    /// Reads `peers` on every [`discover_peers`](Self::discover_peers): the
    /// peers connected peers told this node about become
    /// [`DiscoveryMethod::Exchange`](crate::DiscoveryMethod) entries, and
    /// bootstrap addresses learn the id of the peer connected there.
    pub fn with_peer_exchange(mut self, peers: Arc<PeerManager>) -> Self {
        self.peer_manager = Some(peers);
        self
    }

    /// Lists the peers `source` says the DHT found (the libp2p engine's,
    /// which dials them itself) as [`DiscoveryMethod::Dht`](crate::DiscoveryMethod)
    /// entries of this network. Without it `enable_dht` finds nothing.
    pub fn with_dht_peers(mut self, source: DhtSource) -> Self {
        self.dht = Some(source);
        self
    }

    /// Runs mDNS on the named interfaces only (`["lo"]`, `["eth0"]`)
    /// instead of every interface that is up: to keep announcements off a
    /// VPN or a public link, or tests on one machine.
    pub fn with_interfaces(mut self, interfaces: Vec<String>) -> Self {
        self.interfaces = interfaces;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &DiscoveryConfig {
        &self.config
    }

    /// This node, if set with [`with_local`](Self::with_local).
    pub fn local(&self) -> Option<&LocalPeer> {
        self.local.as_ref()
    }

    /// Starts discovering: checks the configuration and, with `enable_mdns`,
    /// starts the mDNS daemon and browses for the service type in a tokio
    /// task. Does not announce (see [`announce_peer`](Self::announce_peer)).
    /// Calling it again while running does nothing; after
    /// [`stop`](Self::stop) it fails with [`DiscoveryError::Stopped`].
    pub async fn start_discovery(&self) -> Result<()> {
        let mut state = self.lock();
        match state.phase {
            Phase::Running => return Ok(()),
            Phase::Stopped => return Err(DiscoveryError::Stopped),
            Phase::Idle => {}
        }
        let ty_domain = service_type_domain(&self.config).map_err(DiscoveryError::Config)?;
        if let Some(local) = &self.local {
            check_local(local).map_err(DiscoveryError::Config)?;
            service_names(&self.config, local).map_err(DiscoveryError::Config)?;
        }
        if self.config.enable_dht && self.dht.is_none() {
            tracing::warn!("DHT discovery needs the libp2p engine, which this node does not run; discovering without it");
        }
        if self.config.enable_mdns {
            #[cfg(feature = "mdns")]
            {
                state.mdns = Some(MdnsDriver::start(&ty_domain, &self.interfaces, self.directory.clone())?);
                tracing::debug!(service_type = %ty_domain, "browsing on mDNS");
            }
            #[cfg(not(feature = "mdns"))]
            tracing::warn!(service_type = %ty_domain, "built without the `mdns` feature; discovering without mDNS");
        }
        state.phase = Phase::Running;
        Ok(())
    }

    /// The peers known now, sorted by peer id (bootstrap addresses of
    /// unknown peers first), one entry per peer with every method that found
    /// it. Reads peer exchange first. Browsing goes on in the background; to
    /// wait for news, see [`changed`](Self::changed).
    pub async fn discover_peers(&self) -> Result<Vec<DiscoveredPeer>> {
        self.refresh_from_peer_manager();
        let mut peers = self.directory.peers();
        if let Some(dht) = self.dht.as_ref().filter(|_| self.config.enable_dht) {
            for (id, addresses) in dht() {
                add_dht_peer(&mut peers, id, addresses, Utc::now());
            }
            peers.sort_by(|a, b| a.id.cmp(&b.id));
        }
        Ok(peers)
    }

    /// Announces this node on mDNS (registers its service, or registers it
    /// again). With `enable_mdns` off, or no local peer set, there is
    /// nothing to announce: it logs that at debug level and succeeds.
    ///
    /// The announcement goes out after mDNS probing, about 1 s after the
    /// call, and is repeated once a second later.
    pub async fn announce_peer(&self) -> Result<()> {
        if !self.config.enable_mdns {
            tracing::debug!("mDNS is off: nothing to announce");
            return Ok(());
        }
        let Some(local) = &self.local else {
            tracing::debug!("no local peer set: nothing to announce");
            return Ok(());
        };
        let state = self.lock();
        match state.phase {
            Phase::Idle => Err(DiscoveryError::NotStarted),
            Phase::Stopped => Err(DiscoveryError::Stopped),
            Phase::Running => {
                #[cfg(feature = "mdns")]
                if let Some(mdns) = &state.mdns {
                    mdns.announce(&self.config, local)?;
                }
                #[cfg(not(feature = "mdns"))]
                let _ = local;
                Ok(())
            }
        }
    }

    /// Stops discovering: withdraws the mDNS announcement (listeners see the
    /// peer leave at once rather than when its record expires), waits about
    /// 150 ms for the goodbye to go out twice, shuts the daemon down and
    /// forgets what mDNS found. Bootstrap and exchange entries stay
    /// readable. Calling it again does nothing.
    pub async fn stop(&self) {
        #[cfg(feature = "mdns")]
        let mdns = {
            let mut state = self.lock();
            state.phase = Phase::Stopped;
            state.mdns.take()
        };
        #[cfg(not(feature = "mdns"))]
        {
            self.lock().phase = Phase::Stopped;
        }
        #[cfg(feature = "mdns")]
        if let Some(mdns) = mdns {
            mdns.stop().await;
        }
        self.directory.update(|d| d.clear_mdns());
    }

    /// A future that resolves at the next change of the directory (a peer
    /// found, changed or withdrawn). Create it before reading the peers so
    /// that no change in between is missed:
    ///
    /// ```
    /// # async fn wait(discovery: &pluresdb_discovery::CombinedDiscovery) -> pluresdb_discovery::Result<()> {
    /// loop {
    ///     let changed = discovery.changed();
    ///     if !discovery.discover_peers().await?.is_empty() {
    ///         break Ok(());
    ///     }
    ///     changed.await;
    /// }
    /// # }
    /// ```
    ///
    /// Peer exchange is read by `discover_peers`, so its news shows at the
    /// next call rather than through this future.
    pub fn changed(&self) -> Notified<'_> {
        self.directory.changed()
    }

    /// The directory, for tests that feed it directly.
    #[cfg(test)]
    pub(crate) fn directory(&self) -> &SharedDirectory {
        &self.directory
    }

    /// Reads peer exchange and the connected peers into the directory.
    fn refresh_from_peer_manager(&self) {
        let Some(peers) = &self.peer_manager else {
            return;
        };
        let mut learned = peers.learned_peers();
        // A peer that was connected told this node itself where it listens
        // (its hello): it is dialled again if the link drops, whoever
        // dialled first (so a node that moved reaches the peers it knew).
        // Its own word comes first, whatever others said of it.
        for known in peers.known_peers() {
            if !known.listen_addresses.is_empty() {
                let peer_id = known.peer_id.to_string();
                learned.push(pluresdb_net::LearnedPeer {
                    via: peer_id.clone(),
                    peer_id,
                    addresses: known.listen_addresses,
                    last_seen: known.last_seen,
                });
            }
        }
        let connected = peers.connected_peers();
        self.directory.update(|d| {
            let exchanged = d.replace_exchange(learned);
            let resolved = d.resolve_bootstrap(&connected);
            exchanged || resolved
        });
    }

    fn lock(&self) -> MutexGuard<'_, RunState> {
        // The state is a phase and an owned driver: a panic elsewhere cannot
        // leave it half-updated.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for CombinedDiscovery {
    fn drop(&mut self) {
        #[cfg(feature = "mdns")]
        if let Some(mdns) = self.lock().mdns.take() {
            mdns.abandon();
        }
    }
}

/// Adds what the DHT says of peer `id` to `peers`: to its entry if it has
/// one (the method, and addresses not listed yet, up to the limit), else as
/// a new entry of this network.
fn add_dht_peer(peers: &mut Vec<DiscoveredPeer>, id: String, addresses: Vec<String>, now: DateTime<Utc>) {
    let addresses: Vec<String> = addresses.into_iter().take(crate::MAX_PEER_ADDRESSES).collect();
    match peers.iter_mut().find(|peer| peer.id == id) {
        Some(peer) => {
            if !peer.methods.contains(&DiscoveryMethod::Dht) {
                peer.methods.push(DiscoveryMethod::Dht);
            }
            for address in addresses {
                if peer.addresses.len() < crate::MAX_PEER_ADDRESSES && !peer.addresses.contains(&address) {
                    peer.addresses.push(address);
                }
            }
            peer.last_seen = peer.last_seen.max(now);
        }
        None => {
            let Some(address) = addresses.first().cloned() else { return };
            peers.push(DiscoveredPeer {
                id,
                address,
                addresses,
                methods: vec![DiscoveryMethod::Dht],
                last_seen: now,
                same_network: true,
                via: None,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::peer_id;

    fn is_send<T: Send>(_: T) {}

    #[test]
    fn shareable_between_tasks() {
        fn is_shareable<T: Send + Sync + 'static>() {}
        is_shareable::<CombinedDiscovery>();
        let discovery = CombinedDiscovery::new(DiscoveryConfig::default());
        is_send(discovery.start_discovery());
        is_send(discovery.discover_peers());
        is_send(discovery.announce_peer());
        is_send(discovery.stop());
    }

    #[tokio::test]
    async fn a_bad_configuration_fails_at_start() {
        let config = |service_type: &str| DiscoveryConfig { service_type: service_type.to_owned(), ..DiscoveryConfig::default() };
        let bad_type = CombinedDiscovery::new(config("pluresdb"));
        assert!(matches!(bad_type.start_discovery().await, Err(DiscoveryError::Config(_))));
        let bad_local = CombinedDiscovery::new(config("_pluresdb._tcp")).with_local(LocalPeer::new("me", 1, ""));
        assert!(matches!(bad_local.start_discovery().await, Err(DiscoveryError::Config(_))));
    }

    #[tokio::test]
    async fn without_mdns_announcing_is_a_no_op_and_the_lifecycle_holds() {
        let config = DiscoveryConfig { enable_mdns: false, enable_dht: true, ..DiscoveryConfig::default() };
        let discovery = CombinedDiscovery::new(config)
            .with_local(LocalPeer::new(peer_id(0), 34569, ""))
            .with_bootstrap(vec!["quic://192.0.2.7:34569".to_owned()]);
        assert!(matches!(discovery.announce_peer().await, Ok(())), "nothing to announce without mDNS");
        discovery.start_discovery().await.unwrap();
        discovery.start_discovery().await.unwrap();
        discovery.announce_peer().await.unwrap();
        let peers = discovery.discover_peers().await.unwrap();
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].address, "192.0.2.7:34569");
        discovery.stop().await;
        discovery.stop().await;
        assert!(matches!(discovery.start_discovery().await, Err(DiscoveryError::Stopped)));
        assert_eq!(discovery.discover_peers().await.unwrap().len(), 1, "bootstrap entries stay readable");
    }

    #[tokio::test]
    async fn announcing_needs_a_started_discovery() {
        let discovery = CombinedDiscovery::new(DiscoveryConfig::default()).with_local(LocalPeer::new(peer_id(0), 34569, ""));
        assert!(matches!(discovery.announce_peer().await, Err(DiscoveryError::NotStarted)));
    }
}
