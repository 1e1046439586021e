//! The swarm task: owns the libp2p [`Swarm`], carries out the engine's
//! commands (dial, forget, disconnect), keeps the engine's view of
//! connections, listen addresses and round trips, redials the peers it was
//! asked to keep, feeds identify's addresses to Kademlia, and runs DHT
//! discovery (provide the network key, look up its providers, dial them).

use crate::behaviour::{Behaviour, BehaviourEvent, KAD_PROTOCOL};
use crate::engine::{lock, Shared};
use futures::StreamExt;
use libp2p::kad::{self, GetProvidersOk, QueryResult, RecordKey};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{identify, ping, Multiaddr, PeerId, Swarm};
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

/// Takes a listen address as one others may reach this node at (for the
/// addresses in its DHT provider records): loopback ones only when the node
/// listens on loopback alone (tests, one machine).
fn advertise(swarm: &mut Swarm<Behaviour>, address: &Multiaddr, all_loopback: bool) {
    if !is_unspecified(address) && (all_loopback || !is_loopback(address)) {
        swarm.add_external_address(address.clone());
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
}

impl SwarmTask {
    pub(crate) fn new(
        shared: Arc<Shared>,
        swarm: Swarm<Behaviour>,
        commands: mpsc::Receiver<Command>,
        dht_key: Option<RecordKey>,
        dht_max: Duration,
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
        }
    }

    pub(crate) async fn run(mut self) {
        let mut shutdown = self.shared.shutdown_signal();
        let dht_timer = tokio::time::sleep(self.dht_delay);
        tokio::pin!(dht_timer);
        let dht = self.dht_key.is_some();
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_event(event),
                Some(command) = self.commands.recv() => self.on_command(command),
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
                        self.redials.insert(peer, Redial { address, failures: 0 });
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
            Command::Disconnect { peer } => {
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            Command::Redial { peer } => {
                let Some(redial) = self.redials.get(&peer) else { return };
                if self.swarm.is_connected(&peer) {
                    return;
                }
                let opts = DialOpts::peer_id(peer).addresses(vec![redial.address.clone()]).build();
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

    fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::ConnectionEstablished { peer_id, connection_id, endpoint, .. } => {
                let remote = endpoint.get_remote_address().clone();
                tracing::debug!(peer = %peer_id, %remote, "libp2p connection established");
                lock(&self.shared.view).connections.entry(peer_id).or_default().push((connection_id, remote.clone()));
                self.shared.connections_changed.notify_waiters();
                if self.dht_dials.remove(&connection_id) {
                    lock(&self.shared.view).dht.found(&peer_id.to_string(), Some(remote.to_string()), Instant::now());
                }
                if let Some(redial) = self.redials.get_mut(&peer_id) {
                    redial.failures = 0;
                }
                if let Some(pending) = self.pending.remove(&connection_id) {
                    if pending.redial {
                        if let Some(address) = pending.address {
                            self.redials.insert(peer_id, Redial { address, failures: 0 });
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
            SwarmEvent::ConnectionClosed { peer_id, connection_id, num_established, cause, .. } => {
                {
                    let mut view = lock(&self.shared.view);
                    if let Some(list) = view.connections.get_mut(&peer_id) {
                        list.retain(|(id, _)| *id != connection_id);
                        if list.is_empty() {
                            view.connections.remove(&peer_id);
                            view.rtt.remove(&peer_id);
                            view.identified.remove(&peer_id);
                        }
                    }
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
            _ => {}
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
