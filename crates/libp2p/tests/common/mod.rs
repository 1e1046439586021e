//! Helpers for the engine tests: engines on loopback (ports from the OS),
//! waits on conditions with deadlines, and a bare libp2p client that speaks
//! the sync protocol by hand.

#![allow(dead_code)]

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, noise, tcp, yamux, Multiaddr, PeerId, Swarm};
use pluresdb_libp2p::handshake::{binding, hello_frame, nonce_of, transcript};
use pluresdb_libp2p::{Libp2pNetworkEngine, SYNC_PROTOCOL};
use pluresdb_net::{
    Frame, FrameDecoder, FrameKind, Hello, NetworkConfig, NetworkEngine, NetworkMessage, PeerEvent, PeerEvents, PeerManager, SyncHandle,
    PROTOCOL_VERSION,
};
use pluresdb_security::{AccessMode, AccessPolicy, NetworkSecret};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long any one wait in these tests may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A started engine and its events.
pub struct Node {
    pub engine: Libp2pNetworkEngine,
    pub events: PeerEvents,
    pub id: pluresdb_security::PeerId,
}

/// The transports an engine listens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Tcp,
    Quic,
    WebSocket,
}

pub const KINDS: [Kind; 3] = [Kind::Tcp, Kind::Quic, Kind::WebSocket];

pub fn secret(byte: u8) -> NetworkSecret {
    NetworkSecret::from_bytes([byte; 32])
}

pub fn member(byte: u8) -> AccessPolicy {
    AccessPolicy::with_secret(secret(byte))
}

/// Admits anyone and holds no secret: a peer that cannot prove anything.
pub fn outsider() -> AccessPolicy {
    AccessPolicy { mode: AccessMode::Open, ..AccessPolicy::default() }
}

pub async fn start(policy: AccessPolicy) -> Node {
    start_with(policy, NetworkConfig::loopback(), |engine| engine).await
}

pub async fn start_with(
    policy: AccessPolicy,
    config: NetworkConfig,
    adjust: impl FnOnce(Libp2pNetworkEngine) -> Libp2pNetworkEngine,
) -> Node {
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_test_writer().try_init();
    let (handle, events) = SyncHandle::channel(1024);
    let mut engine = adjust(Libp2pNetworkEngine::new(config, Arc::new(PeerManager::new()), handle).with_access_policy(policy));
    engine.start().await.expect("engine starts");
    let id = engine.peer_id().expect("started engines have a peer id");
    Node { engine, events, id }
}

/// The engine's dial address (with `/p2p/<id>`) on `kind`.
pub fn address(engine: &Libp2pNetworkEngine, kind: Kind) -> String {
    engine
        .dial_addresses()
        .into_iter()
        .find(|address| {
            let text = address.to_string();
            match kind {
                Kind::Tcp => text.contains("/tcp/") && !text.contains("/ws"),
                Kind::Quic => text.contains("/quic-v1"),
                Kind::WebSocket => text.contains("/ws"),
            }
        })
        .unwrap_or_else(|| panic!("no {kind:?} address in {:?}", engine.dial_addresses()))
        .to_string()
}

/// Waits (at most [`DEADLINE`]) for an event that `want` accepts, skipping
/// others.
pub async fn wait_for(events: &mut PeerEvents, mut want: impl FnMut(&PeerEvent) -> bool) -> PeerEvent {
    let wait = async {
        loop {
            match events.recv().await {
                Some(event) if want(&event) => return event,
                Some(_) => {}
                None => panic!("the engine's events ended"),
            }
        }
    };
    tokio::time::timeout(DEADLINE, wait).await.expect("the event came before the deadline")
}

/// Waits (at most [`DEADLINE`]) until `check` holds, polling every 20 ms.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "{what}: not within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A bare libp2p node (TCP, noise, yamux) with identify and
/// `libp2p_stream`: a client nobody configured as a PluresDB node.
#[derive(NetworkBehaviour)]
pub struct RawBehaviour {
    pub identify: identify::Behaviour,
    pub stream: libp2p_stream::Behaviour,
}

pub struct RawClient {
    pub peer_id: PeerId,
    pub keypair: libp2p::identity::Keypair,
    pub control: libp2p_stream::Control,
    pub identified: mpsc::Receiver<(PeerId, identify::Info)>,
    dial: mpsc::Sender<Multiaddr>,
    connected: tokio::sync::watch::Receiver<Vec<PeerId>>,
}

impl RawClient {
    pub fn spawn() -> Self {
        let keypair = libp2p::identity::Keypair::generate_ed25519();
        let mut swarm: Swarm<RawBehaviour> = libp2p::SwarmBuilder::with_existing_identity(keypair.clone())
            .with_tokio()
            .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
            .expect("tcp")
            .with_behaviour(|key| RawBehaviour {
                identify: identify::Behaviour::new(identify::Config::new("/raw/1".into(), key.public())),
                stream: libp2p_stream::Behaviour::new(),
            })
            .expect("behaviour")
            .with_swarm_config(|config| config.with_idle_connection_timeout(Duration::from_secs(60)))
            .build();
        let control = swarm.behaviour().stream.new_control();
        let (identified_tx, identified) = mpsc::channel(16);
        let (dial, mut dial_rx) = mpsc::channel::<Multiaddr>(4);
        let (connected_tx, connected) = tokio::sync::watch::channel(Vec::new());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    event = swarm.select_next_some() => match event {
                        SwarmEvent::Behaviour(RawBehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                            let _ = identified_tx.try_send((peer_id, info));
                        }
                        SwarmEvent::ConnectionEstablished { peer_id, .. } => connected_tx.send_modify(|peers| peers.push(peer_id)),
                        _ => {}
                    },
                    address = dial_rx.recv() => match address {
                        Some(address) => { let _ = swarm.dial(address); }
                        None => break,
                    },
                }
            }
        });
        RawClient { peer_id: keypair.public().to_peer_id(), keypair, control, identified, dial, connected }
    }

    pub async fn dial(&self, address: &str) {
        self.dial.send(address.parse().expect("a multiaddr")).await.expect("the client runs");
    }

    /// Opens a sync stream to the peer at `address` (which ends in
    /// `/p2p/<id>`), dialling it first.
    pub async fn open(&mut self, address: &str) -> libp2p::Stream {
        let peer: PeerId = address.rsplit('/').next().unwrap().parse().unwrap();
        if !self.connected.borrow().contains(&peer) {
            self.dial(address).await;
        }
        let open = async {
            self.connected.wait_for(|peers| peers.contains(&peer)).await.expect("the client runs");
            self.control.open_stream(peer, SYNC_PROTOCOL).await.expect("the sync stream opens")
        };
        tokio::time::timeout(DEADLINE, open).await.expect("the sync stream opens in time")
    }
}

/// Reads frames from `stream` until it ends (at most [`DEADLINE`]).
pub async fn read_to_end(stream: &mut libp2p::Stream) -> Vec<Frame> {
    let mut decoder = FrameDecoder::new();
    let mut frames = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let read = async {
        loop {
            while let Ok(Some(frame)) = decoder.decode() {
                frames.push(frame);
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => decoder.extend(&chunk[..n]),
            }
        }
        while let Ok(Some(frame)) = decoder.decode() {
            frames.push(frame);
        }
    };
    tokio::time::timeout(DEADLINE, read).await.expect("the stream ends");
    frames
}

/// Reads the next frame from `stream`.
pub async fn read_frame(stream: &mut libp2p::Stream, decoder: &mut FrameDecoder) -> Frame {
    let mut chunk = vec![0u8; 64 * 1024];
    let read = async {
        loop {
            if let Some(frame) = decoder.decode().expect("frames") {
                return frame;
            }
            let n = stream.read(&mut chunk).await.expect("read");
            assert!(n > 0, "the stream ended before a frame");
            decoder.extend(&chunk[..n]);
        }
    };
    tokio::time::timeout(DEADLINE, read).await.expect("a frame came")
}

pub async fn write(stream: &mut libp2p::Stream, frame: &Frame) {
    stream.write_all(&frame.to_bytes().unwrap()).await.unwrap();
    stream.flush().await.unwrap();
}

/// Runs the handshake by hand as the stream's initiator, proving `secret`
/// (or nothing); returns the decoder (with any bytes past the handshake).
pub async fn handshake(
    client: &RawClient,
    stream: &mut libp2p::Stream,
    engine_id: &pluresdb_security::PeerId,
    secret: Option<&NetworkSecret>,
) -> FrameDecoder {
    let mut decoder = FrameDecoder::new();
    let nonce = [42u8; 32];
    let mut hello =
        Hello { protocol_version: PROTOCOL_VERSION, peer_id: client.peer_id.to_string(), listen_addresses: vec![], proof: None };
    write(stream, &hello_frame(&hello, &nonce)).await;
    let first = read_frame(stream, &mut decoder).await;
    assert_eq!(first.kind, FrameKind::Hello);
    let their_nonce = nonce_of(&first.payload).expect("the engine's hello has a nonce");
    let bound = binding(&nonce, &their_nonce);
    let ours = transcript(&bound, &pluresdb_libp2p::identity::from_libp2p(&client.peer_id).unwrap());
    let theirs = transcript(&bound, engine_id);
    hello.proof = secret.map(|secret| pluresdb_security::secret::prove(secret, &ours, &theirs).to_vec());
    write(stream, &hello_frame(&hello, &nonce)).await;
    decoder
}

/// The code and message of an `error` frame.
pub fn error_of(frame: &Frame) -> Option<(pluresdb_net::ErrorCode, String)> {
    match NetworkMessage::from_frame(frame) {
        Ok(NetworkMessage::Error { code, message }) => Some((code, message)),
        _ => None,
    }
}

pub async fn stop(mut node: Node) {
    node.engine.stop().await.expect("stops");
}
