//! [`spawn_auto_connect`]: the task that dials the peers discovery finds.

use crate::backoff::{DialBackoff, DialRate};
use crate::combined::CombinedDiscovery;
use crate::peer::{DiscoveredPeer, DiscoveryMethod};
use pluresdb_net::NetworkEngine;
use pluresdb_security::PeerId;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How often the task looks for peers to dial when the directory does not
/// change (peer exchange and backoff expiry are noticed this way).
pub const AUTO_CONNECT_INTERVAL: Duration = Duration::from_secs(1);

/// Spawns a task that keeps `engine` connected to the peers `discovery`
/// finds, up to `max_connections` connections in all.
///
/// About every second, and at once when the directory changes, it dials the
/// discovered peers that are of this node's network
/// ([`same_network`](DiscoveredPeer::same_network)), have a known id that is
/// not this node's, were found by mDNS or peer exchange and are not
/// connected: peers heard on the LAN first, then peers this node was
/// connected to, then what others told; each address in turn, with
/// [`NetworkEngine::dial_discovered`] (which checks the peer's id).
///
/// What discovery finds is a hint from the network, so dialling it is
/// bounded: an address that cannot be reached waits 1 s, doubling up to
/// 60 s, with ±20 % jitter ([`retry_delay`](crate::retry_delay)) before the
/// next try, and after [`MAX_DIAL_FAILURES`](crate::MAX_DIAL_FAILURES) in a
/// row it is given up (tried every 30 min); and all dials together keep to
/// [`DIALS_PER_SECOND`](crate::DIALS_PER_SECOND) (bursts of
/// [`DIAL_BURST`](crate::DIAL_BURST)). Bootstrap addresses are left to the
/// node, which dials them itself.
///
/// The task ends when `shutdown` becomes `true` or its sender is dropped;
/// a dial under way is abandoned.
pub fn spawn_auto_connect(
    discovery: Arc<CombinedDiscovery>,
    engine: Arc<dyn NetworkEngine>,
    max_connections: usize,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut dialer = AutoConnect { backoff: DialBackoff::default(), rate: DialRate::default(), max_connections };
        loop {
            if *shutdown.borrow_and_update() {
                break;
            }
            let changed = discovery.changed();
            tokio::select! {
                () = dialer.round(&discovery, engine.as_ref()) => {}
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
            tokio::select! {
                () = changed => {}
                () = tokio::time::sleep(AUTO_CONNECT_INTERVAL) => {}
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
        }
        tracing::debug!("auto-connect stopped");
    })
}

/// The auto-connect task's state between rounds.
struct AutoConnect {
    backoff: DialBackoff,
    rate: DialRate,
    max_connections: usize,
}

impl AutoConnect {
    /// Dials what can be dialled now.
    async fn round(&mut self, discovery: &CombinedDiscovery, engine: &dyn NetworkEngine) {
        let peers = match discovery.discover_peers().await {
            Ok(peers) => peers,
            Err(err) => {
                tracing::debug!(error = %err, "auto-connect cannot list discovered peers");
                return;
            }
        };
        let now = Instant::now().into_std();
        let listed: HashSet<&str> = peers.iter().flat_map(|peer| peer.addresses.iter().map(String::as_str)).collect();
        self.backoff.retain(|address| listed.contains(address), now);
        let mut connected = match engine.get_connected_peers().await {
            Ok(connected) => connected.len(),
            Err(err) => {
                tracing::debug!(error = %err, "auto-connect cannot count connections");
                return;
            }
        };
        let local_id = discovery.local().map(|local| local.peer_id.as_str());
        // Who to dial this round: peers heard on the LAN first, then peers
        // this node was connected to, then what others told (which a hostile
        // peer could fill with addresses that never answer); at most
        // DIALS_PER_ROUND at once, never past `max_connections`, and only
        // as many addresses as the dial rate allows.
        let mut due = Vec::new();
        for peer in peers.iter().filter(|peer| is_candidate(peer, local_id)) {
            let ready: Vec<&str> = peer.addresses.iter().map(String::as_str).filter(|address| self.backoff.ready(address, now)).collect();
            if ready.is_empty() {
                continue;
            }
            // The directory keeps only ids that parsed when they were heard
            // of; one that does not now is not dialled.
            let Ok(id) = peer.id.parse::<PeerId>() else { continue };
            if engine.is_peer_connected(&id).await {
                continue;
            }
            due.push((peer, id, ready));
        }
        due.sort_by_key(|(peer, _, _)| dial_priority(peer));
        due.truncate(self.max_connections.saturating_sub(connected).min(DIALS_PER_ROUND));
        let mut plans = Vec::new();
        for (peer, id, mut addresses) in due {
            let granted = self.rate.take(addresses.len(), now);
            if granted == 0 {
                break;
            }
            addresses.truncate(granted);
            plans.push((peer, id, addresses));
        }
        let results = futures_util::future::join_all(plans.iter().map(|(_, id, addresses)| dial(engine, id, addresses))).await;
        let now = Instant::now().into_std();
        for ((peer, _, _), attempts) in plans.iter().zip(results) {
            for (address, result) in attempts {
                match result {
                    Ok(()) => {
                        connected += 1;
                        self.backoff.succeeded(address);
                        let methods: Vec<&str> = peer.methods.iter().map(|m| m.as_str()).collect();
                        tracing::info!(peer = %peer.id, method = %methods.join(","), %address, connected, "connected to discovered peer");
                    }
                    Err(err) => {
                        let retry_in = self.backoff.failed(address, now);
                        if self.backoff.given_up(address) {
                            tracing::debug!(peer = %peer.id, %address, error = %err, ?retry_in, "gave up dialling a discovered address for now");
                        } else {
                            tracing::debug!(peer = %peer.id, %address, error = %err, ?retry_in, "cannot connect to discovered peer");
                        }
                    }
                }
            }
        }
    }
}

/// How many discovered peers one round dials at once: a few slow or dead
/// addresses cannot hold up the rest for long.
pub const DIALS_PER_ROUND: usize = 8;

/// The order peers are dialled in, lower first: found on the LAN, then
/// connected before (it told this node its addresses itself), then learned
/// from another peer.
fn dial_priority(peer: &DiscoveredPeer) -> u8 {
    if peer.found_by(DiscoveryMethod::Mdns) {
        0
    } else if peer.via.as_deref() == Some(peer.id.as_str()) {
        1
    } else {
        2
    }
}

/// Whether the task should dial `peer` (connection and backoff aside).
fn is_candidate(peer: &DiscoveredPeer, local_id: Option<&str>) -> bool {
    peer.same_network
        && peer.peer_id().is_some_and(|id| Some(id) != local_id)
        && (peer.found_by(DiscoveryMethod::Mdns) || peer.found_by(DiscoveryMethod::Exchange))
}

/// Dials `addresses` of `peer` in turn until one works; returns what each
/// attempt gave.
async fn dial<'a>(engine: &dyn NetworkEngine, peer: &PeerId, addresses: &[&'a str]) -> Vec<(&'a str, pluresdb_net::Result<()>)> {
    let mut attempts = Vec::new();
    for address in addresses {
        match engine.dial_discovered(peer, address).await {
            Ok(_) => {
                attempts.push((*address, Ok(())));
                break;
            }
            Err(err) => {
                tracing::trace!(%peer, %address, error = %err, "dial failed");
                attempts.push((*address, Err(err)));
            }
        }
    }
    attempts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::announcement::Announcement;
    use crate::backoff::retry_delay;
    use crate::peer::LocalPeer;
    use crate::test_support::peer_id;
    use chrono::Utc;
    use pluresdb_net::{Direction, DiscoveryConfig, ExchangedPeer, NetworkError, NetworkMessage, PeerInfo, PeerManager, Transport};
    use std::collections::{BTreeSet, HashMap};
    use std::sync::Mutex;

    /// A network engine that connects a dial when `reachable` says the
    /// peer is at that address, and records every dial.
    #[derive(Default)]
    struct FakeEngine {
        reachable: Mutex<HashMap<String, String>>,
        connected: Mutex<BTreeSet<String>>,
        dials: Mutex<Vec<(String, String, Instant)>>,
    }

    impl FakeEngine {
        fn reachable(self, peer: &str, address: &str) -> Self {
            self.reachable.lock().unwrap().insert(address.to_owned(), peer.to_owned());
            self
        }

        fn connected(&self) -> BTreeSet<String> {
            self.connected.lock().unwrap().clone()
        }

        fn dials(&self) -> Vec<(String, String, Instant)> {
            self.dials.lock().unwrap().clone()
        }

        fn dialled_peers(&self) -> BTreeSet<String> {
            self.dials().into_iter().map(|(peer, _, _)| peer).collect()
        }
    }

    #[async_trait::async_trait]
    impl NetworkEngine for FakeEngine {
        async fn initialize(&mut self) -> pluresdb_net::Result<()> {
            Ok(())
        }
        async fn start(&mut self) -> pluresdb_net::Result<()> {
            Ok(())
        }
        async fn stop(&mut self) -> pluresdb_net::Result<()> {
            Ok(())
        }
        async fn send_message(&self, _: &PeerId, _: NetworkMessage) -> pluresdb_net::Result<()> {
            Ok(())
        }
        async fn broadcast_message(&self, _: NetworkMessage) -> pluresdb_net::Result<()> {
            Ok(())
        }
        async fn connect_peer(&self, address: &str) -> pluresdb_net::Result<PeerId> {
            Err(NetworkError::Connect { address: address.to_owned(), reason: "auto-connect must use dial_discovered".into() })
        }
        async fn disconnect_peer(&self, peer_id: &PeerId) -> pluresdb_net::Result<()> {
            self.connected.lock().unwrap().remove(&peer_id.to_string());
            Ok(())
        }
        async fn get_connected_peers(&self) -> pluresdb_net::Result<Vec<PeerInfo>> {
            let now = Utc::now();
            Ok(self
                .connected()
                .into_iter()
                .map(|peer_id| PeerInfo {
                    peer_id: peer_id.parse().expect("the test's peer ids parse"),
                    address: "192.0.2.250:1".into(),
                    transport: Transport::Quic,
                    direction: Direction::Dialled,
                    listen_addresses: vec![],
                    connected_at: now,
                    last_seen: now,
                    rtt: None,
                    bytes_sent: 0,
                    bytes_received: 0,
                    connected: true,
                })
                .collect())
        }
        async fn is_peer_connected(&self, peer_id: &PeerId) -> bool {
            self.connected.lock().unwrap().contains(&peer_id.to_string())
        }
        async fn dial_discovered(&self, peer: &PeerId, address: &str) -> pluresdb_net::Result<PeerId> {
            let peer_id = peer.to_string();
            self.dials.lock().unwrap().push((peer_id.clone(), address.to_owned(), Instant::now()));
            if self.reachable.lock().unwrap().get(address) == Some(&peer_id) {
                self.connected.lock().unwrap().insert(peer_id);
                Ok(*peer)
            } else {
                Err(NetworkError::Connect { address: address.to_owned(), reason: "unreachable".into() })
            }
        }
    }

    const TAG: &str = "aaaa";

    fn discovery(peers: Option<Arc<PeerManager>>, bootstrap: Vec<String>) -> Arc<CombinedDiscovery> {
        let mut discovery =
            CombinedDiscovery::new(DiscoveryConfig::default()).with_local(LocalPeer::new(peer_id(0), 34569, TAG)).with_bootstrap(bootstrap);
        if let Some(peers) = peers {
            discovery = discovery.with_peer_exchange(peers);
        }
        Arc::new(discovery)
    }

    fn announce(discovery: &CombinedDiscovery, peer: &str, tag: &str, addresses: &[&str]) {
        let announcement = Announcement {
            fullname: format!("pluresdb-{}._pluresdb._tcp.local.", &peer[..16]),
            peer_id: peer.to_owned(),
            network_tag: tag.to_owned(),
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
        };
        discovery.directory().update(|d| d.record_mdns(announcement, Utc::now()));
    }

    /// Waits (in virtual time) until `done`, at most a minute.
    async fn wait_until(what: &str, done: impl Fn() -> bool) {
        wait_within(what, Duration::from_secs(60), done).await;
    }

    /// Waits (in virtual time) until `done`, at most `limit`.
    async fn wait_within(what: &str, limit: Duration, done: impl Fn() -> bool) {
        let deadline = Instant::now() + limit;
        while !done() {
            assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn lan_peers_are_dialled_before_learned_ones() {
        let lan = peer_id(1);
        let manager = Arc::new(PeerManager::new());
        // A peer that names 20 addresses that never answer.
        let junk: Vec<ExchangedPeer> = (0..20u8)
            .map(|n| ExchangedPeer { peer_id: peer_id(10 + u32::from(n)), addresses: vec![format!("quic://192.0.2.{}:34569", 100 + n)] })
            .collect();
        manager.learn(&peer_id(0), &peer_id(9), "192.0.2.9:34569".parse().unwrap(), junk);
        let discovery = discovery(Some(manager), vec![]);
        announce(&discovery, &lan, TAG, &["192.0.2.10:34569"]);
        let engine = Arc::new(FakeEngine::default().reachable(&lan, "192.0.2.10:34569"));
        let (stop, stopped) = watch::channel(false);
        let task = spawn_auto_connect(discovery.clone(), engine.clone(), 100, stopped);
        wait_until("the first round", || !engine.dials().is_empty()).await;
        let dials = engine.dials();
        assert_eq!(dials[0].0, lan, "the LAN peer is dialled first, ahead of 20 learned ones");
        assert!(engine.connected().contains(&lan));
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn dials_peers_of_this_network_found_by_mdns_or_exchange_only() {
        let (lan, stranger, exchanged, bootstrapped) = (peer_id(1), peer_id(2), peer_id(3), peer_id(4));
        let manager = Arc::new(PeerManager::new());
        let learned = ExchangedPeer { peer_id: exchanged.clone(), addresses: vec!["quic://192.0.2.30:34569".into()] };
        manager.learn(&peer_id(0), &peer_id(9), "192.0.2.9:34569".parse().unwrap(), vec![learned]);
        let discovery = discovery(Some(manager), vec!["192.0.2.40:34569".into()]);
        // The LAN peer answers only at its second address.
        announce(&discovery, &lan, TAG, &["192.0.2.10:34569", "192.0.2.11:34569"]);
        announce(&discovery, &stranger, "bbbb", &["192.0.2.20:34569"]);
        let engine = Arc::new(
            FakeEngine::default()
                .reachable(&lan, "192.0.2.11:34569")
                .reachable(&stranger, "192.0.2.20:34569")
                .reachable(&exchanged, "192.0.2.30:34569")
                .reachable(&bootstrapped, "192.0.2.40:34569"),
        );
        let (stop, shutdown) = watch::channel(false);
        let task = spawn_auto_connect(discovery.clone(), engine.clone(), 10, shutdown);

        wait_until("both connected", || engine.connected().len() == 2).await;
        assert_eq!(engine.connected(), BTreeSet::from([lan.clone(), exchanged.clone()]));
        let lan_dials: Vec<String> = engine.dials().into_iter().filter(|(p, _, _)| *p == lan).map(|(_, a, _)| a).collect();
        assert_eq!(lan_dials, ["192.0.2.10:34569", "192.0.2.11:34569"], "each address in turn");

        // Rounds go on; connected peers, other networks and bootstrap
        // addresses are not dialled.
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(engine.dials().len(), 3);
        assert_eq!(engine.dialled_peers(), BTreeSet::from([lan.clone(), exchanged.clone()]));

        // A dropped connection is dialled again.
        engine.disconnect_peer(&lan.parse().unwrap()).await.unwrap();
        wait_until("redialled", || engine.connected().contains(&lan)).await;

        stop.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn unreachable_peers_back_off_exponentially() {
        let (dead, alive) = (peer_id(1), peer_id(2));
        let discovery = discovery(None, vec![]);
        announce(&discovery, &dead, TAG, &["192.0.2.10:34569"]);
        let engine = Arc::new(FakeEngine::default().reachable(&alive, "192.0.2.20:34569"));
        let (_stop, shutdown) = watch::channel(false);
        let task = spawn_auto_connect(discovery.clone(), engine.clone(), 10, shutdown);

        let dead_dials = || engine.dials().into_iter().filter(|(p, _, _)| *p == dead).map(|(_, _, at)| at).collect::<Vec<_>>();
        wait_until("six tries", || dead_dials().len() >= 6).await;
        let times = dead_dials();
        for (failures, pair) in (1u32..).zip(times.windows(2)) {
            let gap = pair[1] - pair[0];
            let delay = retry_delay("192.0.2.10:34569", failures);
            // A retry waits for its delay, then for the next round.
            assert!(gap >= delay && gap <= delay + AUTO_CONNECT_INTERVAL + Duration::from_millis(50), "#{failures}: {gap:?} vs {delay:?}");
        }

        // News of a peer is acted on at once, not at the next tick.
        let before = Instant::now();
        announce(&discovery, &alive, TAG, &["192.0.2.20:34569"]);
        wait_until("the new peer connected", || engine.connected().contains(&alive)).await;
        assert!(Instant::now() - before < AUTO_CONNECT_INTERVAL / 2);

        // Dropping the shutdown sender ends the task too.
        drop(_stop);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn connections_stay_within_the_limit() {
        let peers = [peer_id(1), peer_id(2), peer_id(3)];
        let addresses = ["192.0.2.21:1", "192.0.2.22:1", "192.0.2.23:1"];
        let discovery = discovery(None, vec![]);
        let mut engine = FakeEngine::default();
        for (peer, address) in peers.iter().zip(addresses) {
            announce(&discovery, peer, TAG, &[address]);
            engine = engine.reachable(peer, address);
        }
        let engine = Arc::new(engine);
        let (stop, shutdown) = watch::channel(false);
        let task = spawn_auto_connect(discovery.clone(), engine.clone(), 2, shutdown);

        wait_until("two connected", || engine.connected().len() == 2).await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(engine.connected().len(), 2);
        assert_eq!(engine.dials().len(), 2, "no dial beyond the limit");

        // A freed slot is filled.
        let first = engine.connected().into_iter().next().unwrap();
        engine.disconnect_peer(&first.parse().unwrap()).await.unwrap();
        wait_until("slot filled", || engine.connected().len() == 2).await;
        assert_eq!(engine.dials().len(), 3);

        stop.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_address_that_never_answers_is_given_up() {
        let dead = peer_id(1);
        let discovery = discovery(None, vec![]);
        announce(&discovery, &dead, TAG, &["192.0.2.10:34569"]);
        let engine = Arc::new(FakeEngine::default());
        let (_stop, shutdown) = watch::channel(false);
        let _task = spawn_auto_connect(discovery.clone(), engine.clone(), 10, shutdown);
        let failures = crate::MAX_DIAL_FAILURES as usize;
        wait_within("the first failures", Duration::from_secs(600), || engine.dials().len() >= failures).await;
        // Two hours on, it has been tried only every half hour since.
        tokio::time::sleep(Duration::from_secs(2 * 3600)).await;
        let times: Vec<Instant> = engine.dials().into_iter().map(|(_, _, at)| at).collect();
        assert!(times.len() <= failures + 5, "{} dials of a dead address in about two hours", times.len());
        for gap in times.windows(2).skip(failures - 1).map(|pair| pair[1] - pair[0]) {
            assert!(gap >= crate::GIVE_UP_DELAY, "a given-up address was dialled again after {gap:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn dials_of_learned_addresses_keep_to_the_dial_rate() {
        // One peer tells of 64 peers whose addresses never answer.
        let manager = Arc::new(PeerManager::new());
        let junk: Vec<ExchangedPeer> = (0..64u32)
            .map(|n| ExchangedPeer { peer_id: peer_id(10 + n), addresses: vec![format!("quic://192.0.2.{}:34569", n + 1)] })
            .collect();
        manager.learn(&peer_id(0), &peer_id(9), "192.0.2.250:34569".parse().unwrap(), junk);
        let discovery = discovery(Some(manager), vec![]);
        let engine = Arc::new(FakeEngine::default());
        let (_stop, shutdown) = watch::channel(false);
        let start = Instant::now();
        let _task = spawn_auto_connect(discovery.clone(), engine.clone(), 100, shutdown);
        let window = Duration::from_secs(30);
        tokio::time::sleep(window).await;
        let dials = engine.dials().into_iter().filter(|(_, _, at)| *at - start <= window).count();
        let allowed = (crate::DIAL_BURST + crate::DIALS_PER_SECOND * 30) as usize;
        assert!(dials >= crate::DIAL_BURST as usize, "it dials: {dials}");
        assert!(dials <= allowed, "{dials} dials in {window:?}, more than the {allowed} the dial rate allows");
    }
}
