//! `pluresdb serve`: the node. It starts the runtime over the replica and
//! serves the HTTP and WebSocket API until Ctrl-C or SIGTERM; the network
//! engines and discovery join it with their issues.

use crate::config::Config;
use crate::replica::Replica;
use anyhow::Context;
use std::io::Write;
use std::path::Path;

/// How the node meets peers.
pub struct PeerSettings {
    /// Where the QUIC engine listens.
    #[cfg_attr(not(feature = "quic"), allow(dead_code))]
    pub bind: std::net::SocketAddr,
    /// Nodes to connect to at start.
    pub bootstrap: Vec<String>,
    /// Announce and browse on the LAN with mDNS.
    #[cfg_attr(not(feature = "quic"), allow(dead_code))]
    pub mdns: bool,
    /// The interfaces mDNS runs on; empty means every one.
    #[cfg_attr(not(feature = "quic"), allow(dead_code))]
    pub mdns_interfaces: Vec<String>,
    /// Run the QUIC engine.
    #[cfg_attr(not(feature = "quic"), allow(dead_code))]
    pub quic: bool,
    /// Run the libp2p engine.
    #[cfg_attr(not(feature = "libp2p"), allow(dead_code))]
    pub libp2p: bool,
    /// Where the libp2p engine listens (multiaddrs); empty: its defaults
    /// at `bind`.
    #[cfg_attr(not(feature = "libp2p"), allow(dead_code))]
    pub libp2p_listen: Vec<String>,
    /// Take part in the Kademlia DHT and find the network's nodes there.
    #[cfg_attr(not(feature = "libp2p"), allow(dead_code))]
    pub dht: bool,
    /// Serve as a circuit relay for the network's members.
    #[cfg_attr(not(feature = "libp2p"), allow(dead_code))]
    pub relay: bool,
    /// Where browser pages connect over WebSocket (`--browser-listen`);
    /// `None`: no WebSocket engine.
    #[cfg_attr(not(feature = "quic"), allow(dead_code))]
    pub browser_listen: Option<std::net::SocketAddr>,
    /// The UDP address of the WebRTC engine for browser pages (with
    /// `browser_listen`); `None`: pages stay on the WebSocket.
    #[cfg_attr(not(feature = "webrtc"), allow(dead_code))]
    pub webrtc_listen: Option<std::net::SocketAddr>,
}

/// The engines for browser pages: the WebSocket one, and WebRTC beside it
/// when it runs.
#[cfg(feature = "quic")]
#[derive(Clone)]
struct BrowserEngines {
    websocket: pluresdb_net::WebSocketNetworkEngine,
    #[cfg(feature = "webrtc")]
    webrtc: Option<pluresdb_net::WebRtcNetworkEngine>,
}

#[cfg(feature = "quic")]
impl BrowserEngines {
    fn url(&self) -> Option<String> {
        self.websocket.url()
    }

    fn webrtc_addr(&self) -> Option<std::net::SocketAddr> {
        #[cfg(feature = "webrtc")]
        return self.webrtc.as_ref().and_then(|engine| engine.local_addr());
        #[cfg(not(feature = "webrtc"))]
        None
    }

    fn set_access_policy(&self, policy: pluresdb_security::AccessPolicy) {
        #[cfg(feature = "webrtc")]
        if let Some(engine) = &self.webrtc {
            engine.set_access_policy(policy.clone());
        }
        self.websocket.set_access_policy(policy);
    }

    async fn stop(self) {
        use pluresdb_net::NetworkEngine;
        #[cfg(feature = "webrtc")]
        if let Some(mut engine) = self.webrtc {
            if let Err(err) = engine.stop().await {
                tracing::warn!(error = %err, "the browser WebRTC engine did not stop cleanly");
            }
        }
        let mut websocket = self.websocket;
        if let Err(err) = websocket.stop().await {
            tracing::warn!(error = %err, "the browser WebSocket engine did not stop cleanly");
        }
    }
}

/// Where peers can reach a node listening on `local`: the address itself,
/// or, for an unspecified IP (`0.0.0.0`, `::`), that port on each of this
/// machine's interface addresses (loopback and link-local left out; IPv6
/// ones only for `::`). Falls back to `local` when there are none.
#[cfg_attr(not(feature = "quic"), allow(dead_code))]
fn reachable_addresses(local: std::net::SocketAddr) -> Vec<String> {
    if !local.ip().is_unspecified() {
        return vec![local.to_string()];
    }
    let interfaces = match if_addrs::get_if_addrs() {
        Ok(interfaces) => interfaces,
        Err(err) => {
            tracing::warn!(%err, "cannot list the network interfaces; the listen address stays unspecified");
            return vec![local.to_string()];
        }
    };
    let mut addresses: Vec<String> = interfaces
        .iter()
        .filter(|i| !i.is_loopback() && !i.is_link_local() && (local.is_ipv6() || i.ip().is_ipv4()))
        .map(|i| std::net::SocketAddr::new(i.ip(), local.port()).to_string())
        .collect();
    addresses.sort();
    addresses.dedup();
    if addresses.is_empty() {
        addresses.push(local.to_string());
    }
    addresses
}

/// How often a node listening on every interface checks its addresses.
#[cfg(feature = "quic")]
const ADDRESS_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Watches the addresses of a node listening on every interface (`local`
/// unspecified): when they change, its connections still send from the old
/// address and would only fail at the idle timeout, so they are closed at
/// once and redialled (the dials it made, and discovery's); peers take the
/// new connection once the old one has gone silent. mDNS announces the new
/// address by itself.
#[cfg(feature = "quic")]
async fn follow_address_changes(
    engine: pluresdb_net::QuicNetworkEngine,
    local: std::net::SocketAddr,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let mut known = reachable_addresses(local);
    loop {
        tokio::select! {
            () = tokio::time::sleep(ADDRESS_CHECK_INTERVAL) => {}
            _ = stopped.wait_for(|stop| *stop) => return,
        }
        let now = reachable_addresses(local);
        if now != known {
            tracing::info!(before = ?known, after = ?now, "this node's addresses changed; reconnecting to its peers");
            engine.close_links("the peer's address changed");
            known = now;
        }
    }
}

/// The node's engines, the runtime's view of them (one engine, see
/// `pluresdb_net::CombinedNetworkEngine`), and discovery feeding them.
#[cfg(feature = "quic")]
struct NodeNetwork {
    /// The QUIC engine, when it runs.
    quic: Option<pluresdb_net::QuicNetworkEngine>,
    /// The libp2p engine, when it runs.
    #[cfg(feature = "libp2p")]
    libp2p: Option<pluresdb_libp2p::Libp2pNetworkEngine>,
    /// The engines for browser pages, when they run.
    browser: Option<BrowserEngines>,
    network: pluresdb_runtime::Network,
    /// The settings the engines run with; its `sync` is the sync engine's.
    config: pluresdb_net::NetworkConfig,
    discovery: std::sync::Arc<pluresdb_discovery::CombinedDiscovery>,
    /// Stops the auto-connect and address-following tasks.
    stop_dialling: tokio::sync::watch::Sender<bool>,
}

/// The environment variable that makes starting mDNS fail with its value
/// as the reason, as it fails on a machine where the mDNS daemon cannot
/// start: the process tests use it to check that `serve` runs on.
#[cfg(feature = "quic")]
const MDNS_FAILURE_HOOK: &str = "PLURESDB_TEST_MDNS_FAILURE";

/// Starts `discovery` (with its mDNS daemon, if it runs mDNS).
#[cfg(feature = "quic")]
async fn start_discovery(discovery: &pluresdb_discovery::CombinedDiscovery) -> pluresdb_discovery::Result<()> {
    if discovery.config().enable_mdns {
        if let Some(reason) = std::env::var(MDNS_FAILURE_HOOK).ok().filter(|r| !r.is_empty()) {
            return Err(pluresdb_discovery::DiscoveryError::MdnsDaemon { reason });
        }
    }
    discovery.start_discovery().await
}

/// Starts the node's engines with its identity and its access rule (the
/// QUIC engine unless turned off), run as one, then discovery: mDNS
/// (unless turned off), the bootstrap list, and the peers connected peers
/// tell of, dialled as they are found.
#[cfg(feature = "quic")]
async fn start_network(data_dir: &Path, settings: &PeerSettings, db: &Replica) -> anyhow::Result<NodeNetwork> {
    use pluresdb_net::{CombinedNetworkEngine, NetworkEngine, PeerManager, Transport};
    use std::sync::Arc;
    let identity = crate::keys::identity(data_dir)?;
    let secret = crate::keys::network_secret(data_dir)?;
    let mode = pluresdb_runtime::stored_access_mode(db.store())?;
    let allowlist = pluresdb_runtime::stored_allowlist(db.store())?;
    let policy = pluresdb_security::AccessPolicy { mode, secret: Some(secret.clone()), allowlist };
    let mut config = pluresdb_net::NetworkConfig {
        port: settings.bind.port(),
        bind_address: settings.bind.ip().to_string(),
        enable_quic: settings.quic,
        enable_libp2p: settings.libp2p && cfg!(feature = "libp2p"),
        enable_dht: settings.dht,
        // Multiaddrs are the libp2p engine's to dial; the others go
        // through discovery's bootstrap list.
        bootstrap_nodes: settings.bootstrap.iter().filter(|a| is_libp2p(a)).cloned().collect(),
        ..Default::default()
    };
    config.discovery.enable_dht = settings.dht;
    if settings.libp2p && !config.enable_libp2p {
        tracing::info!("this build has no libp2p engine (built without the `libp2p` feature)");
    }
    if settings.relay && !config.enable_libp2p {
        return Err(crate::InvalidInput(
            "relay: the relay runs on the libp2p engine, which is off (--no-libp2p, or a build without it)".to_owned(),
        )
        .into());
    }
    // A node bound to loopback cannot be reached from the LAN: it neither
    // announces itself nor browses there. mDNS announces the QUIC engine.
    config.discovery.enable_mdns = settings.mdns && config.enable_quic && !settings.bind.ip().is_loopback();
    if settings.mdns && config.enable_quic && !config.discovery.enable_mdns {
        tracing::info!(bind = %settings.bind, "mDNS is off: the node listens on loopback only");
    }
    // Checked before any engine starts.
    #[cfg(feature = "libp2p")]
    let libp2p_listen = match &settings.libp2p_listen[..] {
        _ if !config.enable_libp2p => Vec::new(),
        [] if settings.relay => {
            let mut listen = default_libp2p_listen(settings.bind);
            listen.extend(https_websocket(settings.bind));
            listen
        }
        [] => default_libp2p_listen(settings.bind),
        given => given
            .iter()
            .map(|text| {
                text.parse::<pluresdb_libp2p::Multiaddr>()
                    .map_err(|err| crate::InvalidInput(format!("libp2p_listen: {text:?} is not a multiaddr: {err}")))
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    let (sync, events) = pluresdb_net::SyncHandle::channel(1_024);
    let mut combined = CombinedNetworkEngine::new(sync);
    let mut registries = Vec::new();
    let mut listen_addresses = Vec::new();
    let mut quic = None;
    if config.enable_quic {
        let peers = Arc::new(PeerManager::new());
        let mut engine = pluresdb_net::QuicNetworkEngine::new(config.clone(), peers.clone(), combined.next_sync_handle())
            .with_identity(identity.clone())
            .with_access_policy(policy.clone())
            .with_peer_exchange(true);
        engine.start().await.with_context(|| format!("cannot start the QUIC engine on {}", settings.bind))?;
        let local = engine.local_addr().context("the QUIC engine has no address")?;
        listen_addresses.extend(reachable_addresses(local));
        combined = combined.with_engine(Transport::Quic, Box::new(engine.clone()));
        registries.push(peers);
        quic = Some((engine, local));
    }
    #[cfg(feature = "libp2p")]
    let libp2p = match config.enable_libp2p {
        true => {
            let peers = Arc::new(PeerManager::new());
            let engine = pluresdb_libp2p::Libp2pNetworkEngine::new(config.clone(), peers.clone(), combined.next_sync_handle())
                .with_identity(identity.clone())
                .with_access_policy(policy.clone())
                .with_dht(settings.dht)
                .with_listen_addresses(libp2p_listen);
            let mut engine = match settings.relay {
                true => engine.with_relay_server(pluresdb_libp2p::RelayAccess::Members),
                false => engine,
            };
            engine.start().await.context("cannot start the libp2p engine")?;
            listen_addresses.extend(engine.dial_addresses().iter().map(ToString::to_string));
            combined = combined.with_engine(Transport::Libp2p, Box::new(engine.clone()));
            registries.push(peers);
            Some(engine)
        }
        false => None,
    };
    let browser = match settings.browser_listen {
        Some(listen) => {
            let peers = Arc::new(PeerManager::new());
            let handle = combined.next_sync_handle();
            let engine = pluresdb_net::WebSocketNetworkEngine::new(config.clone(), listen, peers.clone(), handle.clone())
                .with_identity(identity.clone())
                .with_access_policy(policy.clone());
            // WebRTC's engine is added right after the WebSocket's, so
            // its sync handle is the next one.
            #[cfg(feature = "webrtc")]
            let (engine, webrtc) = match settings.webrtc_listen {
                Some(udp) => {
                    let rtc_peers = Arc::new(PeerManager::new());
                    let rtc_handle = handle.for_engine(combined.transports().len() + 1);
                    let mut webrtc = pluresdb_net::WebRtcNetworkEngine::new(config.clone(), udp, rtc_peers.clone(), rtc_handle)
                        .with_identity(identity.clone())
                        .with_access_policy(policy.clone());
                    webrtc.start().await.with_context(|| format!("cannot start the browser WebRTC engine on UDP {udp}"))?;
                    registries.push(rtc_peers);
                    (engine.with_node_signals(webrtc.signal_sender()), Some(webrtc))
                }
                None => (engine, None),
            };
            let mut engine = engine;
            engine.start().await.with_context(|| format!("cannot start the browser WebSocket engine on {listen}"))?;
            combined = combined.with_engine(Transport::WebSocket, Box::new(engine.clone()));
            registries.push(peers);
            #[cfg(feature = "webrtc")]
            if let Some(webrtc) = &webrtc {
                combined = combined.with_engine(Transport::WebRtc, Box::new(webrtc.clone()));
            }
            Some(BrowserEngines {
                websocket: engine,
                #[cfg(feature = "webrtc")]
                webrtc,
            })
        }
        None => None,
    };
    let peers = Arc::new(PeerManager::union(registries));
    let transports = combined.transports().into_iter().map(Transport::as_str).collect();
    let engine: Arc<dyn NetworkEngine> = Arc::new(combined);

    let (stop_dialling, dialling_stopped) = tokio::sync::watch::channel(false);
    #[cfg(feature = "libp2p")]
    let dht: Option<pluresdb_discovery::DhtSource> = libp2p.clone().map(|engine| -> pluresdb_discovery::DhtSource {
        Arc::new(move || engine.dht_peers().into_iter().map(|peer| (peer.peer_id, peer.addresses)).collect())
    });
    #[cfg(not(feature = "libp2p"))]
    let dht = None;
    let quic_local = quic.as_ref().map(|(engine, local)| (engine, *local));
    let discovery = start_discovery_of(quic_local, &config, settings, &secret, peers.clone(), dht).await?;
    // Dials through the engines run as one: a peer connected over either is
    // not dialled again, and each address goes to the engine of its form.
    pluresdb_discovery::spawn_auto_connect(discovery.clone(), engine.clone(), config.max_connections, dialling_stopped.clone());
    if let Some((quic, local)) = quic_local.filter(|(_, local)| local.ip().is_unspecified()) {
        tokio::spawn(follow_address_changes(quic.clone(), local, dialling_stopped));
    }
    #[cfg(feature = "libp2p")]
    let (live_addresses, counters) = nat_hooks(libp2p.clone());
    #[cfg(not(feature = "libp2p"))]
    let (live_addresses, counters) = (None, None);
    let network = pluresdb_runtime::Network {
        engine,
        events,
        peers,
        transports,
        listen_addresses,
        on_access_change: Some({
            let quic = quic.as_ref().map(|(engine, _)| engine.clone());
            #[cfg(feature = "libp2p")]
            let libp2p = libp2p.clone();
            let browser = browser.clone();
            Arc::new(move |mode, allowlist| {
                tracing::info!(mode = mode.name(), allowed = allowlist.len(), "access rule changed");
                let policy = pluresdb_security::AccessPolicy { mode, secret: Some(secret.clone()), allowlist };
                #[cfg(feature = "libp2p")]
                if let Some(engine) = &libp2p {
                    engine.set_access_policy(policy.clone());
                }
                if let Some(engine) = &browser {
                    engine.set_access_policy(policy.clone());
                }
                if let Some(engine) = &quic {
                    engine.set_access_policy(policy);
                }
            })
        }),
        discovery: Some(discovery.clone()),
        live_addresses,
        counters,
    };
    Ok(NodeNetwork {
        quic: quic.map(|(engine, _)| engine),
        #[cfg(feature = "libp2p")]
        libp2p,
        browser,
        network,
        config,
        discovery,
        stop_dialling,
    })
}

/// A relay's WebSocket on TCP 443 at `bind`'s IP, if this process may
/// bind it (a network that lets nothing else out usually lets HTTPS's
/// port through): tried with a plain TCP socket first, so a node without
/// the right (or with 443 taken) starts without it and says so.
#[cfg(feature = "libp2p")]
fn https_websocket(bind: std::net::SocketAddr) -> Option<pluresdb_libp2p::Multiaddr> {
    let at = std::net::SocketAddr::new(bind.ip(), 443);
    if let Err(err) = std::net::TcpListener::bind(at) {
        tracing::info!(%at, error = %err, "the relay's WebSocket is not on port 443 (name a port with --libp2p-listen)");
        return None;
    }
    let ip = match bind.ip() {
        std::net::IpAddr::V4(ip) => format!("/ip4/{ip}"),
        std::net::IpAddr::V6(ip) => format!("/ip6/{ip}"),
    };
    format!("{ip}/tcp/443/ws").parse().ok()
}

/// What the libp2p engine adds after start: its addresses through relays
/// (tickets and `info` list them), and its NAT traversal counters for
/// `/metrics`.
#[cfg(feature = "libp2p")]
fn nat_hooks(
    engine: Option<pluresdb_libp2p::Libp2pNetworkEngine>,
) -> (Option<pluresdb_runtime::AddressHook>, Option<pluresdb_runtime::CounterHook>) {
    use pluresdb_runtime::TransportCounter;
    let Some(engine) = engine else { return (None, None) };
    let relayed = engine.clone();
    let live: pluresdb_runtime::AddressHook = std::sync::Arc::new(move || {
        relayed.dial_addresses().iter().filter(|a| pluresdb_libp2p::relay::is_relayed(a)).map(ToString::to_string).collect()
    });
    let counters: pluresdb_runtime::CounterHook = std::sync::Arc::new(move || {
        let nat = engine.nat();
        let counter = |name, help, value| TransportCounter { name, kind: "counter", help, value };
        let reachable = |r: pluresdb_libp2p::Reachability| u64::from(nat.reachability == r);
        vec![
            counter(
                "pluresdb_relay_upgrades_total",
                "Relayed connections replaced by direct ones (hole punched, or dialled directly).",
                nat.upgrades,
            ),
            counter(
                "pluresdb_relay_upgrade_failures_total",
                "Hole punches (DCUtR) that failed; the connection stayed relayed.",
                nat.upgrade_failures,
            ),
            TransportCounter {
                name: "pluresdb_relay_reservations",
                kind: "gauge",
                help: "Relays this node holds a reservation on now.",
                value: nat.reserved_on.len() as u64,
            },
            counter("pluresdb_relay_reservations_accepted_total", "Reservations this node's relay accepted.", nat.reservations_accepted),
            counter(
                "pluresdb_relay_reservations_denied_total",
                "Reservations this node's relay refused (not a member, or over its limits).",
                nat.reservations_denied,
            ),
            counter(
                "pluresdb_relay_circuits_denied_total",
                "Circuits this node's relay refused (not a member, over its limits, or no reservation).",
                nat.circuits_denied,
            ),
            TransportCounter {
                name: "pluresdb_reachability_public",
                kind: "gauge",
                help: "1 if AutoNAT found this node reachable from outside, else 0.",
                value: reachable(pluresdb_libp2p::Reachability::Public),
            },
            TransportCounter {
                name: "pluresdb_reachability_private",
                kind: "gauge",
                help: "1 if AutoNAT found this node behind a NAT or firewall, else 0.",
                value: reachable(pluresdb_libp2p::Reachability::Private),
            },
        ]
    });
    (Some(live), Some(counters))
}

/// Whether `address` is the libp2p engine's (a multiaddr) rather than the
/// QUIC engine's, by the rule the engines run as one route by.
fn is_libp2p(address: &str) -> bool {
    pluresdb_net::CombinedNetworkEngine::transport_of(address) == pluresdb_net::Transport::Libp2p
}

/// How far above the QUIC port the libp2p engine listens by default: TCP
/// and QUIC-v1 there, WebSocket on the port after. A second node on one
/// machine given the next free ports for QUIC and its API (34571, 34572)
/// gets libp2p ports of its own too.
#[cfg(feature = "libp2p")]
pub const LIBP2P_PORT_OFFSET: u16 = 10;

/// Where the libp2p engine listens unless told: TCP and QUIC-v1 on the
/// QUIC port + [`LIBP2P_PORT_OFFSET`], WebSocket on the port after, at the
/// QUIC engine's IP; with port 0, ports the OS picks.
#[cfg(feature = "libp2p")]
fn default_libp2p_listen(bind: std::net::SocketAddr) -> Vec<pluresdb_libp2p::Multiaddr> {
    let (port, ws_port) = match bind.port() {
        0 => (0, 0),
        quic => {
            let port = quic.saturating_add(LIBP2P_PORT_OFFSET);
            (port, port.saturating_add(1))
        }
    };
    let ip = match bind.ip() {
        std::net::IpAddr::V4(ip) => format!("/ip4/{ip}"),
        std::net::IpAddr::V6(ip) => format!("/ip6/{ip}"),
    };
    [format!("{ip}/tcp/{port}"), format!("{ip}/udp/{port}/quic-v1"), format!("{ip}/tcp/{ws_port}/ws")]
        .iter()
        .filter_map(|text| text.parse().ok())
        .collect()
}

/// Starts discovery: mDNS for the QUIC engine listening on `local` when
/// the config says so (and it can start: if not, the node runs on without
/// it), the bootstrap list, peer exchange through `peers`, and what the DHT
/// finds.
#[cfg(feature = "quic")]
async fn start_discovery_of(
    quic: Option<(&pluresdb_net::QuicNetworkEngine, std::net::SocketAddr)>,
    config: &pluresdb_net::NetworkConfig,
    settings: &PeerSettings,
    secret: &pluresdb_security::NetworkSecret,
    peers: std::sync::Arc<pluresdb_net::PeerManager>,
    dht: Option<pluresdb_discovery::DhtSource>,
) -> anyhow::Result<std::sync::Arc<pluresdb_discovery::CombinedDiscovery>> {
    let announced = match quic {
        Some((engine, local)) => {
            let peer_id = engine.peer_id().context("the QUIC engine has no identity")?;
            let announced = pluresdb_discovery::LocalPeer::new(peer_id.to_string(), local.port(), secret.network_tag());
            Some(if local.ip().is_unspecified() { announced } else { announced.with_addresses(vec![local.ip()]) })
        }
        None => None,
    };
    let discovery_with = |enable_mdns: bool| {
        let config = pluresdb_net::DiscoveryConfig { enable_mdns, ..config.discovery.clone() };
        let mut discovery = pluresdb_discovery::CombinedDiscovery::new(config)
            .with_bootstrap(settings.bootstrap.iter().filter(|a| !is_libp2p(a) && quic.is_some()).cloned().collect())
            .with_interfaces(settings.mdns_interfaces.clone())
            .with_peer_exchange(peers.clone());
        if let Some(announced) = &announced {
            discovery = discovery.with_local(announced.clone());
        }
        if let Some(dht) = &dht {
            discovery = discovery.with_dht_peers(dht.clone());
        }
        discovery
    };
    let mut discovery = discovery_with(config.discovery.enable_mdns);
    if let Err(err) = start_discovery(&discovery).await {
        if !config.discovery.enable_mdns {
            return Err(err).context("cannot start peer discovery");
        }
        // mDNS only finds LAN peers; the node is still reached by its
        // address, tickets, bootstrap nodes and peer exchange.
        tracing::warn!(
            reason = %pluresdb_core::error_chain(&err),
            "mDNS is off: it cannot start on this machine, so this node neither announces itself nor finds peers on the LAN; \
             it runs on, reached by its address, tickets, bootstrap nodes and peer exchange"
        );
        discovery = discovery_with(false);
        start_discovery(&discovery).await.context("cannot start peer discovery")?;
    }
    let discovery = std::sync::Arc::new(discovery);
    if let Err(err) = discovery.announce_peer().await {
        // The node is still reachable by address and ticket.
        tracing::warn!(error = %err, "cannot announce this node on mDNS");
    }
    Ok(discovery)
}

pub fn serve(db: Replica, data_dir: &Path, config: &Config, peers: Option<PeerSettings>, json: bool) -> anyhow::Result<()> {
    let api_addr = config.api_addr.value;
    let require_token = config.require_token.value || !pluresdb_server::is_loopback(&api_addr);
    let token = crate::keys::api_token(data_dir)?;
    let secret = crate::keys::network_secret(data_dir)?;
    let browsers = config.browser_policy()?;
    // What a burst (an import, a catch-up) freed goes back to the kernel
    // once the workers and the writer are idle.
    pluresdb_runtime::set_idle_hook(crate::memory::collect_when_idle);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(crate::memory::collect_when_idle)
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        // Signals first: from the moment the node announces itself, SIGTERM
        // stops it cleanly.
        let shutdown = shutdown_signal()?;
        let listener = tokio::net::TcpListener::bind(api_addr).await.with_context(|| format!("cannot listen on {api_addr}"))?;
        let bound = listener.local_addr().context("cannot read the bound address")?;
        let mut options = pluresdb_runtime::RuntimeOptions { watch_buffer: config.watch_buffer.value, ..Default::default() };
        options.sync.max_clock_drift = config.max_clock_drift.value;
        #[cfg(feature = "quic")]
        let (engines, network) = match &peers {
            Some(settings) => {
                let started = start_network(data_dir, settings, &db).await?;
                let max_clock_drift = options.sync.max_clock_drift;
                options.sync = started.config.sync.clone();
                options.sync.max_clock_drift = max_clock_drift;
                #[cfg(feature = "libp2p")]
                let libp2p = started.libp2p;
                #[cfg(not(feature = "libp2p"))]
                let libp2p: Option<std::convert::Infallible> = None;
                (Some((started.quic, libp2p, started.browser, started.discovery, started.stop_dialling)), Some(started.network))
            }
            None => (None, None),
        };
        #[cfg(not(feature = "quic"))]
        let network = {
            if peers.is_some() {
                eprintln!("this build has no network transport (built without the `quic` feature): serving the API only");
            }
            None
        };
        let node = pluresdb_runtime::Runtime::start_with_network(db, options, network)?;
        let handle = node.handle();
        let peer_id = handle.peer_id().to_owned();
        // Multiaddrs are dialled (and redialled) by the libp2p engine; the
        // other addresses are the QUIC engine's, if it runs.
        let quic_runs = handle.transports().contains(&pluresdb_net::Transport::Quic.as_str());
        if handle.transports().contains(&pluresdb_net::Transport::Libp2p.as_str()) {
            // Remembered as dialed, so that a restart dials them again.
            for address in peers.iter().flat_map(|p| p.bootstrap.iter()).filter(|a| is_libp2p(a)) {
                handle.remember_dialed(address).await;
            }
        }
        for address in peers.iter().flat_map(|p| p.bootstrap.clone()).filter(|a| !is_libp2p(a) && quic_runs) {
            let handle = handle.clone();
            tokio::spawn(async move {
                // Until the first connection; the engine redials after that.
                let mut delay = std::time::Duration::from_millis(500);
                loop {
                    match handle.connect(&address).await {
                        Ok(peer) => {
                            tracing::info!(%address, %peer, "connected");
                            break;
                        }
                        Err(err) => tracing::warn!(%address, error = %err, retry_in_s = delay.as_secs_f32(), "cannot connect"),
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(std::time::Duration::from_secs(60));
                }
            });
        }
        // CLI commands on this data directory find the node here; written
        // before the node says it runs, so a command that follows finds it.
        let addr_file = data_dir.join(crate::api_client::API_ADDR_FILE);
        crate::keys::replace_private(&addr_file, format!("{bound}\n").as_bytes())?;
        #[cfg(feature = "quic")]
        let browser_url = engines.as_ref().and_then(|engines| engines.2.as_ref()).and_then(|browser| browser.url());
        #[cfg(feature = "quic")]
        let webrtc_addr = engines.as_ref().and_then(|engines| engines.2.as_ref()).and_then(|browser| browser.webrtc_addr());
        #[cfg(not(feature = "quic"))]
        let (browser_url, webrtc_addr): (Option<String>, Option<std::net::SocketAddr>) = (None, None);
        {
            // Tell the user (and scripts) where the node is, then keep quiet.
            let mut out = std::io::stdout().lock();
            if json {
                let started = serde_json::json!({
                    "peer_id": peer_id,
                    "api": format!("http://{bound}"),
                    "token_required": require_token,
                    "listen": handle.listen_addresses(),
                    "browser": browser_url,
                    "webrtc": webrtc_addr.map(|a| a.to_string()),
                });
                writeln!(out, "{started}")?;
            } else {
                writeln!(out, "pluresdb node {peer_id}")?;
                writeln!(out, "HTTP API on http://{bound} (routes: http://{bound}/openapi.json)")?;
                for address in handle.listen_addresses() {
                    let transport = if is_libp2p(&address) { "libp2p" } else { "QUIC" };
                    writeln!(out, "peers connect over {transport} to {address}")?;
                }
                if let Some(url) = &browser_url {
                    writeln!(out, "browser pages connect over WebSocket to {url}")?;
                }
                if let Some(addr) = &webrtc_addr {
                    writeln!(out, "and over WebRTC (UDP {addr}) once linked")?;
                }
                if handle.transports().is_empty() && peers.is_some() {
                    writeln!(out, "no network transport runs (every engine is turned off): serving the API only")?;
                }
                if !handle.listen_addresses().is_empty() {
                    // Not the ticket itself: it carries the network secret,
                    // and this output ends up in terminals and service logs.
                    writeln!(out, "`pluresdb invite` prints a ticket another node joins this network with (it holds the network secret)")?;
                }
                if require_token {
                    writeln!(out, "the API needs the token in {}", data_dir.join(crate::keys::API_TOKEN_FILE).display())?;
                }
            }
            out.flush()?;
        }
        tracing::info!(%peer_id, api = %bound, require_token, "node running");
        let state = pluresdb_server::ApiState::new(handle, secret, token, require_token).with_browser_policy(browsers);
        let served = pluresdb_server::serve(listener, state, shutdown).await;
        if let Err(err) = std::fs::remove_file(&addr_file) {
            tracing::warn!(%err, path = %addr_file.display(), "cannot remove the API address file");
        }
        // Requests in flight have finished: say goodbye to peers, then let
        // the writer commit what it holds.
        #[cfg(feature = "quic")]
        if let Some((quic, libp2p, browser, discovery, stop_dialling)) = engines {
            use pluresdb_net::NetworkEngine;
            let _ = stop_dialling.send(true);
            // Withdraw the mDNS announcement: LAN peers see this node leave.
            discovery.stop().await;
            if let Some(mut quic) = quic {
                if let Err(err) = quic.stop().await {
                    tracing::warn!(error = %err, "the QUIC engine did not stop cleanly");
                }
            }
            #[cfg(feature = "libp2p")]
            if let Some(mut libp2p) = libp2p {
                if let Err(err) = libp2p.stop().await {
                    tracing::warn!(error = %err, "the libp2p engine did not stop cleanly");
                }
            }
            #[cfg(not(feature = "libp2p"))]
            let _unused: Option<std::convert::Infallible> = libp2p;
            if let Some(browser) = browser {
                browser.stop().await;
            }
        }
        node.shutdown().await;
        served.context("the API server failed")?;
        tracing::info!("node stopped");
        eprintln!("stopped");
        Ok(())
    })
}

/// Completes on Ctrl-C or SIGTERM. The handlers are installed when this is
/// called (not when first polled), so a signal right after the node has
/// announced itself still stops it cleanly.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for Ctrl-C")?;
        let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            if let Err(err) = tokio::signal::ctrl_c().await {
                tracing::error!(%err, "cannot listen for Ctrl-C");
                std::future::pending::<()>().await;
            }
        })
    }
}
