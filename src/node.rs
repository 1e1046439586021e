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
    network: pluresdb_runtime::Network,
    discovery: Option<std::sync::Arc<pluresdb_discovery::CombinedDiscovery>>,
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
        ..Default::default()
    };
    // A node bound to loopback cannot be reached from the LAN: it neither
    // announces itself nor browses there. mDNS announces the QUIC engine.
    config.discovery.enable_mdns = settings.mdns && config.enable_quic && !settings.bind.ip().is_loopback();
    if settings.mdns && config.enable_quic && !config.discovery.enable_mdns {
        tracing::info!(bind = %settings.bind, "mDNS is off: the node listens on loopback only");
    }
    let (sync, events) = pluresdb_net::SyncHandle::channel(1_024);
    let mut combined = CombinedNetworkEngine::new(sync.clone());
    let mut registries = Vec::new();
    let mut transports = Vec::new();
    let mut listen_addresses = Vec::new();
    let mut quic = None;
    if config.enable_quic {
        let peers = Arc::new(PeerManager::new());
        let mut engine = pluresdb_net::QuicNetworkEngine::new(config.clone(), peers.clone(), sync.for_engine(transports.len()))
            .with_identity(identity.clone())
            .with_access_policy(policy.clone())
            .with_peer_exchange(true);
        engine.start().await.with_context(|| format!("cannot start the QUIC engine on {}", settings.bind))?;
        let local = engine.local_addr().context("the QUIC engine has no address")?;
        listen_addresses.extend(reachable_addresses(local));
        combined = combined.with_engine(Transport::Quic, Box::new(engine.clone()));
        registries.push(peers);
        transports.push(Transport::Quic.as_str());
        quic = Some((engine, local));
    }
    let peers = Arc::new(PeerManager::union(registries.clone()));
    let engine: Arc<dyn NetworkEngine> = Arc::new(combined);

    let (stop_dialling, dialling_stopped) = tokio::sync::watch::channel(false);
    let discovery = match &quic {
        Some((engine, local)) => {
            let discovery = start_discovery_of(engine, *local, &config, settings, &secret, registries[0].clone()).await?;
            pluresdb_discovery::spawn_auto_connect(
                discovery.clone(),
                engine_handle(engine),
                config.max_connections,
                dialling_stopped.clone(),
            );
            if local.ip().is_unspecified() {
                tokio::spawn(follow_address_changes(engine.clone(), *local, dialling_stopped));
            }
            Some(discovery)
        }
        None => None,
    };
    let network = pluresdb_runtime::Network {
        engine,
        events,
        peers,
        transports,
        listen_addresses,
        on_access_change: Some({
            let quic = quic.as_ref().map(|(engine, _)| engine.clone());
            Arc::new(move |mode, allowlist| {
                tracing::info!(mode = mode.name(), allowed = allowlist.len(), "access rule changed");
                let policy = pluresdb_security::AccessPolicy { mode, secret: Some(secret.clone()), allowlist };
                if let Some(engine) = &quic {
                    engine.set_access_policy(policy);
                }
            })
        }),
        discovery: discovery.clone(),
    };
    Ok(NodeNetwork { quic: quic.map(|(engine, _)| engine), network, discovery, stop_dialling })
}

/// The QUIC engine as discovery's auto-connect dials with it.
#[cfg(feature = "quic")]
fn engine_handle(engine: &pluresdb_net::QuicNetworkEngine) -> std::sync::Arc<dyn pluresdb_net::NetworkEngine> {
    std::sync::Arc::new(engine.clone())
}

/// Starts discovery for the QUIC engine listening on `local`: mDNS when
/// the config says so (and it can start: if not, the node runs on
/// without it), the bootstrap list, and peer exchange through `peers`.
#[cfg(feature = "quic")]
async fn start_discovery_of(
    engine: &pluresdb_net::QuicNetworkEngine,
    local: std::net::SocketAddr,
    config: &pluresdb_net::NetworkConfig,
    settings: &PeerSettings,
    secret: &pluresdb_security::NetworkSecret,
    peers: std::sync::Arc<pluresdb_net::PeerManager>,
) -> anyhow::Result<std::sync::Arc<pluresdb_discovery::CombinedDiscovery>> {
    let peer_id = engine.peer_id().context("the QUIC engine has no identity")?;
    let mut announced = pluresdb_discovery::LocalPeer::new(peer_id, local.port(), secret.network_tag());
    if !local.ip().is_unspecified() {
        announced = announced.with_addresses(vec![local.ip()]);
    }
    let discovery_with = |enable_mdns: bool| {
        let config = pluresdb_net::DiscoveryConfig { enable_mdns, ..config.discovery.clone() };
        pluresdb_discovery::CombinedDiscovery::new(config)
            .with_local(announced.clone())
            .with_bootstrap(settings.bootstrap.iter().filter(|a| !a.starts_with('/')).cloned().collect())
            .with_interfaces(settings.mdns_interfaces.clone())
            .with_peer_exchange(peers.clone())
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
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
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
                let NodeNetwork { quic, network, discovery, stop_dialling } = start_network(data_dir, settings, &db).await?;
                (Some((quic, discovery, stop_dialling)), Some(network))
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
        for address in peers.iter().flat_map(|p| p.bootstrap.clone()) {
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
        {
            // Tell the user (and scripts) where the node is, then keep quiet.
            let mut out = std::io::stdout().lock();
            if json {
                let started = serde_json::json!({
                    "peer_id": peer_id,
                    "api": format!("http://{bound}"),
                    "token_required": require_token,
                    "listen": handle.listen_addresses(),
                });
                writeln!(out, "{started}")?;
            } else {
                writeln!(out, "pluresdb node {peer_id}")?;
                writeln!(out, "HTTP API on http://{bound} (routes: http://{bound}/openapi.json)")?;
                for address in handle.listen_addresses() {
                    let transport = if address.starts_with('/') { "libp2p" } else { "QUIC" };
                    writeln!(out, "peers connect over {transport} to {address}")?;
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
        if let Some((quic, discovery, stop_dialling)) = engines {
            use pluresdb_net::NetworkEngine;
            let _ = stop_dialling.send(true);
            // Withdraw the mDNS announcement: LAN peers see this node leave.
            if let Some(discovery) = discovery {
                discovery.stop().await;
            }
            if let Some(mut quic) = quic {
                if let Err(err) = quic.stop().await {
                    tracing::warn!(error = %err, "the QUIC engine did not stop cleanly");
                }
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
