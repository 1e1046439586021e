//! The swarm task: owns the libp2p [`Swarm`], carries out the engine's
//! commands (dial, forget, disconnect), keeps the engine's view of
//! connections, listen addresses and round trips, redials the peers it was
//! asked to keep, feeds identify's addresses to Kademlia, and runs DHT
//! discovery (provide the network key, look up its providers, dial them),
//! and NAT traversal: reserves slots on relays, moves links from relayed
//! connections to direct ones, tallies what the relay server refused.

use crate::behaviour::{Behaviour, BehaviourEvent, KAD_PROTOCOL};
use crate::engine::{lock, OpenConnection, Shared};
use futures::StreamExt;
use libp2p::core::transport::ListenerId;
use libp2p::core::ConnectedPoint;
use libp2p::kad::{self, GetProvidersOk, QueryResult, RecordKey};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{autonat, dcutr, identify, ping, relay, Multiaddr, PeerId, Swarm};
use pluresdb_net::NetworkError;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// The first redial delay; it doubles per failure up to [`MAX_REDIAL_DELAY`].
const FIRST_REDIAL_DELAY: Duration = Duration::from_millis(200);

/// The longest redial delay.
const MAX_REDIAL_DELAY: Duration = Duration::from_secs(30);

/// How long a stopping swarm keeps running for links to say goodbye.
const STOP_LINGER: Duration = Duration::from_millis(1_500);

/// How often the task looks after its relay reservations.
const RELAY_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How long after a relay refused or lost a reservation the node asks it
/// again.
const RESERVATION_RETRY: Duration = Duration::from_secs(5);

/// How long a link that ran over a closed relayed connection is waited
/// for to end before the sync link is opened over the direct connection.
const RELINK_WAIT: Duration = Duration::from_secs(5);

/// What the engine asks of the swarm task.
pub(crate) enum Command {
    /// Dial `address` (requiring `expected`, if given); answer with the
    /// peer id once connected. With `redial`, keep redialling the peer
    /// whenever its connections drop.
    Dial { address: Multiaddr, expected: Option<PeerId>, redial: bool, reply: oneshot::Sender<Result<PeerId, String>> },
    /// Stop redialling `peer`.
    Forget { peer: PeerId },
    /// Close every connection to `peer`.
    Disconnect { peer: PeerId },
    /// A redial timer of `peer` fired.
    Redial { peer: PeerId },
    /// Reserve a slot on `relay` at `address` (ending in `/p2p-circuit`),
    /// whether linked with it or not.
    Reserve { relay: PeerId, address: Multiaddr, reply: oneshot::Sender<Result<(), String>> },
}

/// A dial in flight.
struct PendingDial {
    reply: Option<oneshot::Sender<Result<PeerId, String>>>,
    address: Option<Multiaddr>,
    redial: bool,
    /// Open a sync stream once connected (dials the engine started itself).
    open_link: bool,
}

/// A peer redialled whenever its connections drop.
struct Redial {
    address: Multiaddr,
    failures: u32,
    /// Where the peer last said it listens (identify), at most 8: tried
    /// beside `address`, so a peer reached through a relay that went away
    /// is reached through another of its relays.
    known: Vec<Multiaddr>,
}

/// Binds every address in `addresses` and waits (at most `timeout`) until
/// each listener reported its address; returns them.
pub(crate) async fn listen(
    swarm: &mut Swarm<Behaviour>,
    addresses: &[Multiaddr],
    timeout: Duration,
) -> Result<Vec<Multiaddr>, NetworkError> {
    let mut waiting = HashMap::new();
    for address in addresses {
        let id = swarm
            .listen_on(address.clone())
            .map_err(|err| NetworkError::Bind { address: address.to_string(), source: std::io::Error::other(err.to_string()) })?;
        waiting.insert(id, address.clone());
    }
    let mut bound = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while !waiting.is_empty() {
        let event = match tokio::time::timeout_at(deadline, swarm.select_next_some()).await {
            Ok(event) => event,
            Err(_) => {
                let pending: Vec<String> = waiting.values().map(Multiaddr::to_string).collect();
                return Err(NetworkError::Bind {
                    address: pending.join(", "),
                    source: std::io::Error::new(std::io::ErrorKind::TimedOut, "the listener reported no address"),
                });
            }
        };
        match event {
            SwarmEvent::NewListenAddr { listener_id, address } => {
                waiting.remove(&listener_id);
                if !bound.contains(&address) {
                    bound.push(address);
                }
            }
            SwarmEvent::ListenerClosed { listener_id, reason, .. } => {
                if let Some(address) = waiting.remove(&listener_id) {
                    let reason = match reason {
                        Ok(()) => "closed".to_owned(),
                        Err(err) => err.to_string(),
                    };
                    return Err(NetworkError::Bind { address: address.to_string(), source: std::io::Error::other(reason) });
                }
            }
            SwarmEvent::ListenerError { listener_id, error } => {
                if let Some(address) = waiting.remove(&listener_id) {
                    return Err(NetworkError::Bind { address: address.to_string(), source: error });
                }
            }
            _ => {}
        }
    }
    let all_loopback = bound.iter().all(is_loopback);
    for address in &bound {
        advertise(swarm, address, all_loopback);
    }
    Ok(bound)
}

fn is_loopback(address: &Multiaddr) -> bool {
    address.iter().any(|protocol| match protocol {
        Protocol::Ip4(ip) => ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}

fn is_unspecified(address: &Multiaddr) -> bool {
    address.iter().any(|protocol| match protocol {
        Protocol::Ip4(ip) => ip.is_unspecified(),
        Protocol::Ip6(ip) => ip.is_unspecified(),
        _ => false,
    })
}

/// The address a connection is shown at: the remote address, or for a
/// connection that came in through a relay (whose remote address is only
/// `/p2p/<peer>`) the relayed address it came in on with the peer's id,
/// so it names the relay.
fn connection_address(endpoint: &ConnectedPoint, peer: PeerId) -> Multiaddr {
    match endpoint {
        ConnectedPoint::Listener { local_addr, .. } if crate::relay::is_relayed(local_addr) => local_addr.clone().with(Protocol::P2p(peer)),
        _ => endpoint.get_remote_address().clone(),
    }
}

/// Takes a listen address as one others may reach this node at (for the
/// addresses in its DHT provider records): loopback ones only when the node
/// listens on loopback alone (tests, one machine).
fn advertise(swarm: &mut Swarm<Behaviour>, address: &Multiaddr, all_loopback: bool) {
    if !is_unspecified(address) && (all_loopback || !is_loopback(address)) {
        // Confirmed as an external address once offered as a candidate.
        swarm.behaviour_mut().own_candidates.offer(address.clone());
    }
}

/// The swarm task (see the module docs).
pub(crate) struct SwarmTask {
    shared: Arc<Shared>,
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    /// For redial timers to reach the task.
    command_tx: mpsc::Sender<Command>,
    local: PeerId,
    pending: HashMap<ConnectionId, PendingDial>,
    redials: HashMap<PeerId, Redial>,
    dht_key: Option<RecordKey>,
    dht_delay: Duration,
    dht_max: Duration,
    /// The routing table changed since the key was last provided.
    provide_due: bool,
    /// When each provider was last dialled for sync.
    provider_attempts: HashMap<PeerId, Instant>,
    dht_dials: HashSet<ConnectionId>,
    /// Whether this node serves as a relay (it reserves on none).
    relay_server: bool,
    /// Peers that offer the relay protocol, at the address to reserve on.
    relays: HashMap<PeerId, Multiaddr>,
    /// Reservation listeners, by the relay they are on.
    reservations: HashMap<ListenerId, PeerId>,
    /// Relays not to ask again before the given time.
    relay_retry: HashMap<PeerId, Instant>,
    /// The address this node dialled each peer at last (direct dials).
    dialled: HashMap<PeerId, Multiaddr>,
    /// When peers reached only through a relay were last dialled directly,
    /// and how often they are (`None`: never).
    last_upgrade_round: Instant,
    direct_redial: Option<Duration>,
    reachability_public: bool,
}

impl SwarmTask {
    pub(crate) fn new(
        shared: Arc<Shared>,
        swarm: Swarm<Behaviour>,
        commands: mpsc::Receiver<Command>,
        dht_key: Option<RecordKey>,
        dht_max: Duration,
        relay_server: bool,
        direct_redial: Option<Duration>,
    ) -> Self {
        let command_tx = shared.running().map(|running| running.commands).unwrap_or_else(|_| mpsc::channel(1).0);
        let local = *swarm.local_peer_id();
        SwarmTask {
            shared,
            swarm,
            commands,
            command_tx,
            local,
            pending: HashMap::new(),
            redials: HashMap::new(),
            dht_key,
            dht_delay: crate::engine::FIRST_DHT_INTERVAL,
            dht_max: dht_max.max(crate::engine::FIRST_DHT_INTERVAL),
            provide_due: true,
            provider_attempts: HashMap::new(),
            dht_dials: HashSet::new(),
            relay_server,
            relays: HashMap::new(),
            reservations: HashMap::new(),
            relay_retry: HashMap::new(),
            dialled: HashMap::new(),
            last_upgrade_round: Instant::now(),
            direct_redial,
            reachability_public: false,
        }
    }

    pub(crate) async fn run(mut self) {
        let mut shutdown = self.shared.shutdown_signal();
        let dht_timer = tokio::time::sleep(self.dht_delay);
        tokio::pin!(dht_timer);
        let dht = self.dht_key.is_some();
        let mut relay_check = tokio::time::interval(RELAY_CHECK_INTERVAL);
        relay_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_event(event),
                Some(command) = self.commands.recv() => self.on_command(command),
                _ = relay_check.tick() => {
                    self.reserve_on_relays();
                    if self.direct_redial.is_some_and(|every| self.last_upgrade_round.elapsed() >= every) {
                        self.last_upgrade_round = Instant::now();
                        self.dial_relayed_peers_directly();
                    }
                }
                _ = &mut dht_timer, if dht => {
                    self.dht_round();
                    dht_timer.as_mut().reset(tokio::time::Instant::now() + self.dht_delay);
                    self.dht_delay = (self.dht_delay * 2).min(self.dht_max);
                }
                () = crate::engine::stopped(&mut shutdown) => break,
            }
        }
        // Links say goodbye over these connections: keep them running
        // until the links are gone (or for STOP_LINGER).
        let deadline = tokio::time::Instant::now() + STOP_LINGER;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        while tokio::time::Instant::now() < deadline && self.shared.has_links() {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_event(event),
                _ = tick.tick() => {}
            }
        }
        for (_, pending) in self.pending.drain() {
            if let Some(reply) = pending.reply {
                let _ = reply.send(Err("the engine stopped".to_owned()));
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Dial { address, expected, redial, reply } => {
                if let Some(peer) = expected.filter(|peer| self.swarm.is_connected(peer)) {
                    if redial {
                        self.redials.insert(peer, Redial { address, failures: 0, known: Vec::new() });
                    }
                    let _ = reply.send(Ok(peer));
                    return;
                }
                let opts = match expected {
                    Some(peer) => DialOpts::peer_id(peer).addresses(vec![address.clone()]).condition(PeerCondition::Always).build(),
                    None => DialOpts::unknown_peer_id().address(address.clone()).build(),
                };
                let id = opts.connection_id();
                match self.swarm.dial(opts) {
                    Ok(()) => {
                        self.pending.insert(id, PendingDial { reply: Some(reply), address: Some(address), redial, open_link: false });
                    }
                    Err(err) => {
                        let _ = reply.send(Err(err.to_string()));
                    }
                }
            }
            Command::Forget { peer } => {
                self.redials.remove(&peer);
            }
            Command::Reserve { relay, address, reply } => {
                let result = self.swarm.listen_on(address).map_err(|err| err.to_string());
                if let Ok(id) = &result {
                    self.reservations.insert(*id, relay);
                }
                let _ = reply.send(result.map(drop));
            }
            Command::Disconnect { peer } => {
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            Command::Redial { peer } => {
                let Some(redial) = self.redials.get(&peer) else { return };
                if self.swarm.is_connected(&peer) {
                    return;
                }
                let mut addresses = vec![redial.address.clone()];
                addresses.extend(redial.known.iter().filter(|known| **known != redial.address).cloned());
                let opts = DialOpts::peer_id(peer).addresses(addresses).build();
                let id = opts.connection_id();
                match self.swarm.dial(opts) {
                    Ok(()) => {
                        self.pending.insert(id, PendingDial { reply: None, address: None, redial: false, open_link: true });
                    }
                    Err(err) => {
                        tracing::debug!(%peer, error = %err, "redial failed at once");
                        self.schedule_redial(peer);
                    }
                }
            }
        }
    }

    /// Redials `peer` after its backoff: 200 ms x 2^failures up to 30 s,
    /// drawn from the upper half.
    fn schedule_redial(&mut self, peer: PeerId) {
        let Some(redial) = self.redials.get_mut(&peer) else { return };
        let delay = FIRST_REDIAL_DELAY.saturating_mul(1u32 << redial.failures.min(16)).min(MAX_REDIAL_DELAY);
        redial.failures = redial.failures.saturating_add(1);
        let mut random = [0u8; 2];
        let _ = getrandom::fill(&mut random);
        let fraction = f64::from(u16::from_le_bytes(random)) / f64::from(u16::MAX);
        let delay = delay.mul_f64(0.5 + fraction / 2.0);
        let commands = self.command_tx.clone();
        let mut shutdown = self.shared.shutdown_signal();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(delay) => { let _ = commands.send(Command::Redial { peer }).await; }
                () = crate::engine::stopped(&mut shutdown) => {}
            }
        });
    }

    /// One round of DHT discovery: provide the network key (when the
    /// routing table changed since) and look up its providers.
    fn dht_round(&mut self) {
        let Some(key) = self.dht_key.clone() else { return };
        let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() else { return };
        if self.provide_due {
            self.provide_due = false;
            if let Err(err) = kad.start_providing(key.clone()) {
                tracing::warn!(error = %err, "cannot provide the network key in the DHT");
            }
        }
        kad.get_providers(key);
    }

    /// A peer provides the network key: dial it for sync, unless it is
    /// linked or was tried within the current lookup interval.
    fn on_provider(&mut self, peer: PeerId) {
        if peer == self.local {
            return;
        }
        {
            // Where it listens, if it told this node already (identify):
            // what the runtime lists and dials.
            let mut view = lock(&self.shared.view);
            let text = peer.to_string();
            view.dht.found(&text, None, Instant::now());
            let told: Vec<String> = view.identified.get(&peer).into_iter().flatten().map(Multiaddr::to_string).collect();
            view.dht.add_addresses(&text, told, Instant::now());
        }
        if self.shared.is_linked_peer(&peer) || self.shared.refused_recently(&peer) {
            return;
        }
        let now = Instant::now();
        if self.provider_attempts.get(&peer).is_some_and(|at| now.duration_since(*at) < self.dht_delay) {
            return;
        }
        self.provider_attempts.insert(peer, now);
        if self.provider_attempts.len() > crate::dht::MAX_DHT_PEERS {
            let delay = self.dht_max;
            self.provider_attempts.retain(|_, at| now.duration_since(*at) < delay);
        }
        if self.swarm.is_connected(&peer) {
            self.shared.spawn_open_link(peer);
            return;
        }
        // Kademlia gives the addresses the lookup learned.
        let opts = DialOpts::peer_id(peer).build();
        let id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.dht_dials.insert(id);
                self.pending.insert(id, PendingDial { reply: None, address: None, redial: false, open_link: true });
            }
            Err(err) => tracing::debug!(%peer, error = %err, "cannot dial a DHT-found peer"),
        }
    }

    /// A connection to `peer` is up: the dial that asked for it (if any)
    /// is answered, a peer to keep is kept, a sync link is opened if the
    /// dial wanted one.
    fn dial_succeeded(&mut self, connection_id: ConnectionId, peer_id: PeerId) {
        if let Some(redial) = self.redials.get_mut(&peer_id) {
            redial.failures = 0;
        }
        if let Some(pending) = self.pending.remove(&connection_id) {
            if pending.redial {
                if let Some(address) = pending.address {
                    self.redials.insert(peer_id, Redial { address, failures: 0, known: Vec::new() });
                }
            }
            if let Some(reply) = pending.reply {
                let _ = reply.send(Ok(peer_id));
            }
            if pending.open_link {
                self.shared.spawn_open_link(peer_id);
            }
        }
    }

    fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::ConnectionEstablished { peer_id, connection_id, endpoint, .. } => {
                let remote = connection_address(&endpoint, peer_id);
                let relayed = crate::relay::is_relayed(&remote);
                tracing::debug!(peer = %peer_id, %remote, relayed, "libp2p connection established");
                if let ConnectedPoint::Dialer { address, .. } = &endpoint {
                    if !relayed {
                        self.dialled.insert(peer_id, address.clone());
                    }
                }
                let replaced: Vec<ConnectionId> = {
                    let mut view = lock(&self.shared.view);
                    let list = view.connections.entry(peer_id).or_default();
                    if relayed && endpoint.is_dialer() && !list.is_empty() {
                        // A second way to a connected peer through a relay
                        // (one circuit per relay address of a ticket, dialled
                        // at once): it adds nothing, and a sync stream on it
                        // would be shown at another connection's address.
                        // The dialler closes it (both ends doing so could
                        // close both); it is not listed meanwhile.
                        drop(view);
                        tracing::debug!(peer = %peer_id, %remote, "closing a second connection through a relay");
                        self.swarm.close_connection(connection_id);
                        self.dial_succeeded(connection_id, peer_id);
                        return;
                    }
                    list.push(OpenConnection { id: connection_id, remote: remote.clone(), source: crate::admission::source_of(&endpoint) });
                    // A direct connection to a peer reached through a relay
                    // (hole punched, or dialled): the relayed ones go, and
                    // the link follows to the direct one.
                    let replaced = if relayed {
                        Vec::new()
                    } else {
                        list.iter().filter(|open| crate::relay::is_relayed(&open.remote)).map(|open| open.id).collect()
                    };
                    if !replaced.is_empty() {
                        view.nat.upgrades += 1;
                    }
                    replaced
                };
                for id in replaced {
                    tracing::info!(peer = %peer_id, "a direct connection is up; closing the relayed one");
                    self.swarm.close_connection(id);
                }
                self.shared.connections_changed.notify_waiters();
                if self.dht_dials.remove(&connection_id) {
                    lock(&self.shared.view).dht.found(&peer_id.to_string(), Some(remote.to_string()), Instant::now());
                }
                self.dial_succeeded(connection_id, peer_id);
            }
            SwarmEvent::ConnectionClosed { peer_id, connection_id, num_established, cause, .. } => {
                let direct_left = {
                    let mut view = lock(&self.shared.view);
                    let mut direct_left = false;
                    if let Some(list) = view.connections.get_mut(&peer_id) {
                        list.retain(|open| open.id != connection_id);
                        direct_left = list.iter().any(|open| !crate::relay::is_relayed(&open.remote));
                        if list.is_empty() {
                            view.connections.remove(&peer_id);
                            view.rtt.remove(&peer_id);
                            view.identified.remove(&peer_id);
                        }
                    }
                    direct_left
                };
                if num_established == 0 {
                    self.relays.remove(&peer_id);
                    self.dialled.remove(&peer_id);
                }
                if num_established > 0 && (direct_left || self.shared.is_linked_peer(&peer_id)) && !self.shared.refused_recently(&peer_id) {
                    // The link may have run over the closed connection (a
                    // relayed one replaced by a direct one, or one through a
                    // relay that went away): it is opened again over one
                    // that stays.
                    self.shared.spawn_relink(peer_id, RELINK_WAIT);
                }
                tracing::debug!(peer = %peer_id, cause = ?cause, "libp2p connection closed");
                if num_established == 0 && self.redials.contains_key(&peer_id) {
                    if self.shared.refused_recently(&peer_id) {
                        // Not a sync peer: a DHT neighbour (Kademlia dials it
                        // when it needs it).
                        tracing::debug!(peer = %peer_id, "not redialling a peer that refused sync");
                        self.redials.remove(&peer_id);
                    } else {
                        self.schedule_redial(peer_id);
                    }
                }
            }
            SwarmEvent::OutgoingConnectionError { connection_id, peer_id, error } => {
                self.dht_dials.remove(&connection_id);
                if let Some(pending) = self.pending.remove(&connection_id) {
                    if let Some(reply) = pending.reply {
                        let _ = reply.send(Err(error.to_string()));
                    }
                }
                if let Some(peer) = peer_id.filter(|peer| self.redials.contains_key(peer) && !self.swarm.is_connected(peer)) {
                    self.schedule_redial(peer);
                }
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                let all_loopback = {
                    let mut view = lock(&self.shared.view);
                    if !view.listen.contains(&address) {
                        view.listen.push(address.clone());
                    }
                    view.listen.iter().all(is_loopback)
                };
                advertise(&mut self.swarm, &address, all_loopback);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                lock(&self.shared.view).listen.retain(|known| *known != address);
                self.swarm.remove_external_address(&address);
            }
            SwarmEvent::ListenerClosed { listener_id, addresses, reason } => {
                if let Some(relay) = self.reservations.remove(&listener_id) {
                    tracing::info!(%relay, reason = ?reason, "the reservation on a relay ended");
                    self.relay_retry.insert(relay, Instant::now() + RESERVATION_RETRY);
                    let mut view = lock(&self.shared.view);
                    view.listen.retain(|known| !addresses.contains(known));
                    let relay_text = relay.to_string();
                    view.nat.reserved_on.retain(|known| *known != relay_text);
                }
                for address in &addresses {
                    self.swarm.remove_external_address(address);
                }
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Ping(ping::Event { peer, result: Ok(rtt), .. }) => {
                lock(&self.shared.view).rtt.insert(peer, rtt);
            }
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                let listening: Vec<Multiaddr> = info
                    .listen_addrs
                    .iter()
                    .filter(|address| !is_unspecified(address))
                    .take(crate::dht::MAX_DHT_ADDRESSES)
                    .cloned()
                    .collect();
                if let Some(redial) = self.redials.get_mut(&peer_id) {
                    redial.known = listening.iter().take(8).cloned().collect();
                }
                let own: Vec<Multiaddr> = lock(&self.shared.view).listen.clone();
                self.swarm.behaviour_mut().own_candidates.offer_translated(&info.observed_addr, &own);
                if info.protocols.contains(&relay::HOP_PROTOCOL_NAME) {
                    // Reserve at the address this node reached it at, else
                    // at one it listens on (direct, and not loopback unless
                    // this node is on loopback alone).
                    let all_loopback = lock(&self.shared.view).listen.iter().all(is_loopback);
                    let address = self.dialled.get(&peer_id).cloned().or_else(|| {
                        listening
                            .iter()
                            .find(|address| !crate::relay::is_relayed(address) && (all_loopback || !is_loopback(address)))
                            .cloned()
                    });
                    if let Some(address) = address {
                        self.swarm.behaviour_mut().autonat.add_server(peer_id, Some(address.clone()));
                        self.relays.insert(peer_id, address);
                    }
                }
                {
                    let mut view = lock(&self.shared.view);
                    let text = peer_id.to_string();
                    view.dht.add_addresses(&text, listening.iter().map(Multiaddr::to_string), Instant::now());
                    view.identified.insert(peer_id, listening);
                }
                let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() else { return };
                if !info.protocols.contains(&KAD_PROTOCOL) {
                    return;
                }
                // Kademlia alone learns only the addresses it dialled; a
                // peer that dialled this node is routable at the addresses
                // it listens on.
                for address in info.listen_addrs.into_iter().filter(|address| !is_unspecified(address)).take(16) {
                    kad.add_address(&peer_id, address);
                }
            }
            BehaviourEvent::Kad(event) => self.on_kad_event(event),
            BehaviourEvent::RelayClient(event) => self.on_relay_client_event(event),
            BehaviourEvent::Relay(event) => self.on_relay_event(event),
            BehaviourEvent::Dcutr(dcutr::Event { remote_peer_id, result }) => match result {
                Ok(_) => tracing::info!(peer = %remote_peer_id, "hole punched: a direct connection replaces the relayed one"),
                Err(err) => {
                    tracing::info!(peer = %remote_peer_id, error = %err, "hole punching failed; the connection stays relayed");
                    lock(&self.shared.view).nat.upgrade_failures += 1;
                }
            },
            BehaviourEvent::Autonat(autonat::v1::Event::StatusChanged { old, new }) => {
                tracing::info!(?old, ?new, "reachability (AutoNAT)");
                self.reachability_public = new.is_public();
                lock(&self.shared.view).nat.reachability = match new {
                    autonat::v1::NatStatus::Public(_) => crate::engine::Reachability::Public,
                    autonat::v1::NatStatus::Private => crate::engine::Reachability::Private,
                    autonat::v1::NatStatus::Unknown => crate::engine::Reachability::Unknown,
                };
            }
            _ => {}
        }
    }

    fn on_relay_client_event(&mut self, event: relay::client::Event) {
        match event {
            relay::client::Event::ReservationReqAccepted { relay_peer_id, renewal, .. } => {
                if !renewal {
                    tracing::info!(relay = %relay_peer_id, "reserved a slot on a relay");
                    let text = relay_peer_id.to_string();
                    let mut view = lock(&self.shared.view);
                    if !view.nat.reserved_on.contains(&text) {
                        view.nat.reserved_on.push(text);
                    }
                }
            }
            relay::client::Event::OutboundCircuitEstablished { relay_peer_id, .. } => {
                tracing::debug!(relay = %relay_peer_id, "circuit through a relay opened");
            }
            relay::client::Event::InboundCircuitEstablished { src_peer_id, .. } => {
                tracing::info!(peer = %src_peer_id, "a peer reached this node through a relay");
            }
        }
    }

    fn on_relay_event(&mut self, event: relay::Event) {
        let mut view = lock(&self.shared.view);
        match event {
            relay::Event::ReservationReqAccepted { src_peer_id, renewed: false } => {
                view.nat.reservations_accepted += 1;
                tracing::info!(peer = %src_peer_id, "relay: reservation accepted");
            }
            relay::Event::ReservationReqDenied { src_peer_id, status } => {
                view.nat.reservations_denied += 1;
                tracing::info!(peer = %src_peer_id, ?status, "relay: reservation refused (not a member, or over the limits)");
            }
            relay::Event::CircuitReqDenied { src_peer_id, dst_peer_id, status } => {
                view.nat.circuits_denied += 1;
                tracing::info!(src = %src_peer_id, dst = %dst_peer_id, ?status, "relay: circuit refused");
            }
            relay::Event::CircuitReqAccepted { src_peer_id, dst_peer_id } => {
                tracing::debug!(src = %src_peer_id, dst = %dst_peer_id, "relay: circuit opened");
            }
            _ => {}
        }
    }

    /// Reserves slots on linked peers that offer the relay protocol, up to
    /// [`crate::relay::MAX_RELAYS`], unless this node is a relay itself or
    /// AutoNAT found it reachable. A relay that refused or dropped a
    /// reservation is asked again after [`RESERVATION_RETRY`]; a lost one
    /// is replaced by another known relay.
    fn reserve_on_relays(&mut self) {
        if self.relay_server || self.reachability_public || self.reservations.len() >= crate::relay::MAX_RELAYS {
            return;
        }
        let now = Instant::now();
        self.relay_retry.retain(|_, at| *at > now);
        let mut candidates: Vec<(PeerId, Multiaddr)> = self
            .relays
            .iter()
            .filter(|(peer, _)| !self.reservations.values().any(|r| r == *peer) && !self.relay_retry.contains_key(*peer))
            .filter(|(peer, _)| self.shared.is_linked_peer(peer))
            .map(|(peer, address)| (*peer, address.clone()))
            .collect();
        candidates.sort_by_key(|(peer, _)| peer.to_bytes());
        for (relay, address) in candidates {
            if self.reservations.len() >= crate::relay::MAX_RELAYS {
                break;
            }
            let listen = crate::relay::reservation_address(address, relay);
            match self.swarm.listen_on(listen.clone()) {
                Ok(id) => {
                    tracing::info!(%relay, address = %listen, "asking a relay for a reservation");
                    self.reservations.insert(id, relay);
                }
                Err(err) => {
                    tracing::info!(%relay, error = %err, "cannot listen through a relay");
                    self.relay_retry.insert(relay, now + RESERVATION_RETRY);
                }
            }
        }
    }

    /// Dials every peer reached only through relays at the direct
    /// addresses it listens on (identify), to upgrade when a NAT that
    /// blocked DCUtR allows it now.
    fn dial_relayed_peers_directly(&mut self) {
        let targets: Vec<(PeerId, Vec<Multiaddr>)> = {
            let view = lock(&self.shared.view);
            view.connections
                .iter()
                .filter(|(_, list)| list.iter().all(|open| crate::relay::is_relayed(&open.remote)))
                .filter_map(|(peer, _)| {
                    let direct: Vec<Multiaddr> = view
                        .identified
                        .get(peer)?
                        .iter()
                        .filter(|address| !crate::relay::is_relayed(address) && !is_unspecified(address))
                        .cloned()
                        .collect();
                    (!direct.is_empty()).then_some((*peer, direct))
                })
                .collect()
        };
        for (peer, addresses) in targets {
            tracing::debug!(%peer, "dialling a relayed peer directly");
            let opts = DialOpts::peer_id(peer).addresses(addresses).condition(PeerCondition::Always).build();
            if let Err(err) = self.swarm.dial(opts) {
                tracing::debug!(%peer, error = %err, "cannot dial a relayed peer directly");
            }
        }
    }

    fn on_kad_event(&mut self, event: kad::Event) {
        match event {
            kad::Event::OutboundQueryProgressed {
                result: QueryResult::GetProviders(Ok(GetProvidersOk::FoundProviders { providers, .. })),
                ..
            } => {
                for peer in providers {
                    self.on_provider(peer);
                }
            }
            kad::Event::OutboundQueryProgressed { result: QueryResult::StartProviding(result), .. } => {
                tracing::debug!(ok = result.is_ok(), "provided the network key in the DHT");
            }
            kad::Event::RoutingUpdated { is_new_peer: true, .. } => {
                self.provide_due = true;
            }
            _ => {}
        }
    }
}
